"""A run that kills the executor's process: dead-lettered after N crashes, not a loop.

The executor and the store run as real processes on the real broker and
database. The context's variable kills the executor's main process (found by
walking up from the worker: worker -> zygote -> executor) with SIGKILL, as the
kernel's OOM killer would; the test restarts the executor each time it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from runstream_common import parsers
from runstream_common.admin import ensure_topics
from runstream_common.messages import ProcessingStateChanged, ProcessingStatus
from runstream_common.settings import KafkaSettings
from runstream_common.topics import dlq
from support.database import upgrade_async
from support.kafka import read_all, wait_for
from support.registry import register_proposal
from support.services import System

from .conftest import make_mock_proposal
from .helpers import write_context
from .test_inflight_integration import Runs, _db_rows

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

POISON = """
from damnit_ctx import Variable
import os, signal, time

def _executor_pid():
    pid = os.getpid()
    while pid > 1:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\\0")
        if b"serve" in argv and b"executor" in argv:
            return pid
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
    raise RuntimeError("no executor process above this worker")

@Variable(title="Crash")
def crash(run, number: "meta#run_number"):
    if number == 3:
        os.kill(_executor_pid(), signal.SIGKILL)
        time.sleep(30)
    return number

@Variable(title="Label")
def label(run, number: "meta#run_number"):
    return f"run {number}"
"""
NAMES = ("crash", "label")
GOOD = (1, 2, 4, 5)


def _reap(system: System) -> None:
    """The executor died: end what is left of its process group (zygote, workers)."""
    proc = system.procs["executor"]
    assert proc.process is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.process.pid, signal.SIGKILL)
    proc.process.wait(timeout=30)


@pytest.mark.timeout(600)
async def test_poison_run_is_dead_lettered_after_three_crashes(
    kafka_settings: KafkaSettings, pg_dsn: str, tmp_path: Path
) -> None:
    await upgrade_async(pg_dsn)
    ctx_dir = tmp_path / "ctx"
    write_context(ctx_dir, POISON)
    proposal_dir = await asyncio.to_thread(make_mock_proposal, tmp_path / "data", 5)
    prefix = kafka_settings.topic_prefix
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env.update(
        {
            "RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
            "RUNSTREAM_KAFKA_TOPIC_PREFIX": prefix,
            "RUNSTREAM_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "RUNSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
            "RUNSTREAM_POSTGRES_DSN": pg_dsn,
            "RUNSTREAM_STORE_GROUP_ID": f"{prefix}-store",
            "RUNSTREAM_EXECUTOR_WORKERS": "2",
            "RUNSTREAM_EXECUTOR_RUNS_IN_FLIGHT": "4",
            "RUNSTREAM_EXECUTOR_PARALLEL_VARIABLES": "1",
            "RUNSTREAM_EXECUTOR_PRELOAD": "numpy,extra_data",
            "RUNSTREAM_EXECUTOR_MAX_CRASHES": "3",
            "PYTHONUNBUFFERED": "1",
        }
    )
    (tmp_path / "logs").mkdir()
    system = System(env=env, log_dir=tmp_path / "logs")
    await ensure_topics(kafka_settings, [kafka_settings.topics.runs])
    await register_proposal(kafka_settings, 1234, ctx_dir, proposal_dir)
    runs = Runs(kafka_settings, ctx_dir, proposal_dir)
    await runs.producer.start()
    topics = kafka_settings.topics
    query = "SELECT run, name, value_int, value_text FROM run_values WHERE proposal = 1234"
    crashes = 0
    try:
        await system.start("store", "executor")
        for run in range(1, 6):
            await runs.send(run)

        async def dead_lettered() -> list[Any]:
            nonlocal crashes
            if not system.procs["executor"].alive:
                crashes += 1
                assert crashes <= 3, "the executor died again after the record's third crash"
                _reap(system)
                await system.restart("executor")
            return await read_all(kafka_settings, dlq(topics.runs), 1, timeout=0.5)

        dead = await wait_for(dead_lettered, timeout=420, interval=0.5)

        async def good_runs_stored() -> list[Any] | None:
            rows = await _db_rows(pg_dsn, query)
            return rows if len(rows) == len(GOOD) * len(NAMES) else None

        rows = await wait_for(good_runs_stored, timeout=180)

        async def failure_stored() -> list[Any]:
            return await _db_rows(
                pg_dsn,
                "SELECT status, reason FROM processing_state "
                "WHERE proposal = 1234 AND run = 3 AND status = 'failed'",
            )

        failed_rows = await wait_for(failure_stored, timeout=60)
        processing = await read_all(kafka_settings, topics.processing, 1000, timeout=3)
        assert system.procs["executor"].alive  # the record does not kill it a fourth time
    except BaseException:
        print(system.logs())
        raise
    finally:
        await runs.producer.stop()
        system.stop()

    assert crashes == 3
    (record,) = dead
    headers = {k: v.decode() for k, v in record.headers}
    assert record.key == b"1234/3"
    assert "crashed the executor process 3 times" in headers["x-dlq-reason"]
    assert headers["x-dlq-error-class"] == "PoisonRecord"
    assert parsers.RUNS.parse(record.value).run == 3  # the original bytes

    # recorded as failed, with the reason, where the GUIs see it
    assert any("crashed the executor" in (r["reason"] or "") for r in failed_rows)
    states = [parsers.PROCESSING.parse(r.value) for r in processing]
    poisoned = [
        s
        for s in states
        if isinstance(s, ProcessingStateChanged)
        and s.run == 3
        and s.status is ProcessingStatus.FAILED
        and "crashed the executor" in (s.reason or "")
    ]
    assert poisoned

    # the other runs are processed, once each
    values = {(r["run"], r["name"]): (r["value_int"], r["value_text"]) for r in rows}
    for run in GOOD:
        assert values[(run, "crash")][0] == run
        assert values[(run, "label")][1] == f"run {run}"
    assert not any(r == 3 for r, _ in values)
    history = await _db_rows(
        pg_dsn,
        "SELECT run, name, count(*) AS n FROM run_value_history WHERE proposal = 1234 "
        "GROUP BY run, name",
    )
    assert {(r["run"], r["name"]): r["n"] for r in history} == {
        (run, name): 1 for run in GOOD for name in NAMES
    }
    # nothing else was dead-lettered (the runs beside the poison record were not blamed)
    assert len(await read_all(kafka_settings, dlq(topics.runs), 2, timeout=2)) == 1
