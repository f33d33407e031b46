"""The gateway's logic with the local backend: real subprocesses, no Kafka."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from runstream_common.messages import JobCancelRequested, JobState, JobStateChanged
from runstream_slurm_gateway.adapters.local_backend import LocalBackend
from runstream_slurm_gateway.adapters.log_files import append_line
from runstream_slurm_gateway.handlers import Gateway, ProposalSettingsView
from runstream_slurm_gateway.settings import JobSettings, Settings, SlurmRestSettings

from .helpers import (
    TRACE_SCRIPT,
    bash_prefix,
    final_states,
    job_request,
    never_more_than,
    replay_trace,
    wait_for,
)

pytestmark = pytest.mark.unit


class Harness:
    def __init__(self, tmp: Path, script: str, *, time_unit_s: float = 60.0) -> None:
        self.events: list[JobStateChanged] = []
        self.backend = LocalBackend(kill_grace_s=1.0, time_unit_s=time_unit_s)
        self.settings = Settings(
            backend="local",
            slurm=SlurmRestSettings(poll_interval_s=0.05),
            job=JobSettings(command_prefix=bash_prefix(script), time="1"),
        )
        self.proposals = ProposalSettingsView()
        self.proposals.loaded.set()

        async def publish(msg: JobStateChanged) -> None:
            self.events.append(msg)

        self.gateway = Gateway(
            backend=self.backend,
            publish=publish,
            append_line=append_line,
            settings=self.settings,
            proposals=self.proposals,
        )
        self.ctx = str(tmp)

    def done(self, n: int) -> bool:
        return len(final_states(self.events)) >= n


async def started(h: Harness, stop: asyncio.Event) -> asyncio.Task[None]:
    return asyncio.create_task(h.gateway.poll_forever(stop))


async def test_exit_statuses_signals_timeout_and_clean_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    script = (
        'env > "$PWD/env-$RUNSTREAM_LOCAL_JOB_ID.txt"; echo "args: $*"; '
        'case "$4" in 1) exit 0;; 2) exit 3;; 3) kill -TERM $$;; 4) sleep 30;; esac'
    )
    h = Harness(tmp_path, script, time_unit_s=1.0)  # a "minute" of time limit lasts 1 s
    stop = asyncio.Event()
    poller = await started(h, stop)
    try:
        reqs = [job_request(900, run, h.ctx) for run in (1, 2, 3, 4)]
        for req in reqs:
            await h.gateway.handle_request(req)
        await wait_for(lambda: h.done(4), timeout=30, what="four jobs to end")
    finally:
        stop.set()
        await poller
        await h.backend.aclose()
    final = final_states(h.events)
    got = {
        r.run: (
            final[r.job_request_id].state,
            final[r.job_request_id].exit_status,
            final[r.job_request_id].signal,
        )
        for r in reqs
    }
    assert got == {
        1: (JobState.COMPLETED, 0, None),
        2: (JobState.FAILED, 3, None),
        3: (JobState.FAILED, None, 15),
        4: (JobState.TIMEOUT, None, 15),
    }
    assert all(e.backend == "local" for e in h.events)
    env_text = (tmp_path / "env-1.txt").read_text()
    assert "DISPLAY=" not in env_text
    assert "SLURM_JOB_ID=" not in env_text
    assert "RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS=" in env_text
    log = (tmp_path / "slurm_logs" / "r1-p900.out").read_text()
    assert "args: --proposal 900 --run 1" in log
    assert final[reqs[0].job_request_id].log_path == str(tmp_path / "slurm_logs" / "r1-p900.out")


async def test_cap_holds_and_order_is_kept(tmp_path: Path) -> None:
    h = Harness(tmp_path, TRACE_SCRIPT.format(sleep=0.3))
    h.proposals.set(901, {"concurrent_jobs": 2})
    stop = asyncio.Event()
    poller = await started(h, stop)
    try:
        reqs = [job_request(901, run, h.ctx) for run in range(1, 7)]
        for req in reqs:
            await h.gateway.handle_request(req)
        await wait_for(lambda: h.done(6), timeout=30, what="six jobs")
    finally:
        stop.set()
        await poller
        await h.backend.aclose()
    peak, order = replay_trace((tmp_path / "trace.txt").read_text())
    assert peak == 2
    assert sorted(order) == [1, 2, 3, 4, 5, 6]
    # Released in request order: the gateway reports each job running in turn. (Two jobs
    # released together may write their trace lines in either order, so the scripts'
    # own start order is not the gateway's to keep.)
    running = [e.run for e in h.events if e.state is JobState.RUNNING]
    assert list(dict.fromkeys(running)) == [1, 2, 3, 4, 5, 6]
    assert never_more_than(h.events, 2, 901) <= 2
    assert {e.state for e in final_states(h.events).values()} == {JobState.COMPLETED}
    held = [
        e
        for e in h.events
        if e.state is JobState.PENDING and e.reason and "concurrent_jobs" in e.reason
    ]
    assert held, "waiting jobs say why they wait"


async def test_redelivered_request_is_adopted_not_run_twice(tmp_path: Path) -> None:
    h = Harness(tmp_path, 'echo ran >> "$PWD/ran.txt"')
    stop = asyncio.Event()
    poller = await started(h, stop)
    try:
        req = job_request(902, 5, h.ctx)
        await h.gateway.handle_request(req)
        await h.gateway.handle_request(req)
        await wait_for(lambda: h.done(1), timeout=30, what="the job")
        await h.gateway.handle_request(req)  # after it finished, too
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await poller
        await h.backend.aclose()
    assert (tmp_path / "ran.txt").read_text() == "ran\n"
    assert len(h.gateway.jobs) == 1


async def test_cancel_running_and_held_jobs_and_log_it(tmp_path: Path) -> None:
    h = Harness(tmp_path, "sleep 30")
    h.proposals.set(903, {"concurrent_jobs": 1})
    stop = asyncio.Event()
    poller = await started(h, stop)
    try:
        first, second = job_request(903, 1, h.ctx), job_request(903, 2, h.ctx)
        await h.gateway.handle_request(first)
        await h.gateway.handle_request(second)
        await wait_for(lambda: any(e.state is JobState.RUNNING for e in h.events), what="running")
        await h.gateway.handle_cancel(JobCancelRequested(proposal=903, run=2, reason="not needed"))
        await h.gateway.handle_cancel(JobCancelRequested(proposal=903, run=1))
        await wait_for(lambda: h.done(2), timeout=30, what="both cancelled")
    finally:
        stop.set()
        await poller
        await h.backend.aclose()
    final = final_states(h.events)
    assert final[first.job_request_id].state is JobState.CANCELLED
    assert final[second.job_request_id].state is JobState.CANCELLED
    assert not any(e.state is JobState.RUNNING and e.run == 2 for e in h.events)
    log2 = (tmp_path / "slurm_logs" / "r2-p903.out").read_text()
    assert "Cancelled held local job" in log2
    assert "not needed" in log2
    log1 = (tmp_path / "slurm_logs" / "r1-p903.out").read_text()
    assert "Cancelled running local job" in log1


async def test_bad_request_is_reported_not_retried(tmp_path: Path) -> None:
    h = Harness(tmp_path, "true")
    h.proposals.set(904, {"slurm_time": "whenever"})
    await h.gateway.handle_request(job_request(904, 1, h.ctx))
    assert [e.state for e in h.events] == [JobState.SUBMIT_FAILED]
    assert "whenever" in (h.events[0].reason or "")
    assert os.listdir(tmp_path) == []


async def test_finished_local_jobs_are_forgotten_after_a_while(tmp_path: Path) -> None:
    h = Harness(tmp_path, "true")
    h.backend.keep_finished_s = 0.0
    stop = asyncio.Event()
    poller = await started(h, stop)
    try:
        await h.gateway.handle_request(job_request(905, 1, h.ctx))
        await wait_for(lambda: h.done(1), timeout=30, what="the job")
        await wait_for(lambda: not h.gateway.jobs, timeout=10, what="the job to be forgotten")
    finally:
        stop.set()
        await poller
        await h.backend.aclose()
    assert await h.backend.snapshot(full=True) == []
    states = [e.state for e in h.events]
    assert states[0] is JobState.PENDING
    assert states[-1] is JobState.COMPLETED
