"""Probes that reflect consumption: a stuck consumer fails its liveness probe (real broker).

The probe is the real command the Kubernetes and compose probes run
(``runstream health --heartbeat-file ...``), reading the heartbeat file a
service writes while its FastStream app runs.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from faststream import FastStream
from runstream_common import parsers
from runstream_common.admin import ensure_topics
from runstream_common.health import add_heartbeat
from runstream_common.kafka import Delivery, make_broker, publish, subscribe
from runstream_common.messages import RunRequested
from runstream_common.settings import KafkaSettings, ServiceSettings
from support.kafka import wait_for

pytestmark = pytest.mark.integration


def _run(run: int) -> RunRequested:
    return RunRequested(
        request_id=f"r{run}",
        proposal=1,
        run=run,
        trigger="raw",
        context_dir="/c",
        proposal_dir="/p",
    )


def probe(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runstream.cli", "health", "--heartbeat-file", str(path),
         "--max-age", "10", *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def _probe_until(path: Path, *extra: str, ok: bool, text: str, timeout: float = 60) -> str:
    async def check() -> str | None:
        done = await asyncio.to_thread(probe, path, *extra)
        output = done.stdout + done.stderr
        return output if (done.returncode == 0) == ok and text in output else None

    return str(await wait_for(check, timeout=timeout, interval=0.5))


@pytest.mark.timeout(180)
async def test_a_stuck_consumer_fails_its_liveness_probe(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    topic = kafka_settings.topics.runs
    await ensure_topics(kafka_settings, [topic], partitions=1)
    release = asyncio.Event()
    handled: list[int] = []

    async def handler(message: RunRequested, delivery: Delivery) -> None:
        if message.run == 2:
            await release.wait()  # a handler that hangs (a dead NFS mount, a deadlock...)
        handled.append(message.run)

    broker = make_broker(kafka_settings, client_id="stuck")
    subscribe(
        broker,
        topic,
        group_id=f"{kafka_settings.topic_prefix}-g",
        parser=parsers.RUNS,
        handler=handler,
        settings=ServiceSettings(kafka=kafka_settings),
        max_poll_interval_ms=4000,
    )
    app = FastStream(broker)
    heartbeat = tmp_path / "heartbeat"
    add_heartbeat(app, heartbeat, interval_s=0.5)
    producer = make_broker(kafka_settings, client_id="producer")
    await producer.connect()
    await app.start()
    try:
        await publish(producer, topic, _run(1))
        await wait_for(lambda: asyncio.sleep(0, result=handled == [1]), timeout=60)
        await _probe_until(heartbeat, "--ready", ok=True, text="ready")

        await publish(producer, topic, _run(2))  # this one hangs
        stuck = await _probe_until(heartbeat, ok=False, text="stuck")
        assert "not polled for" in stuck
        assert f"{topic} ({kafka_settings.topic_prefix}-g)" in stuck
        assert probe(heartbeat, "--ready").returncode == 1

        release.set()  # it comes back: live again, and ready once it has rejoined its group
        await _probe_until(heartbeat, ok=True, text="last beat")
        await _probe_until(heartbeat, "--ready", ok=True, text="ready")
        assert 2 in handled
    finally:
        release.set()
        await app.stop()
        await producer.stop()
    gone = probe(heartbeat)
    assert gone.returncode == 1
    assert "no heartbeat" in gone.stderr
