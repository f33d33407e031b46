"""What the executor (or a Slurm job) hands to the store.

Claim check: small summaries travel inline; array, xarray, figure and preview
data travel in an HDF5 *fragment* file (DAMNIT's per-run layout) on the shared
data path, and the message only carries its path. The store is the only writer
of the per-run file and deletes the fragment after merging it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from .common import ProposalNo, RunNo, Trigger
from .envelope import Message
from .values import InlineSummary, ResultAttrs


class VariableResult(ResultAttrs):
    """The outcome of one variable for one run.

    Exactly one of three shapes:
    - a value: ``summary`` inline (None when the summary is binary and lives in
      the fragment: thumbnails and trendlines), ``in_fragment`` if ``/{name}``
      data is in the fragment;
    - an error: ``error`` and ``error_cls`` set (``Skip`` for skipped ones);
    - cleared: ``returned_none`` (the variable returned None; old data is removed).
    """

    name: str
    summary: InlineSummary = None
    returned_none: bool = False
    in_fragment: bool = False
    duration_s: float | None = None

    @property
    def is_error(self) -> bool:
        return self.error is not None


class VariableDefinition(BaseModel):
    """A variable as the context file (or a user) defines it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    title: str
    description: str | None = None
    units: str | None = None
    tags: tuple[str, ...] = ()
    data: Literal["raw", "proc"] = "raw"
    cluster: bool = False
    user_type: Literal["boolean", "integer", "number", "string"] | None = None


class ResultsReady(Message):
    """Results of one evaluation pass over one run (possibly partial).

    ``revision`` orders context versions (the context file's mtime in ns): the
    store never lets a lower revision overwrite a value of a higher one.
    ``result_id`` is stable for the same request and variables, so a redelivery
    or a re-publish after a crash is recognised as a duplicate.
    """

    type: Literal["results_ready"] = "results_ready"
    result_id: str
    request_id: str
    processing_id: str
    proposal: ProposalNo
    run: RunNo
    trigger: Trigger
    context_hash: str
    revision: int
    provenance: str = "context.py"
    context_dir: str
    fragment: str | None = Field(default=None, description="Absolute path of the HDF5 fragment")
    start_time: float | None = None
    results: tuple[VariableResult, ...]


class VariablesDefined(Message):
    """The variables of a context file, sent when the executor loads a new revision."""

    type: Literal["variables_defined"] = "variables_defined"
    proposal: ProposalNo
    context_hash: str
    revision: int
    variables: tuple[VariableDefinition, ...]


ResultsEvent = Annotated[ResultsReady | VariablesDefined, Field(discriminator="type")]
