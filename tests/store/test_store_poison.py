"""A results record that kills the store's process: dead-lettered after N crashes, not a loop.

The store runs as a real process on the real broker and database, with a test's
fault injection (tests/support/store_with_hooks.py, ``poison_result``) that makes
it die (``os._exit(137)``, as a crash inside the HDF5 library would) while merging
any result that has a variable named ``crash_the_store``; the test restarts it each time it
dies. The crashes are counted on the ``attempts`` topic; after ``max_crashes``
(3, the default) the record goes to ``results.dlq`` with the reason, its pass
is recorded as failed and published, and the results around it are applied
once each.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from runstream_common import parsers
from runstream_common.admin import ensure_topics
from runstream_common.kafka import make_broker, publish
from runstream_common.messages import (
    ProcessingStateChanged,
    ProcessingStateSet,
    ProcessingStatus,
    ResultsReady,
)
from runstream_common.settings import KafkaSettings
from runstream_common.topics import dlq, run_key
from runstream_store.schema import upgrade
from support.kafka import read_all, wait_for
from support.registry import register_proposal
from support.store_with_hooks import POISON_MARK

from .fragments import Fragment
from .helpers import read_topic
from .test_store_crash import _start_store, _wait_exit

pytestmark = pytest.mark.integration

P = 5300
RUNS = (1, 2, 3, 4, 5)
POISON_RUN = 3
GOOD = tuple(r for r in RUNS if r != POISON_RUN)


def _results(tmp_path: Path) -> dict[int, ResultsReady]:
    messages = {}
    for run in RUNS:
        frag = Fragment(tmp_path, P, run)
        frag.scalar("energy", float(run) * 1.5)
        if run == POISON_RUN:
            frag.scalar(POISON_MARK, 1.0)
        messages[run] = frag.message(revision=10).model_copy(
            update={"processing_id": f"proc-{run}", "request_id": f"req-{run}"}
        )
    return messages


@pytest.mark.timeout(420)
async def test_results_record_that_crashes_the_store_is_dead_lettered_after_three_crashes(
    kafka_settings: KafkaSettings, pg_dsn: str, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(pg_dsn)
    await upgrade(conn)
    topics = kafka_settings.topics
    await ensure_topics(
        kafka_settings, [topics.results, topics.processing, topics.updates], partitions=1
    )
    await register_proposal(kafka_settings, P, tmp_path)
    messages = _results(tmp_path)
    poison = messages[POISON_RUN]
    producer = make_broker(kafka_settings, client_id="poison-producer")
    await producer.connect()
    # the executor said the poison record's pass finished (it did; the store cannot take it)
    finished = ProcessingStateChanged(
        processing_id=poison.processing_id, request_id=poison.request_id, proposal=P,
        run=POISON_RUN, trigger=poison.trigger, status=ProcessingStatus.FINISHED,
    )  # fmt: skip
    await publish(producer, topics.processing, finished, key=run_key(P, POISON_RUN))
    for run in RUNS:
        await publish(producer, topics.results, messages[run], key=run_key(P, run))
    await producer.stop()
    log = tmp_path / "store.log"

    crashes = 0
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = _start_store(kafka_settings, pg_dsn, log, "poison_result")

        async def dead_lettered() -> list[Any]:
            nonlocal crashes, proc
            assert proc is not None
            code = proc.poll()
            if code is not None:
                assert code == 137, log.read_text()
                crashes += 1
                assert crashes <= 3, "the store died again after the record's third crash"
                proc = _start_store(kafka_settings, pg_dsn, log, "poison_result")
            return await read_all(kafka_settings, dlq(topics.results), 1, timeout=0.5)

        dead = await wait_for(dead_lettered, timeout=300, interval=0.5)

        def settled(feed: list[Any]) -> bool:
            updated = {m.run for m in feed if m.type == "values_updated"}
            failed = [
                m for m in feed
                if isinstance(m, ProcessingStateSet) and m.state.status is ProcessingStatus.FAILED
            ]  # fmt: skip
            return updated >= set(GOOD) and bool(failed)

        feed = [m for _, m in await read_topic(kafka_settings, topics.updates, settled, 90)]
        assert proc.poll() is None, "the record does not kill the store a fourth time"
    except BaseException:
        print(log.read_text() if log.exists() else "(no store log)")
        raise
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            await _wait_exit(proc, 60)

    assert crashes == 3
    # in results.dlq: the original bytes, with the reason
    (record,) = dead
    headers = {k: v.decode() for k, v in record.headers}
    assert record.key == run_key(P, POISON_RUN)
    assert headers["x-dlq-error-class"] == "PoisonRecord"
    assert "crashed the store process 3 times" in headers["x-dlq-reason"]
    assert parsers.RESULTS.parse(record.value) == poison

    # its pass shows failed, in PostgreSQL and on the feed, with the reason
    row = await conn.fetchrow(
        "SELECT run, status, reason FROM processing_state WHERE processing_id = $1",
        poison.processing_id,
    )
    assert row is not None
    assert (row["run"], row["status"]) == (POISON_RUN, "failed")
    assert "crashed the store process 3 times" in row["reason"]
    failed = [m.state for m in feed if isinstance(m, ProcessingStateSet)
              and m.state.status is ProcessingStatus.FAILED]  # fmt: skip
    assert [(s.processing_id, s.run) for s in failed] == [(poison.processing_id, POISON_RUN)]
    assert "crashed the store process" in (failed[0].reason or "")

    # the results around it are applied once each; nothing of the poison record is
    values = await conn.fetch(
        "SELECT run, name, value_float, result_id FROM run_values WHERE proposal = $1", P
    )
    assert {(r["run"], r["name"]): r["value_float"] for r in values} == {
        (run, "energy"): run * 1.5 for run in GOOD
    }
    assert {r["run"]: r["result_id"] for r in values} == {
        run: messages[run].result_id for run in GOOD
    }
    history = await conn.fetch(
        "SELECT run, name, count(*) AS n FROM run_value_history WHERE proposal = $1 "
        "GROUP BY run, name",
        P,
    )
    assert {(r["run"], r["name"]): r["n"] for r in history} == {(run, "energy"): 1 for run in GOOD}
    applied = await conn.fetchval(
        "SELECT count(*) FROM applied_results WHERE result_id = ANY($1::text[])",
        [m.result_id for m in messages.values()],
    )
    assert applied == len(GOOD)
    # nothing else was dead-lettered (the records handled beside it were not blamed)
    assert len(await read_all(kafka_settings, dlq(topics.results), 2, timeout=2)) == 1
    await conn.close()
