"""The exactly-once delivery mode with in-memory Kafka clients: batches, offsets, roll-backs, DLQ."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from runstream_common.errors import PermanentError, TransientError
from runstream_common.inbox import Inbox, Records
from runstream_common.kafka import DLQ_ERROR_CLASS, DLQ_REASON, DLQ_SOURCE_OFFSET
from runstream_common.settings import KafkaSettings
from runstream_common.transactional import (
    BatchRolledBack,
    Decision,
    Output,
    TransactionalLoop,
    dead_letter_output,
    failure_of,
)

pytestmark = pytest.mark.unit

TOPIC = "t.in"
TP = TopicPartition(TOPIC, 0)


@dataclass
class LoopSettings:
    kafka: KafkaSettings = field(default_factory=lambda: KafkaSettings(topic_prefix="t"))
    group_id: str = "g"
    group_instance_id: str | None = None
    transactional_id: str = "tx"
    batch_max_records: int = 10
    poll_timeout_ms: int = 5
    fetch_max_wait_ms: int = 5
    producer_retry_backoff_ms: int = 5
    concurrent_transactions_backoff_ms: float = 20.0
    transaction_timeout_ms: int = 15_000
    offsets_interval_s: float = 3600.0
    retry_backoff_s: float = 0.01
    retry_backoff_max_s: float = 0.01
    stats_interval_s: float = 3600.0


def rec(offset: int, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=TOPIC, partition=0, offset=offset, timestamp=int(time.time() * 1000),
        timestamp_type=0, key=b"k", value=value, checksum=None, serialized_key_size=1,
        serialized_value_size=len(value), headers=[("trace", b"1")],
    )  # fmt: skip


class FakeConsumer:
    """A partition log: getmany hands out what is after the position, seek moves it."""

    def __init__(self, log: list[ConsumerRecord[bytes, bytes]]) -> None:
        self.log = log
        self.pending = deque(log)
        self.sought: list[int] = []

    async def getmany(self, timeout_ms: int, max_records: int) -> Records:
        if not self.pending:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        out = [self.pending.popleft() for _ in range(min(max_records, len(self.pending)))]
        return {TP: out}

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.sought.append(offset)
        self.pending = deque(r for r in self.log if r.offset >= offset)


class FakeProducer:
    def __init__(self, fail_sends: int = 0) -> None:
        self.fail_sends = fail_sends
        self.committed: list[tuple[list[tuple[str, bytes]], dict[TopicPartition, int] | None]] = []
        self.aborted = 0
        self._open: tuple[list[tuple[str, bytes]], dict[TopicPartition, int] | None] | None = None

    async def begin_transaction(self) -> None:
        assert self._open is None
        self._open = ([], None)

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[None]:
        assert self._open is not None
        if self.fail_sends:
            self.fail_sends -= 1
            raise ConnectionError("broker went away")
        self._open[0].append((topic, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def send_offsets_to_transaction(
        self, offsets: dict[TopicPartition, int], _g: str
    ) -> None:
        assert self._open is not None
        self._open = (self._open[0], dict(offsets))

    async def commit_transaction(self) -> None:
        assert self._open is not None
        self.committed.append(self._open)
        self._open = None

    async def abort_transaction(self) -> None:
        self.aborted += 1
        self._open = None


class Echo(TransactionalLoop[Decision]):
    """Every record to ``t.out``; ``bad`` ones dead-lettered; ``flaky`` ones transient once."""

    def __init__(self, log: list[ConsumerRecord[bytes, bytes]], producer: FakeProducer) -> None:
        super().__init__(LoopSettings(), [TOPIC], client_id="test")
        self.consumer = FakeConsumer(log)  # type: ignore[assignment]
        self.inbox = Inbox(self.consumer, 10, 5)  # type: ignore[arg-type]
        self.producers = [producer, producer]  # type: ignore[list-item]
        self.flaky = True
        self.done: list[Decision] = []
        self.undone: list[Decision] = []

    async def decide(self, records: Records) -> Decision | None:
        if not records:
            return None
        decision = Decision()
        for tp, batch in records.items():
            for record in batch:
                try:
                    decision.outputs.append(self._one(record))
                except Exception as exc:
                    reason, error_class = failure_of(exc, record)
                    decision.replay_safe = False
                    decision.outputs.append(
                        dead_letter_output(
                            record,
                            reason=reason,
                            error_class=error_class,
                            group_id="g",
                            max_bytes=1_000_000,
                        )
                    )
                decision.positions[tp] = record.offset + 1
        return decision

    def _one(self, record: ConsumerRecord[bytes, bytes]) -> Output:
        if record.value == b"bad":
            raise PermanentError("bad value")
        if record.value == b"bug":
            raise ZeroDivisionError("bug")
        if record.value == b"flaky" and self.flaky:
            self.flaky = False
            raise TransientError("disk busy")
        return Output("t.out", record.key, record.value, [])

    def committed(self, decision: Decision) -> None:
        self.done.append(decision)

    def rolled_back(self, decision: Decision) -> None:
        self.undone.append(decision)


async def test_outputs_dead_letters_and_offsets_commit_in_one_transaction() -> None:
    producer = FakeProducer()
    loop = Echo([rec(0, b"a"), rec(1, b"bad"), rec(2, b"bug")], producer)
    assert await loop.step() == 3
    [(outputs, offsets)] = producer.committed
    assert [topic for topic, _ in outputs] == ["t.out", "t.in.dlq", "t.in.dlq"]
    assert offsets == {TP: 3}  # a dead letter makes the batch carry its offsets
    dead = loop.done[0].outputs[1:]
    assert dict(dead[0].headers)[DLQ_REASON] == b"bad value"
    assert dict(dead[0].headers)[DLQ_SOURCE_OFFSET] == b"1"
    assert dict(dead[0].headers)["trace"] == b"1"  # the record's own headers stay
    assert dict(dead[1].headers)[DLQ_REASON] == b"ZeroDivisionError: bug"
    assert dict(dead[1].headers)[DLQ_ERROR_CLASS] == b"ZeroDivisionError"
    await loop.inbox.halt()


async def test_a_failed_transaction_is_rolled_back_and_decided_again() -> None:
    producer = FakeProducer(fail_sends=1)
    loop = Echo([rec(0, b"a"), rec(1, b"b")], producer)
    with pytest.raises(BatchRolledBack) as failed:
        await loop.step()
    assert isinstance(failed.value.__cause__, ConnectionError)
    assert producer.aborted == 1
    assert producer.committed == []
    assert loop.consumer.sought == [0]  # type: ignore[attr-defined]
    assert len(loop.undone) == 1
    assert loop.done == []
    assert await loop.step() == 2
    [(outputs, offsets)] = producer.committed
    assert outputs == [("t.out", b"a"), ("t.out", b"b")]
    assert offsets is None  # replay-safe: its offsets wait for a later transaction
    await loop.flush()  # stopping commits them
    assert producer.committed[-1] == ([], {TP: 2})
    await loop.inbox.halt()


async def test_a_transient_error_rolls_the_batch_back_never_dead_letters_it() -> None:
    producer = FakeProducer()
    loop = Echo([rec(0, b"a"), rec(1, b"flaky")], producer)
    with pytest.raises(BatchRolledBack) as failed:
        await loop.step()
    assert isinstance(failed.value.__cause__, TransientError)
    assert producer.committed == []
    assert loop.consumer.sought == [0]  # type: ignore[attr-defined]
    assert await loop.step() == 2
    assert producer.committed[0][0] == [("t.out", b"a"), ("t.out", b"flaky")]
    await loop.inbox.halt()


def test_failure_of_is_the_error_tree() -> None:
    record = rec(7, b"x")
    assert failure_of(PermanentError("no such proposal"), record) == (
        "no such proposal",
        "PermanentError",
    )
    assert failure_of(KeyError("k"), record) == ("KeyError: 'k'", "KeyError")
    with pytest.raises(TransientError):
        failure_of(TransientError("later"), record)


def test_a_dead_letter_output_fits_the_request_size() -> None:
    record = rec(3, b"v" * 50_000)
    out = dead_letter_output(
        record, reason="too big", error_class="MessageTooLarge", group_id="g", max_bytes=4_096
    )
    assert out.topic == "t.in.dlq"
    assert out.key == b"k"
    assert len(out.value) < 4_096
    headers = dict(out.headers)
    assert headers[DLQ_REASON] == b"too big"
    assert headers["x-dlq-truncated"]
