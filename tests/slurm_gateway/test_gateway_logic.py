"""Gateway decisions with an in-memory backend: vanished jobs, waiting reasons, adoption."""

from __future__ import annotations

from dataclasses import replace

import pytest
from runstream_common.errors import ServiceUnavailable
from runstream_common.messages import JobState, JobStateChanged
from runstream_slurm_gateway.backend import BackendName
from runstream_slurm_gateway.handlers import Gateway, ProposalSettingsView
from runstream_slurm_gateway.jobspec import JobInfo, JobSpec
from runstream_slurm_gateway.settings import Settings
from runstream_slurm_gateway.tokens import TokenError

from .helpers import job_request

pytestmark = pytest.mark.unit


class MemoryBackend:
    name: BackendName = "slurm"

    def __init__(self) -> None:
        self.jobs: dict[int, JobInfo] = {}
        self.failure: Exception | None = None
        self.submits = 0

    async def submit(self, spec: JobSpec, *, hold: bool) -> int:
        if self.failure is not None:
            raise self.failure
        self.submits += 1
        job_id = 100 + len(self.jobs)
        self.jobs[job_id] = JobInfo(
            job_id, spec.name, spec.comment, JobState.PENDING, held=hold, log_path=spec.log_path
        )
        return job_id

    async def release(self, job_id: int) -> None:
        self.jobs[job_id] = replace(self.jobs[job_id], held=False)

    async def cancel(self, job_id: int) -> bool:
        return job_id in self.jobs

    async def snapshot(self, *, full: bool) -> list[JobInfo] | None:
        if self.failure is not None:
            raise self.failure
        return list(self.jobs.values())

    async def aclose(self) -> None:
        return None


def make() -> tuple[Gateway, MemoryBackend, list[JobStateChanged]]:
    backend = MemoryBackend()
    events: list[JobStateChanged] = []

    async def publish(msg: JobStateChanged) -> None:
        events.append(msg)

    async def append(path: str, line: str) -> None:
        return None

    proposals = ProposalSettingsView()
    proposals.loaded.set()
    gw = Gateway(
        backend=backend,
        publish=publish,
        append_line=append,
        settings=Settings(backend="slurm"),
        proposals=proposals,
    )
    return gw, backend, events


async def test_a_job_slurm_forgot_is_reported_vanished() -> None:
    gw, backend, events = make()
    req = job_request(5, 1, "/ctx")
    await gw.handle_request(req)
    (job_id,) = backend.jobs
    backend.jobs[job_id] = replace(backend.jobs[job_id], state=JobState.RUNNING)
    await gw.sync()
    del backend.jobs[job_id]  # purged, or slurmctld lost its state
    await gw.sync()
    assert [e.state for e in events] == [JobState.PENDING, JobState.RUNNING, JobState.VANISHED]
    assert "no longer knows" in (events[-1].reason or "")
    await gw.sync()
    assert len(events) == 3  # reported once
    assert gw.jobs == {}  # and then forgotten (memory stays bounded)


async def test_waiting_for_slurm_or_a_token_is_reported_once_per_reason() -> None:
    gw, backend, events = make()
    req = job_request(5, 2, "/ctx")
    backend.failure = ServiceUnavailable("slurmrestd at http://x is not answering")
    for _ in range(3):
        with pytest.raises(ServiceUnavailable):
            await gw.handle_request(req)
    backend.failure = TokenError("token refresh from command scontrol failing")
    with pytest.raises(TokenError):
        await gw.handle_request(req)
    assert [e.state for e in events] == [JobState.SUBMITTING, JobState.SUBMITTING]
    assert "not answering" in (events[0].reason or "")
    assert "token refresh" in (events[1].reason or "")
    backend.failure = None
    await gw.handle_request(req)
    assert events[-1].state is JobState.PENDING
    assert backend.submits == 1


async def test_adoption_by_request_id_across_a_restart() -> None:
    gw, backend, _ = make()
    req = job_request(5, 3, "/ctx")
    await gw.handle_request(req)
    restarted, _, events = make()
    restarted.backend = backend  # a new gateway process, the same Slurm
    await restarted.handle_request(req)
    assert backend.submits == 1
    assert [e.job_id for e in events] == [100]


async def test_foreign_and_other_instances_jobs_are_ignored() -> None:
    gw, backend, events = make()
    backend.jobs[7] = JobInfo(7, "x", "somebody's job", JobState.RUNNING)
    backend.jobs[8] = JobInfo(
        8,
        "r1-p5-runstream",
        "runstream:other-site job_request_id=a proposal=5 run=1",
        JobState.RUNNING,
    )
    await gw.sync()
    assert gw.jobs == {}
    assert events == []
