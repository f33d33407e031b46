"""kill -9 of a real ingest process in the middle of a burst: still exactly one run message per run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter as Counter_
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from runstream_common import parsers
from runstream_common.messages import Trigger
from runstream_common.settings import KafkaSettings
from runstream_common.topics import dlq
from runstream_ingest.adapters.compacted import partitions_of

from .helpers import make_run_folder
from .kafka_helpers import create_topics, event, produce, read_topic, register

pytestmark = pytest.mark.integration

RUNS = 3000


def _env(kafka: KafkaSettings, data_root: Path, facility_topic: str) -> dict[str, str]:
    prefix = kafka.topic_prefix
    env = dict(os.environ)
    env.update(
        {
            "RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "RUNSTREAM_KAFKA_TOPIC_PREFIX": prefix,
            "RUNSTREAM_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "RUNSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
            "RUNSTREAM_INGEST_FACILITY_TOPICS": json.dumps([facility_topic]),
            "RUNSTREAM_INGEST_GROUP_ID": f"{prefix}-ingest",
            "RUNSTREAM_INGEST_TRANSACTIONAL_ID": f"{prefix}-ingest",
            "RUNSTREAM_INGEST_GROUP_INSTANCE_ID": f"{prefix}-ingest-0",
            "RUNSTREAM_INGEST_DATA_ROOT": str(data_root),
            "RUNSTREAM_INGEST_BATCH_MAX_RECORDS": "100",
            "RUNSTREAM_INGEST_OFFSETS_INTERVAL_S": "60",
            "RUNSTREAM_INGEST_LOG_LEVEL": "WARNING",
        }
    )
    return env


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "runstream_ingest"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (ingest commits its offsets and exits), SIGKILL if it hangs."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Counter:
    """Counts committed run messages as they appear (group-less, read_committed)."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.count = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Counter:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await self.consumer.start()
        tps = await partitions_of(self.consumer, self.kafka.topics.runs, 60)
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            self.count += sum(len(v) for v in batch.values())

    async def __aexit__(self, *_exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await self.consumer.stop()

    async def wait(self, at_least: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + timeout
        while self.count < at_least:
            if proc.poll() is not None:
                raise RuntimeError(f"ingest exited with status {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.count} run messages after {timeout} s")
            await asyncio.sleep(0.01)


async def test_kill_9_mid_burst_then_restart(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    prefix = kafka_settings.topic_prefix
    facility_topic = f"{prefix}.fac.r2d2"
    pdir = tmp_path / "p002212"
    (pdir / "raw").mkdir(parents=True)
    create_topics(kafka_settings.bootstrap_servers, [facility_topic], partitions=1)
    await register(kafka_settings, 2212, tmp_path / "ctx", pdir)
    env = _env(kafka_settings, tmp_path, facility_topic)
    log = tmp_path / "ingest.log"

    burst = [event("migration_complete", 2212, r, instrument="HED") for r in range(1, RUNS + 1)]
    # In the second half, every 100th position also carries a malformed event (unique
    # bytes): a dead letter is not replay-safe, so its batch carries the offsets in its
    # own transaction. The first half is all replay-safe: its offsets wait (up to
    # offsets_interval_s), so the kill in it makes the restart replay what was done.
    malformed = {
        i: event("migration_complete", 2212, f"bad-{i}") for i in range(RUNS // 2, RUNS, 100)
    }
    burst = [
        v
        for i, good in enumerate(burst)
        for v in ([malformed[i], good] if i in malformed else [good])
    ]
    produce(
        kafka_settings.bootstrap_servers, facility_topic, [v for v in burst for _ in (0, 1)]
    )  # each twice

    proc = _start(env, log)
    try:
        async with Counter(kafka_settings) as counter:
            await counter.wait(300, timeout=60, proc=proc)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            at_kill = counter.count
            assert at_kill < RUNS // 2, "the kill came after the replay-safe half; make it bigger"
            # nothing committed offsets yet: the restart reads the done events again
            assert (
                await committed_offset(kafka_settings, f"{prefix}-ingest", facility_topic) is None
            )

            proc = _start(env, log)
            # the facility sends the burst again after the crash, and one more run as a barrier
            produce(
                kafka_settings.bootstrap_servers,
                facility_topic,
                [*burst, event("migration_complete", 2212, RUNS + 1)],
            )
            await counter.wait(RUNS + 1, timeout=120, proc=proc)
    finally:
        _stop(proc)

    records = await read_topic(kafka_settings, kafka_settings.topics.runs)
    runs = [parsers.RUNS.parse(r.value) for r in records]
    assert len(runs) == RUNS + 1, (
        f"{len(runs)} run messages for {RUNS + 1} runs (killed at {at_kill})"
    )
    assert sorted(m.run for m in runs) == list(range(1, RUNS + 2))
    assert {m.trigger for m in runs} == {Trigger.RAW}
    assert proc.returncode == 0, log.read_text()[-3000:]
    # each malformed event was sent three times (twice, then once after the crash):
    # exactly three dead letters each, none lost to the kill and none replayed
    dead = await read_topic(
        kafka_settings, dlq(facility_topic), until=lambda recs: len(recs) >= 3 * len(malformed)
    )
    assert Counter_(r.value for r in dead) == {v: 3 for v in malformed.values()}
    # SIGTERM committed the offsets of everything decided: a restart replays nothing
    assert (
        await committed_offset(kafka_settings, f"{prefix}-ingest", facility_topic)
        == len(burst) * 2 + len(burst) + 1
    )


async def committed_offset(kafka: KafkaSettings, group: str, topic: str) -> int | None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(topic, 0))
    finally:
        await consumer.stop()


async def test_kill_9_while_proc_events_wait_loses_none_and_duplicates_none(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    prefix = kafka_settings.topic_prefix
    raw_topic, cal_topic = f"{prefix}.fac.r2d2", f"{prefix}.fac.cal"
    pdir = tmp_path / "p002212"
    (pdir / "raw").mkdir(parents=True)
    create_topics(kafka_settings.bootstrap_servers, [raw_topic, cal_topic], partitions=1)
    await register(kafka_settings, 2212, tmp_path / "ctx", pdir)
    env = _env(kafka_settings, tmp_path, raw_topic)
    env.update(
        {
            "RUNSTREAM_INGEST_FACILITY_TOPICS": json.dumps([raw_topic, cal_topic]),
            "RUNSTREAM_INGEST_PROC_WAITS_FOR_RAW": "false",
            "RUNSTREAM_INGEST_PROC_RETRY_DELAY_S": "0.3",
            "RUNSTREAM_INGEST_PROC_MAX_ATTEMPTS": "1000",
            "RUNSTREAM_INGEST_SETTLE_S": "0.5",
        }
    )
    log = tmp_path / "ingest.log"
    runs = list(range(1, 51))
    produce(
        kafka_settings.bootstrap_servers,
        raw_topic,
        [event("migration_complete", 2212, r) for r in runs],
    )
    produce(
        kafka_settings.bootstrap_servers,
        cal_topic,
        [event("run_corrections_complete", 2212, r) for r in runs] * 2,
    )

    proc = _start(env, log)
    try:
        # every proc event is waiting for its folder (the retry topic holds them) ...
        await read_topic(
            kafka_settings,
            kafka_settings.topics.processing,
            until=lambda recs: len({parsers.PROCESSING.parse(r.value).run for r in recs}) >= 50,
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # ... the calibration finishes while ingest is down, then it comes back
        for r in runs:
            make_run_folder(pdir, r, "proc", age_s=60)
        proc = _start(env, log)

        def proc_msgs(recs: list) -> list:
            return [
                m for m in (parsers.RUNS.parse(r.value) for r in recs) if m.trigger is Trigger.PROC
            ]

        await read_topic(
            kafka_settings,
            kafka_settings.topics.runs,
            until=lambda recs: len(proc_msgs(recs)) >= 50,
        )
        # absence check: a few more retry periods must not add anything
        await asyncio.sleep(2.0)
        records = await read_topic(kafka_settings, kafka_settings.topics.runs)
    finally:
        _stop(proc)
    msgs = [parsers.RUNS.parse(r.value) for r in records]
    assert sorted(m.run for m in msgs if m.trigger is Trigger.PROC) == runs
    assert sorted(m.run for m in msgs if m.trigger is Trigger.RAW) == runs
