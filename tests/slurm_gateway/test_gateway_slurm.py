"""The slurm-gateway service end to end: real Kafka, real Slurm (slurmrestd v0.0.38)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from runstream_common.messages import JobCancelRequested, JobState, ProposalSettingsSet
from runstream_common.settings import KafkaSettings
from runstream_slurm_gateway.adapters.slurm_backend import SlurmBackend
from runstream_slurm_gateway.app import make_slurm_client
from runstream_slurm_gateway.cli import send_cancel
from runstream_slurm_gateway.job_request import build_spec
from runstream_slurm_gateway.settings import (
    JobSettings,
    Settings,
    SlurmRestSettings,
    TokenSettings,
)

from .conftest import SLURM_SH, SlurmCluster, slurm_sh
from .helpers import (
    TERMINAL,
    TRACE_SCRIPT,
    bash_prefix,
    final_states,
    job_request,
    never_more_than,
    replay_trace,
    wait_for,
)
from .kafka_helpers import StateWatcher, gateway, producer, send

pytestmark = pytest.mark.integration


def gateway_settings(
    slurm: SlurmCluster, kafka: KafkaSettings, script: str, *, lifespan: int = 600, **kw: object
) -> Settings:
    return Settings(
        backend="slurm",
        kafka=kafka,
        slurm=SlurmRestSettings(url=slurm.url, user=slurm.user, poll_interval_s=0.3),
        token=TokenSettings(
            source="command",
            command=slurm.token_command,
            lifespan_s=lifespan,
            refresh_margin_s=60,
            retry_backoff_s=0.5,
            retry_backoff_max_s=2,
        ),
        job=JobSettings(command_prefix=bash_prefix(script), time="1"),
        retry_backoff_s=0.2,
        retry_backoff_max_s=2.0,
        settings_wait_s=5,
        **kw,  # type: ignore[arg-type]
    )


async def slurm_jobs_by_request(settings: Settings) -> Counter[str]:
    client = make_slurm_client(settings)
    try:
        listing = await client.list()
    finally:
        await client.aclose()
    return Counter(
        j.tag.job_request_id
        for j in listing.jobs or []
        if j.tag is not None and j.tag.instance == settings.kafka.topic_prefix
    )


CRASH_AFTER_SUBMIT = """
import logging, os, sys
import anyio
from runstream_slurm_gateway.app import build_app
from runstream_slurm_gateway.settings import Settings

logging.basicConfig(level="INFO", stream=sys.stderr)

def crash(request):
    print("test hook: exiting after the submit, before the offset commit", file=sys.stderr)
    sys.stderr.flush()
    os._exit(70)

anyio.run(build_app(Settings(), after_request=crash).app.run)
"""
"""The gateway in a process of its own, with a test's hook that kills it after a submit."""


async def test_outcomes_exit_status_signal_timeout_and_clean_env(
    slurm: SlurmCluster, kafka_settings: KafkaSettings, job_dir: Path
) -> None:
    script = (
        'env > "$PWD/env-$4.txt"; id -un > "$PWD/user-$4.txt"; echo "args: $*"; '
        'case "$4" in 1) exit 0;; 2) exit 3;; 3) kill -TERM $$;; 4) sleep 300;; esac'
    )
    settings = gateway_settings(slurm, kafka_settings, script)
    reqs = [job_request(1100, run, str(job_dir)) for run in (4, 1, 2, 3)]  # the slow one first
    async with (
        StateWatcher(kafka_settings) as watch,
        gateway(settings),
        producer(kafka_settings) as p,
    ):
        for req in reqs:
            await send(p, kafka_settings, req)
        # the time limit is 1 minute; slurmctld notices it on its periodic pass
        await wait_for(lambda: len(final_states(watch.events)) >= 4, timeout=150, what="4 jobs")
    final = final_states(watch.events)
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
    assert all(e.backend == "slurm" and e.job_id for e in watch.events)
    assert final[reqs[1].job_request_id].log_path == str(job_dir / "slurm_logs" / "r1-p1100.out")
    log = (job_dir / "slurm_logs" / "r1-p1100.out").read_text()
    assert "args: --proposal 1100 --run 1 --context-dir" in log
    assert "--job-request-id " + reqs[1].job_request_id in log
    env = dict(
        line.split("=", 1)
        for line in (job_dir / "env-1.txt").read_text().splitlines()
        if "=" in line
    )
    assert env["RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS"] == kafka_settings.bootstrap_servers
    assert env["RUNSTREAM_KAFKA_TOPIC_PREFIX"] == kafka_settings.topic_prefix
    assert env["SLURM_JOB_NAME"] == "r1-p1100-runstream"  # set by Slurm itself
    assert "DISPLAY" not in env
    assert "LD_PRELOAD" not in env
    assert "PYTEST_CURRENT_TEST" not in env
    assert (job_dir / "user-1.txt").read_text().strip() == slurm.user  # the unprivileged user
    states_of_1 = [e.state for e in watch.events if e.job_request_id == reqs[1].job_request_id]
    assert states_of_1[0] is JobState.PENDING
    assert states_of_1[-1] is JobState.COMPLETED


async def test_cancel_from_the_cli_cancels_and_logs(
    slurm: SlurmCluster, kafka_settings: KafkaSettings, job_dir: Path
) -> None:
    settings = gateway_settings(slurm, kafka_settings, "sleep 120")
    req = job_request(1101, 7, str(job_dir))
    async with (
        StateWatcher(kafka_settings) as watch,
        gateway(settings),
        producer(kafka_settings) as p,
    ):
        await send(p, kafka_settings, req)
        await wait_for(
            lambda: any(e.state is JobState.RUNNING for e in watch.events), what="running"
        )
        await send_cancel(settings, JobCancelRequested(proposal=1101, run=7, reason="wrong run"))
        await wait_for(lambda: bool(final_states(watch.events)), timeout=60, what="cancelled")
    final = final_states(watch.events)[req.job_request_id]
    assert final.state is JobState.CANCELLED
    log = (job_dir / "slurm_logs" / "r7-p1101.out").read_text()
    assert f"Cancelled running slurm job {final.job_id}" in log
    assert "wrong run" in log


async def test_concurrency_cap_holds_and_waiting_jobs_are_held_in_slurm(
    slurm: SlurmCluster, kafka_settings: KafkaSettings, job_dir: Path
) -> None:
    settings = gateway_settings(slurm, kafka_settings, TRACE_SCRIPT.format(sleep=0.5))
    reqs = [job_request(1102, run, str(job_dir)) for run in range(1, 5)]
    async with (
        StateWatcher(kafka_settings) as watch,
        gateway(settings) as rt,
        producer(kafka_settings) as p,
    ):
        await send(
            p, kafka_settings, ProposalSettingsSet(proposal=1102, settings={"concurrent_jobs": 1})
        )
        await wait_for(lambda: rt.gateway.cap(1102) == 1, what="settings to arrive")
        for req in reqs:
            await send(p, kafka_settings, req)
        await wait_for(lambda: len(rt.gateway.jobs) == 4, what="all four submitted")
        held_in_slurm = [t.info.job_id for t in rt.gateway.jobs.values() if t.info.held]
        await wait_for(lambda: len(final_states(watch.events)) >= 4, timeout=90, what="4 jobs")
    assert held_in_slurm, "requests beyond the cap wait as held jobs"
    # what the jobs themselves saw: never two at once, all four ran
    peak, order = replay_trace((job_dir / "trace.txt").read_text())
    assert peak == 1
    assert sorted(order) == [1, 2, 3, 4]
    assert never_more_than(watch.events, 1, 1102) <= 1
    # waiting requests start in the order they were accepted (= job id order)
    job_of_run = {e.run: e.job_id for e in watch.events if e.job_id is not None}
    started = [job_of_run[run] for run in order]
    assert started == sorted(started)
    assert {e.state for e in final_states(watch.events).values()} == {JobState.COMPLETED}


async def test_a_job_submitted_before_a_crash_is_adopted_not_submitted_again(
    slurm: SlurmCluster, kafka_settings: KafkaSettings, job_dir: Path
) -> None:
    """The gateway crashed after submitting and before committing: the request comes again."""
    settings = gateway_settings(slurm, kafka_settings, "sleep 1")
    req = job_request(1103, 3, str(job_dir))
    spec = build_spec(req, {}, settings.job, settings.kafka)
    backend = SlurmBackend(make_slurm_client(settings))
    try:  # what the crashed gateway left behind: a held job carrying the request id
        orphan = await backend.submit(spec, hold=True)
    finally:
        await backend.aclose()
    async with (
        StateWatcher(kafka_settings) as watch,
        gateway(settings),
        producer(kafka_settings) as p,
    ):
        await send(p, kafka_settings, req)
        await wait_for(lambda: bool(final_states(watch.events)), timeout=60, what="the job to end")
    assert (await slurm_jobs_by_request(settings))[req.job_request_id] == 1
    assert {e.job_id for e in watch.events} == {orphan}
    assert final_states(watch.events)[req.job_request_id].state is JobState.COMPLETED


async def test_short_lived_tokens_are_refreshed_without_failed_requests(
    slurm: SlurmCluster, kafka_settings: KafkaSettings, job_dir: Path
) -> None:
    settings = gateway_settings(slurm, kafka_settings, "sleep 1", lifespan=4)
    reqs = [job_request(1104, run, str(job_dir)) for run in range(1, 7)]
    async with (
        StateWatcher(kafka_settings) as watch,
        gateway(settings) as rt,
        producer(kafka_settings) as p,
    ):
        for req in reqs[:3]:
            await send(p, kafka_settings, req)
        await asyncio.sleep(5)  # longer than a token lives
        for req in reqs[3:]:
            await send(p, kafka_settings, req)
        await wait_for(lambda: len(final_states(watch.events)) >= 6, timeout=90, what="6 jobs")
        tokens = rt.tokens
        assert tokens is not None
        refreshes = tokens.refreshes
        backend_client = rt.backend.client  # type: ignore[attr-defined]
        auth_retries = backend_client.auth_retries
    assert refreshes >= 3
    assert auth_retries == 0
    assert not [e for e in watch.events if e.state is JobState.SUBMITTING]  # nobody waited
    assert {e.state for e in final_states(watch.events).values()} == {JobState.COMPLETED}


@pytest.mark.serial  # restarts the shared Slurm: alone, after the parallel tests
async def test_slurmrestd_restart_mid_batch_loses_and_doubles_nothing(
    slurm: SlurmCluster, kafka_settings: KafkaSettings, job_dir: Path
) -> None:
    settings = gateway_settings(slurm, kafka_settings, "sleep 0.5")
    reqs = [job_request(1105, run, str(job_dir)) for run in range(1, 9)]
    try:
        async with (
            StateWatcher(kafka_settings) as watch,
            gateway(settings),
            producer(kafka_settings) as p,
        ):
            for req in reqs[:3]:
                await send(p, kafka_settings, req)
            await wait_for(lambda: any(e.run == 1 for e in watch.events), what="first job state")
            stopped = await asyncio.to_thread(slurm_sh, "stop-rest", timeout=60)
            assert stopped.returncode == 0, stopped.stderr
            for req in reqs[3:]:
                await send(p, kafka_settings, req)
            await wait_for(
                lambda: any(e.state is JobState.SUBMITTING for e in watch.events),
                what="a request waiting for slurmrestd",
            )
            started = await asyncio.to_thread(slurm_sh, "start", timeout=120)
            assert started.returncode == 0, started.stderr
            await wait_for(lambda: len(final_states(watch.events)) >= 8, timeout=120, what="8 jobs")
    finally:
        slurm_sh("start", timeout=120)  # never leave the cluster without slurmrestd
    per_request = await slurm_jobs_by_request(settings)
    assert {r.job_request_id: per_request[r.job_request_id] for r in reqs} == {
        r.job_request_id: 1 for r in reqs
    }
    final = final_states(watch.events)
    assert {final[r.job_request_id].state for r in reqs} == {JobState.COMPLETED}
    waiting = [e for e in watch.events if e.state is JobState.SUBMITTING]
    assert all("slurmrestd" in (e.reason or "") for e in waiting)
    assert not [e for e in watch.events if e.state in TERMINAL - {JobState.COMPLETED}]


def kill_slurmctld(slurm: SlurmCluster) -> None:
    """A controller crash: stop slurmctld by its pid file (the jobs keep running in slurmd)."""
    import signal
    import time

    pid_file = slurm.jobs_dir.parent / "run" / "slurmctld.pid"
    pid = int(pid_file.read_text().split()[0])
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] in "ZX":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    raise AssertionError("slurmctld did not stop")


@pytest.mark.serial  # restarts the shared Slurm: alone, after the parallel tests
async def test_slurmctld_restart_mid_batch_keeps_jobs_and_waits(
    slurm: SlurmCluster, kafka_settings: KafkaSettings, job_dir: Path
) -> None:
    """slurmctld goes away (its REST answers turn into 500/-1, tokens cannot be minted):
    requests wait and report why; after the restart they go through, once each."""
    settings = gateway_settings(slurm, kafka_settings, "sleep 2")
    reqs = [job_request(1106, run, str(job_dir)) for run in range(1, 5)]
    try:
        async with (
            StateWatcher(kafka_settings) as watch,
            gateway(settings),
            producer(kafka_settings) as p,
        ):
            for req in reqs[:2]:
                await send(p, kafka_settings, req)
            await wait_for(lambda: len(watch.events) >= 2, what="first jobs submitted")
            await asyncio.to_thread(kill_slurmctld, slurm)
            for req in reqs[2:]:
                await send(p, kafka_settings, req)
            await wait_for(
                lambda: any(e.state is JobState.SUBMITTING for e in watch.events),
                what="a request waiting for slurmctld",
            )
            restarted = await asyncio.to_thread(
                subprocess.run,
                ["bash", str(SLURM_SH), "start"],
                env={**os.environ, "RUNSTREAM_SLURM_FRESH": "0"},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert restarted.returncode == 0, restarted.stderr
            await wait_for(lambda: len(final_states(watch.events)) >= 4, timeout=120, what="4 jobs")
    finally:
        slurm_sh("start", timeout=120)
    per_request = await slurm_jobs_by_request(settings)
    assert {r.job_request_id: per_request[r.job_request_id] for r in reqs} == {
        r.job_request_id: 1 for r in reqs
    }
    final = final_states(watch.events)
    assert {final[r.job_request_id].state for r in reqs} == {JobState.COMPLETED}


async def test_gateway_killed_between_submit_and_commit_submits_nothing_twice(
    slurm: SlurmCluster,
    kafka_settings: KafkaSettings,
    job_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A real crash: the service process exits after Slurm accepted the job and before the
    offset is committed; the next gateway gets the request again and adopts the job."""
    import json
    import sys

    settings = gateway_settings(slurm, kafka_settings, "sleep 1")
    req = job_request(1107, 9, str(job_dir))
    env = {
        **os.environ,
        "RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "RUNSTREAM_KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "RUNSTREAM_SLURM_GATEWAY_BACKEND": "slurm",
        "RUNSTREAM_SLURM_GATEWAY_SLURM__URL": slurm.url,
        "RUNSTREAM_SLURM_GATEWAY_SLURM__USER": slurm.user,
        "RUNSTREAM_SLURM_GATEWAY_TOKEN__SOURCE": "command",
        "RUNSTREAM_SLURM_GATEWAY_TOKEN__COMMAND": slurm.token_command,
        "RUNSTREAM_SLURM_GATEWAY_JOB__COMMAND_PREFIX": json.dumps(settings.job.command_prefix),
        "RUNSTREAM_SLURM_GATEWAY_JOB__TIME": "1",
    }
    async with producer(kafka_settings) as p:
        # the topics exist before the first gateway subscribes
        from runstream_common.admin import ensure_topics

        topics = kafka_settings.topics
        await ensure_topics(
            kafka_settings, [topics.job_requests, topics.job_control, topics.job_state]
        )
        await send(p, kafka_settings, req)
    crashed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", CRASH_AFTER_SUBMIT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert crashed.returncode == 70, crashed.stderr[-3000:]
    assert "test hook: exiting after the submit" in crashed.stderr
    assert (await slurm_jobs_by_request(settings))[req.job_request_id] == 1

    caplog.set_level("INFO", logger="runstream.slurm_gateway")

    def adopted() -> bool:
        return any(
            req.job_request_id in r.getMessage() and "adopted" in r.getMessage()
            for r in caplog.records
        )

    async with StateWatcher(kafka_settings) as watch, gateway(settings):
        await wait_for(adopted, timeout=60, what="the redelivered request to be adopted")
        await wait_for(lambda: bool(final_states(watch.events)), timeout=60, what="the job to end")
    assert (await slurm_jobs_by_request(settings))[req.job_request_id] == 1
    assert final_states(watch.events)[req.job_request_id].state is JobState.COMPLETED
    assert len({e.job_id for e in watch.events}) == 1
