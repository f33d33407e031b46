"""runstream's processing and job states as DAMNIT's ``processing_state_set`` / ``_finished``.

DAMNIT's GUI shows a gear on a run while a processing id is RUNNING, dots while one is
PENDING, and drops the id on ``processing_finished``. runstream's passes map onto that:
queued/waiting -> PENDING, running -> RUNNING, finished/failed -> finished (DAMNIT sends
no finish for a failed job and lets the GUI find it through squeue; we do send it).
Cluster jobs are processing ids of their own (the job request id) with the Slurm job id.
"""

from __future__ import annotations

from runstream_common.messages import JobState, JobStateChanged, ProcessingStateChanged
from runstream_common.messages.damnit import (
    DamnitProcessingFinished,
    DamnitProcessingState,
    ProcessingFinishedMsg,
    ProcessingStateSetMsg,
)
from runstream_common.messages.processing import ProcessingStatus

USERNAME = "runstream"
"""runstream's messages do not say which account ran a pass; DAMNIT's GUI shows this."""

_PENDING = {ProcessingStatus.QUEUED, ProcessingStatus.WAITING}
_DONE = {ProcessingStatus.FINISHED, ProcessingStatus.FAILED}
_JOB_PENDING = {JobState.SUBMITTING, JobState.PENDING}
_JOB_DONE = {
    JobState.COMPLETED,
    JobState.FAILED,
    JobState.CANCELLED,
    JobState.TIMEOUT,
    JobState.VANISHED,
    JobState.SUBMIT_FAILED,
}


def _state(
    processing_id: str,
    proposal: int,
    run: int,
    data: str,
    status: str,
    hostname: str | None,
    slurm_cluster: str | None,
    slurm_job_id: int | None,
) -> bytes:
    msg = ProcessingStateSetMsg(
        data=DamnitProcessingState(
            processing_id=processing_id,
            proposal=proposal,
            run=run,
            data=data,
            status=status,
            hostname=hostname or "",
            username=USERNAME,
            slurm_cluster=slurm_cluster,
            slurm_job_id=str(slurm_job_id) if slurm_job_id is not None else None,
        )
    )
    return msg.model_dump_json().encode()


def finished(processing_id: str) -> bytes:
    msg = ProcessingFinishedMsg(data=DamnitProcessingFinished(processing_id=processing_id))
    return msg.model_dump_json().encode()


def processing(state: ProcessingStateChanged, slurm_cluster: str | None = None) -> bytes | None:
    """The DAMNIT message for one processing step, or None (per-variable steps)."""
    if state.status in _DONE:
        return finished(state.processing_id)
    if state.status in _PENDING:
        status = "PENDING"
    elif state.status == ProcessingStatus.RUNNING:
        status = "RUNNING"
    else:
        return None
    return _state(
        state.processing_id,
        state.proposal,
        state.run,
        str(state.trigger),
        status,
        state.hostname,
        slurm_cluster if state.slurm_job_id is not None else None,
        state.slurm_job_id,
    )


def job(state: JobStateChanged, slurm_cluster: str | None = None) -> bytes | None:
    """The DAMNIT message for a batch job's state (its own processing id)."""
    if state.state in _JOB_DONE:
        return finished(state.job_request_id)
    status = "PENDING" if state.state in _JOB_PENDING else "RUNNING"
    cluster = slurm_cluster if state.backend == "slurm" and state.job_id is not None else None
    return _state(
        state.job_request_id,
        state.proposal,
        state.run,
        "all",
        status,
        None,
        cluster,
        state.job_id,
    )
