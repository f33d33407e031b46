"""The change feed for GUIs (topic ``updates``, key proposal/run or proposal).

Every message carries what a GUI needs to update its table without reading the
database.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .common import ProposalNo, RunNo
from .envelope import Message
from .jobs import JobStateChanged
from .processing import ProcessingStateChanged
from .proposals import ProposalSettingsSet
from .results import VariableDefinition
from .values import InlineSummary, ValueAttrs


class ValueView(ValueAttrs):
    """The current value of one variable of one run, as a GUI shows it.

    ``summary`` is inline when JSON-able; thumbnails and trendlines come as
    ``summary_type`` with ``summary`` None (read them from the HDF5 file or the
    Python API). ``cleared`` means the value was removed (variable returned None).
    """

    summary: InlineSummary = None
    cleared: bool = False
    provenance: str | None = None
    context_hash: str | None = None


class ValuesUpdated(Message):
    type: Literal["values_updated"] = "values_updated"
    proposal: ProposalNo
    run: RunNo
    values: dict[str, ValueView]


class VariablesSet(Message):
    type: Literal["variables_set"] = "variables_set"
    proposal: ProposalNo
    variables: tuple[VariableDefinition, ...]


class RunAdded(Message):
    type: Literal["run_added"] = "run_added"
    proposal: ProposalNo
    run: RunNo
    start_time: float | None = None
    added_at: float


class ProcessingStateSet(Message):
    type: Literal["processing_state_set"] = "processing_state_set"
    state: ProcessingStateChanged


class JobStateSet(Message):
    type: Literal["job_state_set"] = "job_state_set"
    state: JobStateChanged


class CommandRejected(Message):
    type: Literal["command_rejected"] = "command_rejected"
    proposal: ProposalNo
    command_event_id: str
    command_type: str
    reason: str


class DamnitSynced(Message):
    """The answer to SyncDamnit / ImportDamnit: the proposal's DAMNIT database is current."""

    type: Literal["damnit_synced"] = "damnit_synced"
    proposal: ProposalNo
    path: str
    db_id: str
    runs_written: int = 0
    imported: dict[str, int] = Field(default_factory=dict, description="ImportDamnit: counts")


Update = Annotated[
    ValuesUpdated
    | VariablesSet
    | RunAdded
    | ProcessingStateSet
    | JobStateSet
    | CommandRejected
    | ProposalSettingsSet
    | DamnitSynced,
    Field(discriminator="type"),
]
