"""Slurm jobs: requests from the executor, cancels from users, state from the gateway."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from .common import ProposalNo, RunNo, Selection, Trigger
from .envelope import Message


class JobRequested(Message):
    """Run the selected ``cluster=True`` variables of one run as a batch job.

    ``job_request_id`` is stable for the originating run request, so the gateway
    can find a job it already submitted (it goes into the job's comment).
    """

    type: Literal["job_requested"] = "job_requested"
    job_request_id: str
    request_id: str
    processing_id: str
    proposal: ProposalNo
    run: RunNo
    trigger: Trigger
    selection: Selection
    context_dir: str
    proposal_dir: str


class JobCancelRequested(Message):
    type: Literal["job_cancel_requested"] = "job_cancel_requested"
    proposal: ProposalNo
    run: RunNo
    reason: str = "cancelled by user"


class JobState(StrEnum):
    SUBMITTING = "submitting"
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    VANISHED = "vanished"
    SUBMIT_FAILED = "submit_failed"


class JobStateChanged(Message):
    type: Literal["job_state"] = "job_state"
    job_request_id: str
    proposal: ProposalNo
    run: RunNo
    state: JobState
    backend: Literal["slurm", "local"] = "slurm"
    job_id: int | None = None
    exit_status: int | None = None
    signal: int | None = None
    log_path: str | None = None
    reason: str | None = None


JobRequestEvent = Annotated[JobRequested, Field(discriminator="type")]
JobControlEvent = Annotated[JobCancelRequested, Field(discriminator="type")]
JobStateEvent = Annotated[JobStateChanged, Field(discriminator="type")]
