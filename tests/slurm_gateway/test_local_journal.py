"""The local backend's journal: a restarted gateway loses no job (real subprocesses)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from runstream_common.messages import JobState
from runstream_slurm_gateway.adapters.local_backend import LocalBackend
from runstream_slurm_gateway.adapters.local_journal import Journal
from runstream_slurm_gateway.jobspec import JobSpec

pytestmark = pytest.mark.unit


def spec(tmp: Path, request: str, script: str) -> JobSpec:
    return JobSpec(
        job_request_id=request,
        proposal=1,
        run=int(request[-1]),
        name=f"r{request[-1]}-p1-runstream",
        argv=("/bin/sh", "-c", script),
        environment={"PATH": os.environ["PATH"]},
        working_dir=str(tmp),
        log_path=str(tmp / f"{request}.log"),
        time_limit_min=10,
    )


async def until(predicate, timeout: float = 90.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.1)):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met")


async def state_of(backend: LocalBackend, job_id: int) -> JobState:
    jobs = await backend.snapshot(full=True)
    assert jobs is not None
    return next(j.state for j in jobs if j.job_id == job_id)


async def test_a_restarted_gateway_adopts_reruns_and_keeps_held_jobs(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal" / "local-jobs-test.jsonl")
    marker = tmp_path / "ran"
    first = LocalBackend(journal=journal)
    # 1: still running when the gateway dies; ends with status 3 once told to (a file, not
    # a sleep: however slow the machine, it is still running when the second gateway looks).
    go = tmp_path / "go"
    survivor = await first.submit(
        spec(tmp_path, "req-1", f"while [ ! -e {go} ]; do sleep 0.05; done; exit 3"), hold=False
    )
    # 2: its process is lost too (machine trouble); must run again.
    lost = await first.submit(
        spec(tmp_path, "req-2", f"echo ran >> {marker}; sleep 60"), hold=False
    )
    # 3: held by the concurrency cap; must still be held.
    held = await first.submit(spec(tmp_path, "req-3", "exit 0"), hold=True)
    # the shell creates the file before it writes: wait for the line, not the file
    await until(lambda: marker.exists() and marker.read_text().count("ran") == 1)
    entries, _ = journal.unfinished()
    pids = {e.job_id: e.pid for e in entries}
    assert pids[lost] is not None
    os.killpg(pids[lost], signal.SIGKILL)  # the job dies with the gateway (SIGKILL, no goodbye)
    # The first gateway process is gone: nothing of it watches its jobs any more.
    for job in first._jobs.values():
        if job.watcher is not None:
            job.watcher.cancel()

    second = LocalBackend(journal=journal)  # the restarted gateway
    assert await second.recover() == 3
    jobs = {j.job_id: j for j in (await second.snapshot(full=True) or [])}
    assert jobs[held].held
    assert jobs[held].state is JobState.PENDING
    assert jobs[survivor].state is JobState.RUNNING
    go.touch()  # the survivor may end now

    await until(lambda: marker.read_text().count("ran") == 2)  # job 2 ran again
    assert "runs again" in (tmp_path / "req-2.log").read_text()
    for _ in range(100):
        if await state_of(second, survivor) is JobState.FAILED:
            break
        await asyncio.sleep(0.1)
    info = next(j for j in (await second.snapshot(full=True) or []) if j.job_id == survivor)
    assert (info.state, info.exit_status) == (JobState.FAILED, 3)

    await second.release(held)
    for _ in range(100):
        if await state_of(second, held) is JobState.COMPLETED:
            break
        await asyncio.sleep(0.1)
    assert await state_of(second, held) is JobState.COMPLETED
    await second.cancel(lost)
    await second.aclose()
    # New ids never collide with the journal's.
    assert await second.submit(spec(tmp_path, "req-4", "exit 0"), hold=True) > held


async def test_a_graceful_shutdown_leaves_running_jobs_to_the_next_gateway(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "local-jobs-test.jsonl")
    marker = tmp_path / "ran"
    first = LocalBackend(journal=journal, kill_grace_s=1)
    job = await first.submit(spec(tmp_path, "req-1", f"echo ran >> {marker}; sleep 60"), hold=False)
    await until(lambda: marker.exists())
    await first.aclose()  # SIGTERM: no process is left behind ...
    entries, _ = journal.unfinished()
    assert [e.job_id for e in entries] == [job]  # ... and the job is not forgotten
    second = LocalBackend(journal=journal, kill_grace_s=1)
    assert await second.recover() == 1
    await until(lambda: marker.read_text().count("ran") == 2)
    await second.cancel(job)
    for _ in range(100):
        if await state_of(second, job) is JobState.CANCELLED:
            break
        await asyncio.sleep(0.1)
    assert await state_of(second, job) is JobState.CANCELLED
    assert journal.unfinished()[0] == []
