"""The store process dies between the HDF5 merge and the database commit, and after the
commit; restarted, it converges: the database agrees with the run file, nothing is lost,
nothing is applied twice and no fragment is left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import h5py
import numpy as np
import pytest
from runstream_common.admin import ensure_topics
from runstream_common.kafka import make_broker, publish
from runstream_common.messages import ResultsReady
from runstream_common.settings import KafkaSettings
from runstream_common.topics import run_key
from runstream_store.adapters.hdf5_merge import run_file_path
from runstream_store.schema import upgrade
from support import store_with_hooks
from support.registry import register_proposal

from .fragments import Fragment
from .helpers import read_topic, types_of

pytestmark = pytest.mark.integration

P = 5200
RUNS = (1, 2, 3)
SERVE = "import anyio; from runstream_store.app import create; anyio.run(create().run)"


def _start_store(
    kafka: KafkaSettings, dsn: str, log: Path, crash_point: str | None
) -> subprocess.Popen[bytes]:
    """The store as ``runstream serve store`` runs it, or with a test's fault injection
    (tests/support/store_with_hooks.py) that ends it with status 137 at ``crash_point``."""
    env = {
        **os.environ,
        "RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "RUNSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "RUNSTREAM_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "RUNSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
        "RUNSTREAM_STORE_POSTGRES__DSN": dsn,
        "RUNSTREAM_STORE_GROUP_ID": f"{kafka.topic_prefix}-store",
        "RUNSTREAM_STORE_FRAGMENT_WAIT_S": "2",
    }
    argv = [sys.executable, "-c", SERVE]
    if crash_point:
        argv = [sys.executable, str(store_with_hooks.SCRIPT), crash_point]
    return subprocess.Popen(argv, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    for _ in range(int(timeout / 0.2)):
        code = proc.poll()
        if code is not None:
            return code
        await asyncio.sleep(0.2)
    proc.kill()
    raise TimeoutError("the store did not exit")


def _file_state(context_dir: Path, run: int) -> tuple[float, np.ndarray] | None:
    path = run_file_path(context_dir, P, run)
    if not path.exists():
        return None
    with h5py.File(path, "r") as f:
        if "energy" not in f:
            return None
        return float(f["energy/data"][()]), f["trace/data"][()]


async def test_killed_between_merge_and_commit_and_after_commit_converges(
    kafka_settings: KafkaSettings, pg_dsn: str, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(pg_dsn)
    await upgrade(conn)
    topics = kafka_settings.topics
    await ensure_topics(kafka_settings, [topics.results, topics.updates], partitions=1)
    await register_proposal(kafka_settings, P, tmp_path)

    fragments: dict[int, Fragment] = {}
    messages: dict[int, ResultsReady] = {}
    for run in RUNS:
        frag = Fragment(tmp_path, P, run)
        frag.scalar("energy", float(run) * 1.5)
        frag.array("trace", np.arange(200.0) * run)
        fragments[run] = frag
        messages[run] = frag.message(revision=10)
    producer = make_broker(kafka_settings, client_id="crash-producer")
    await producer.connect()
    for run in RUNS:
        await publish(producer, topics.results, messages[run], key=run_key(P, run))
    await producer.stop()
    log = tmp_path / "store.log"
    first = RUNS[0]

    try:
        # 1. dies after merging run 1 into its file, before the database commit
        proc = _start_store(kafka_settings, pg_dsn, log, "after_merge")
        assert await _wait_exit(proc, 90) == 137, log.read_text()
        merged = _file_state(tmp_path, first)
        assert merged is not None  # the new state is in the file ...
        assert merged[0] == 1.5
        assert await conn.fetchval("SELECT count(*) FROM run_values") == 0  # ... not in the DB
        first_fragment = fragments[first].path
        assert first_fragment is not None
        assert first_fragment.exists()  # kept for the redelivery

        # 2. redelivered; dies after the commit, before publishing and deleting the fragment
        proc = _start_store(kafka_settings, pg_dsn, log, "after_commit")
        assert await _wait_exit(proc, 90) == 137, log.read_text()
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM applied_results WHERE result_id = $1",
                messages[first].result_id,
            )
            == 1
        )
        assert first_fragment.exists()

        # 3. a healthy store finishes everything
        proc = _start_store(kafka_settings, pg_dsn, log, None)

        def all_published(feed: list[object]) -> bool:
            updated = {m.run for m in feed if m.type == "values_updated"}  # type: ignore[attr-defined]
            added = {m.run for m in feed if m.type == "run_added"}  # type: ignore[attr-defined]
            return updated >= set(RUNS) and added >= set(RUNS)

        feed = await read_topic(kafka_settings, topics.updates, all_published, timeout=90)
        for _ in range(100):  # the fragment is deleted right after publishing
            if not any(f.path is not None and f.path.exists() for f in fragments.values()):
                break
            await asyncio.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            await _wait_exit(proc, 60)

    for run in RUNS:
        frag = fragments[run]
        assert frag.path is not None
        assert not frag.path.exists(), f"fragment of run {run} left behind"
        state = _file_state(tmp_path, run)
        assert state is not None
        energy, trace = state
        db = await conn.fetchrow(
            "SELECT value_float, result_id FROM run_values WHERE proposal = $1 AND run = $2 "
            "AND name = 'energy'",
            P,
            run,
        )
        assert db["value_float"] == energy == run * 1.5  # the database agrees with the file
        assert db["result_id"] == messages[run].result_id
        np.testing.assert_array_equal(trace, np.arange(200.0) * run)
        history = await conn.fetchval(
            "SELECT count(*) FROM run_value_history WHERE proposal = $1 AND run = $2", P, run
        )
        assert history == 2  # energy and trace, once each
    assert list((tmp_path / "extracted_data").glob(".*.tmp")) == []
    assert types_of([m for _, m in feed]).count("run_added") == len(RUNS)
    await conn.close()
