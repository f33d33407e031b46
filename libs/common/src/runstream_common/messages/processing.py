"""Processing state of runs, for GUIs and ``runstream reprocess --wait``."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from .common import ProposalNo, RunNo, Trigger
from .envelope import Message


class ProcessingStatus(StrEnum):
    QUEUED = "queued"
    WAITING = "waiting"  # e.g. proc data still being written; ``reason`` says why
    RUNNING = "running"
    VARIABLE_DONE = "variable_done"
    VARIABLE_FAILED = "variable_failed"
    FINISHED = "finished"
    FAILED = "failed"  # the pass as a whole failed (context does not load, ...)


TERMINAL_STATUSES = frozenset({ProcessingStatus.FINISHED, ProcessingStatus.FAILED})


class ProcessingStateChanged(Message):
    """One step of one processing pass (``processing_id``) over one run."""

    type: Literal["processing_state"] = "processing_state"
    processing_id: str
    request_id: str
    proposal: ProposalNo
    run: RunNo
    trigger: Trigger
    status: ProcessingStatus
    variable: str | None = None
    duration_s: float | None = None
    reason: str | None = None
    hostname: str | None = None
    slurm_job_id: int | None = None
    counts: dict[str, int] = Field(
        default_factory=dict, description="On finished: ok / failed / skipped variable counts"
    )


ProcessingEvent = Annotated[ProcessingStateChanged, Field(discriminator="type")]
