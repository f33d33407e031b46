"""Run messages: what ingest asks the executor to process, and the run catalog."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ..limits import MAX_RUNS_PER_REQUEST
from .common import ProposalNo, RunNo, Selection, Trigger
from .envelope import Message


class RunRequested(Message):
    """Evaluate the context file for one run.

    ``request_id`` is stable for one (proposal, run, trigger) facility event, so
    a duplicated event yields the same id; a deliberate reprocess gets a new one.
    """

    type: Literal["run_requested"] = "run_requested"
    request_id: str
    proposal: ProposalNo
    run: RunNo
    trigger: Trigger
    selection: Selection = Selection()
    context_dir: str
    proposal_dir: str = Field(description="Folder with raw/rNNNN and proc/rNNNN")
    reason: Literal["facility", "reprocess", "watcher"] = "facility"
    attempt: int = Field(default=1, ge=1, description="Retries of a proc request that waited")


class RunKnown(Message):
    """The run catalog's entry for one run (compacted topic, key proposal/run)."""

    type: Literal["run_known"] = "run_known"
    proposal: ProposalNo
    run: RunNo
    raw_seen: bool = False
    proc_seen: bool = False
    source: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, description="Facility fields kept for the record"
    )


class ReprocessRequested(Message):
    """A user asks to process runs again (``runstream reprocess``)."""

    type: Literal["reprocess_requested"] = "reprocess_requested"
    proposal: ProposalNo
    runs: Annotated[tuple[RunNo, ...], Field(max_length=MAX_RUNS_PER_REQUEST)] | Literal["all"]
    trigger: Trigger = Trigger.ALL
    selection: Selection = Selection()


RunEvent = Annotated[RunRequested, Field(discriminator="type")]
CatalogEvent = Annotated[RunKnown, Field(discriminator="type")]
ReprocessEvent = Annotated[ReprocessRequested, Field(discriminator="type")]
