"""Records in flight: watermark commits, per-key order, the bound, rebalances (in memory)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from aiokafka import TopicPartition as TP
from runstream_common import parsers
from runstream_common.inflight import InFlight, Watermark
from runstream_common.kafka import Delivery, RetryPolicy
from runstream_common.messages import RunRequested

pytestmark = pytest.mark.unit

TOPIC = "u.runs"
FAST = RetryPolicy(max_attempts=2, backoff_s=0.001, backoff_max_s=0.001, transient_window_s=5)


@dataclass
class FakeConsumer:
    assigned: set[TP] = field(default_factory=lambda: {TP(TOPIC, 0), TP(TOPIC, 1)})
    commits: list[dict[TP, int]] = field(default_factory=list)
    paused: set[TP] = field(default_factory=set)

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    async def commit(self, offsets: dict[TP, int]) -> None:
        self.commits.append(dict(offsets))

    def pause(self, *tps: TP) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TP) -> None:
        self.paused.difference_update(tps)

    def highwater(self, tp: TP) -> int:
        return 100

    def committed(self, tp: TP) -> int | None:
        """The last committed position of ``tp``."""
        for commit in reversed(self.commits):
            if tp in commit:
                return commit[tp]
        return None


@dataclass
class FakeMessage:
    raw_message: Any
    consumer: FakeConsumer


class Gates:
    """A handler whose records finish when the test says so; it records what ran when."""

    def __init__(self) -> None:
        self.gates: dict[int, asyncio.Event] = {}
        self.log: list[tuple[str, int]] = []

    def gate(self, offset: int) -> asyncio.Event:
        return self.gates.setdefault(offset, asyncio.Event())

    async def __call__(self, message: RunRequested, delivery: Delivery) -> None:
        self.log.append(("start", delivery.offset))
        await self.gate(delivery.offset).wait()
        self.log.append(("end", delivery.offset))


def record(partition: int, offset: int, run: int) -> ConsumerRecord[bytes, bytes]:
    body = parsers.encode(
        RunRequested(
            request_id=f"r{offset}",
            proposal=1,
            run=run,
            trigger="raw",
            context_dir="/c",
            proposal_dir="/p",
        )
    )
    return ConsumerRecord(
        topic=TOPIC,
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=f"1/{run}".encode(),
        value=body,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=len(body),
        headers=(),
    )


def inflight(handler: Any, limit: int = 8) -> tuple[InFlight, FakeConsumer]:
    flight = InFlight(
        broker=None,  # type: ignore[arg-type]  # no dead letters in these tests
        group_id="g",
        parser=parsers.RUNS,
        handler=handler,
        retry=FAST,
        limit=limit,
    )
    return flight, FakeConsumer()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_watermark_is_the_oldest_unfinished_offset() -> None:
    mark = Watermark()
    for offset in (5, 6, 7):
        mark.take(offset)
    assert mark.position == 5
    mark.finish(6)
    assert mark.position == 5  # 6 is done, but 5 is not: nothing past 5 may be committed
    mark.finish(5)
    assert mark.position == 7
    mark.finish(7)
    assert mark.position == 8


async def test_a_later_record_done_first_is_not_committed_before_the_earlier_one() -> None:
    gates = Gates()
    flight, consumer = inflight(gates)
    for offset, run in ((0, 1), (1, 2), (2, 3)):
        await flight.dispatch(FakeMessage(record(0, offset, run), consumer))  # type: ignore[arg-type]
    await settle()
    assert {o for kind, o in gates.log if kind == "start"} == {0, 1, 2}  # all three in flight
    gates.gate(2).set()
    gates.gate(1).set()
    await settle()
    assert consumer.committed(TP(TOPIC, 0)) is None  # offset 0 still running
    gates.gate(0).set()
    await settle()
    assert consumer.committed(TP(TOPIC, 0)) == 3
    await flight.drain()


async def test_a_slow_record_holds_back_only_its_own_partition() -> None:
    gates = Gates()
    flight, consumer = inflight(gates)
    await flight.dispatch(FakeMessage(record(0, 10, 1), consumer))  # type: ignore[arg-type]
    await flight.dispatch(FakeMessage(record(1, 20, 2), consumer))  # type: ignore[arg-type]
    gates.gate(20).set()
    await settle()
    assert consumer.committed(TP(TOPIC, 1)) == 21
    assert consumer.committed(TP(TOPIC, 0)) is None
    gates.gate(10).set()
    await settle()
    assert consumer.committed(TP(TOPIC, 0)) == 11
    await flight.drain()


async def test_records_of_one_run_never_overtake_each_other() -> None:
    gates = Gates()
    flight, consumer = inflight(gates)
    await flight.dispatch(FakeMessage(record(0, 0, 7), consumer))  # type: ignore[arg-type]
    await flight.dispatch(FakeMessage(record(0, 1, 7), consumer))  # type: ignore[arg-type]
    await flight.dispatch(FakeMessage(record(0, 2, 8), consumer))  # type: ignore[arg-type]
    gates.gate(1).set()  # the second record of run 7 could finish at once ...
    await settle()
    assert ("start", 1) not in gates.log  # ... but does not start before the first is done
    assert ("start", 2) in gates.log  # another run is not held back
    gates.gate(0).set()
    await settle()
    assert gates.log.index(("end", 0)) < gates.log.index(("start", 1))
    gates.gate(2).set()
    await settle()
    assert consumer.committed(TP(TOPIC, 0)) == 3
    await flight.drain()


async def test_no_more_than_the_limit_is_taken_and_the_subscriber_never_waits() -> None:
    """At the limit the partitions are paused; the subscriber goes back to polling at once
    (a subscriber that waited for space would not poll, and aiokafka would leave the group
    after max_poll_interval_ms while long runs are in flight)."""
    gates = Gates()
    flight, consumer = inflight(gates, limit=2)
    await flight.dispatch(FakeMessage(record(0, 0, 1), consumer))  # type: ignore[arg-type]
    assert consumer.paused == set()
    await asyncio.wait_for(
        flight.dispatch(FakeMessage(record(0, 1, 2), consumer)),  # type: ignore[arg-type]
        1,
    )
    assert consumer.paused == consumer.assigned  # full: nothing more is fetched
    assert flight.in_flight == 2
    gates.gate(0).set()
    await settle()
    assert consumer.paused == set()  # space again: fetching resumes
    await asyncio.wait_for(
        flight.dispatch(FakeMessage(record(0, 2, 3), consumer)),  # type: ignore[arg-type]
        1,
    )
    await settle()
    assert ("start", 2) in gates.log
    assert consumer.paused == consumer.assigned
    for offset in (1, 2):
        gates.gate(offset).set()
    await flight.drain()
    assert consumer.committed(TP(TOPIC, 0)) == 3


async def test_revoked_partitions_finish_what_started_and_drop_the_rest() -> None:
    gates = Gates()
    flight, consumer = inflight(gates)
    await flight.dispatch(FakeMessage(record(0, 0, 1), consumer))  # type: ignore[arg-type]
    await flight.dispatch(FakeMessage(record(0, 1, 1), consumer))  # type: ignore[arg-type]  # waits for 0
    await settle()
    release = asyncio.ensure_future(flight.release({TP(TOPIC, 0)}))
    await settle()
    assert not release.done()  # waits for the running record ...
    gates.gate(0).set()
    await asyncio.wait_for(release, 5)
    assert consumer.committed(TP(TOPIC, 0)) == 1  # ... commits it, and not the dropped one
    assert ("start", 1) not in gates.log
    await flight.drain()


async def test_drain_waits_commits_and_takes_nothing_more() -> None:
    gates = Gates()
    flight, consumer = inflight(gates)
    await flight.dispatch(FakeMessage(record(1, 5, 1), consumer))  # type: ignore[arg-type]
    draining = asyncio.ensure_future(flight.drain())
    await settle()
    await flight.dispatch(FakeMessage(record(1, 6, 2), consumer))  # type: ignore[arg-type]
    assert ("start", 6) not in gates.log
    gates.gate(5).set()
    await asyncio.wait_for(draining, 5)
    assert consumer.committed(TP(TOPIC, 1)) == 6  # offset 6 was not taken: it comes again
    assert consumer.paused == consumer.assigned


async def test_a_drain_timeout_leaves_unfinished_records_uncommitted() -> None:
    gates = Gates()
    flight, consumer = inflight(gates)
    flight.drain_timeout_s = 0.05
    await flight.dispatch(FakeMessage(record(0, 0, 1), consumer))  # type: ignore[arg-type]
    await flight.dispatch(FakeMessage(record(0, 1, 2), consumer))  # type: ignore[arg-type]
    gates.gate(1).set()
    await flight.drain()
    assert consumer.committed(TP(TOPIC, 0)) is None
    assert ("end", 0) not in gates.log


class FakeLedger:
    """Crash counts by offset, in memory (the real one is on the attempts topic)."""

    max_crashes = 3

    def __init__(self, counts: dict[int, int]) -> None:
        self.counts = dict(counts)

    def crashes(self, rec: ConsumerRecord[Any, Any]) -> int:
        return self.counts.get(rec.offset, 0)

    async def begin(self, rec: ConsumerRecord[Any, Any]) -> int:
        before = self.counts.get(rec.offset, 0)
        self.counts[rec.offset] = before + 1
        return before

    async def end(self, rec: ConsumerRecord[Any, Any]) -> None:
        self.counts.pop(rec.offset, None)

    async def undo(self, rec: ConsumerRecord[Any, Any], before: int) -> None:
        self.counts[rec.offset] = before


async def test_a_record_that_was_in_flight_when_the_process_died_runs_alone() -> None:
    gates = Gates()
    flight, consumer = inflight(gates)
    ledger = FakeLedger({0: 1})  # offset 0 was being handled when the process died
    flight.ledger = ledger  # type: ignore[assignment]
    flight.ledger_ready.set()
    await flight.dispatch(FakeMessage(record(1, 1, 2), consumer))  # type: ignore[arg-type]
    await settle()
    await flight.dispatch(FakeMessage(record(0, 0, 1), consumer))  # type: ignore[arg-type]
    await flight.dispatch(FakeMessage(record(1, 2, 3), consumer))  # type: ignore[arg-type]
    await settle()
    assert [o for kind, o in gates.log if kind == "start"] == [1]  # the suspect waits ...
    assert ledger.counts == {0: 1, 1: 1}  # (each attempt counted before it starts)
    gates.gate(1).set()
    await settle()
    assert [o for kind, o in gates.log if kind == "start"] == [1, 0]  # ... then runs alone
    gates.gate(0).set()
    await settle()
    assert [o for kind, o in gates.log if kind == "start"] == [1, 0, 2]
    gates.gate(2).set()
    await settle()
    assert ledger.counts == {}  # every attempt ended: nothing is counted any more
    await flight.drain()
