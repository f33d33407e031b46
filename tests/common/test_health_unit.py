"""The consumer probe's verdicts, with a stand-in for aiokafka's consumer."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from runstream_common.health import ConsumerProbe, Health, judge, write_report

pytestmark = pytest.mark.unit

TP = TopicPartition("t", 0)


class FakeConsumer:
    def __init__(self, *, position: int, end: int, idle: float = 0.0, member: str = "m-1") -> None:
        self.pos = position
        self.end = end
        self._subscription = SimpleNamespace(fetcher_idle_time=idle)
        self._coordinator = SimpleNamespace(member_id=member, generation=1 if member else -1)
        self.fetched = time.time()

    def assignment(self) -> set[TopicPartition]:
        return {TP} if self._coordinator.member_id else set()

    async def position(self, tp: TopicPartition) -> int:
        return self.pos

    def last_stable_offset(self, tp: TopicPartition) -> int:
        return self.end

    def highwater(self, tp: TopicPartition) -> int:
        return self.end

    def last_poll_timestamp(self, tp: TopicPartition) -> int:
        return int(self.fetched * 1000)


def _probe(consumer: Any, **kw: Any) -> ConsumerProbe:
    return ConsumerProbe(name="c", consumer=lambda: consumer, stuck_after_s=30, **kw)


async def test_a_healthy_consumer_is_live_and_ready() -> None:
    state = await _probe(FakeConsumer(position=5, end=5)).check()
    assert (state["live"], state["ready"], state["problems"]) == (True, True, [])
    assert state["partitions"] == 1


async def test_not_polled_past_the_limit_is_stuck() -> None:
    state = await _probe(FakeConsumer(position=5, end=9, idle=31)).check()
    assert not state["live"]
    assert "stuck, not polled for 31 s" in state["problems"][0]


async def test_a_batch_under_way_past_the_limit_is_stuck() -> None:
    started = time.monotonic() - 45
    state = await _probe(FakeConsumer(position=5, end=5), busy_since=lambda: started).check()
    assert not state["live"]


async def test_waiting_records_that_are_not_consumed_make_it_unready() -> None:
    consumer = FakeConsumer(position=5, end=9)
    probe = _probe(consumer, stall_after_s=0.2)
    assert (await probe.check())["ready"]  # first look: the clock starts
    await asyncio.sleep(0.3)
    state = await probe.check()
    assert state["live"]
    assert not state["ready"]
    assert "4 records waiting and none consumed" in state["problems"][0]
    consumer.pos = 6  # it moves again
    assert (await probe.check())["ready"]


async def test_outside_its_group_or_not_started_is_unready() -> None:
    state = await _probe(FakeConsumer(position=0, end=0, member="")).check()
    assert state["live"]
    assert not state["ready"]
    assert "not a member of its consumer group" in state["problems"][0]
    assert not (await _probe(None).check())["ready"]
    groupless = _probe(FakeConsumer(position=0, end=0, member=""), grouped=False)
    assert (await groupless.check())["ready"]


async def test_judge_reads_the_report(tmp_path: Path) -> None:
    path = tmp_path / "hb"
    assert judge(path, max_age_s=30, ready=False) == (
        False,
        f"no heartbeat: {path} does not exist (service not started?)",
    )
    health = Health()
    health.watch(_probe(FakeConsumer(position=5, end=9, idle=40)))
    write_report(path, await health.report())
    ok, line = judge(path, max_age_s=30, ready=False)
    assert not ok
    assert line.startswith("not live: c: stuck")
    health.probes[0] = _probe(FakeConsumer(position=0, end=0, member=""))
    write_report(path, await health.report())
    assert judge(path, max_age_s=30, ready=False)[0]
    assert judge(path, max_age_s=30, ready=True) == (
        False,
        "not ready: c: not a member of its consumer group",
    )
    path.write_text(json.dumps({"live": True, "ready": True}))
    old = time.time() - 100
    import os

    os.utime(path, (old, old))
    ok, line = judge(path, max_age_s=30, ready=False)
    assert not ok
    assert "stale heartbeat" in line
    path.write_text("")  # an old-style empty heartbeat file: only its age counts
    assert judge(path, max_age_s=30, ready=True)[0]


def test_an_in_flight_consumer_counts_as_stuck_long_before_its_max_poll_interval() -> None:
    """Its subscriber polls all the time (full: partitions paused), so a two-hour max poll
    interval (the pass deadline) must not make a consumer that stopped look alive."""
    from runstream_common import parsers
    from runstream_common.health import health_of
    from runstream_common.inflight import IN_FLIGHT_STUCK_AFTER_S, subscribe_in_flight
    from runstream_common.kafka import make_broker
    from runstream_common.settings import KafkaSettings, ServiceSettings

    settings = ServiceSettings(kafka=KafkaSettings(topic_prefix="h"))
    broker = make_broker(settings.kafka)

    async def handler(message: object, delivery: object) -> None:
        return None

    subscribe_in_flight(
        broker,
        "h.runs",
        group_id="g",
        parser=parsers.RUNS,
        handler=handler,
        settings=settings,
        limit=2,
        max_poll_interval_ms=2 * 3600 * 1000,
    )
    (probe,) = [p for p in health_of(broker).probes if "in flight" in p.name]
    assert probe.stuck_after_s == IN_FLIGHT_STUCK_AFTER_S < 2 * 3600
