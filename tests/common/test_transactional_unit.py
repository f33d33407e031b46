"""The exactly-once delivery mode with in-memory Kafka clients: batches, offsets, roll-backs, DLQ."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from runstream_common.errors import PermanentError, TransientError
from runstream_common.inbox import Records
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
from support.memory_kafka import MemoryKafka
from support.memory_kafka import record as make_record

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
    return make_record(TOPIC, offset, value, key=b"k", headers=[("trace", b"1")])


def kafka_with(*values: bytes) -> MemoryKafka:
    kafka = MemoryKafka()
    for value in values:
        kafka.append(TOPIC, value, key=b"k", headers=[("trace", b"1")])
    return kafka


class Echo(TransactionalLoop[Decision]):
    """Every record to ``t.out``; ``bad`` ones dead-lettered; ``flaky`` ones transient once."""

    def __init__(self, kafka: MemoryKafka) -> None:
        super().__init__(LoopSettings(), [TOPIC], client_id="test", clients=kafka.clients())
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
    kafka = kafka_with(b"a", b"bad", b"bug")
    loop = Echo(kafka)
    assert await loop.step() == 3
    [txn] = kafka.transactions
    assert txn.topics() == ["t.out", "t.in.dlq", "t.in.dlq"]
    assert txn.offsets == {TP: 3}  # a dead letter makes the batch carry its offsets
    assert kafka.group_offsets["g"] == {TP: 3}
    dead = loop.done[0].outputs[1:]
    assert dict(dead[0].headers)[DLQ_REASON] == b"bad value"
    assert dict(dead[0].headers)[DLQ_SOURCE_OFFSET] == b"1"
    assert dict(dead[0].headers)["trace"] == b"1"  # the record's own headers stay
    assert dict(dead[1].headers)[DLQ_REASON] == b"ZeroDivisionError: bug"
    assert dict(dead[1].headers)[DLQ_ERROR_CLASS] == b"ZeroDivisionError"
    await loop.inbox.halt()


async def test_a_failed_transaction_is_rolled_back_and_decided_again() -> None:
    kafka = kafka_with(b"a", b"b")
    kafka.fail_sends = 1
    loop = Echo(kafka)
    with pytest.raises(BatchRolledBack) as failed:
        await loop.step()
    assert isinstance(failed.value.__cause__, ConnectionError)
    assert kafka.aborted == 1
    assert kafka.transactions == []
    assert loop.consumer.sought == [0]  # type: ignore[attr-defined]
    assert len(loop.undone) == 1
    assert loop.done == []
    assert await loop.step() == 2
    [txn] = kafka.transactions
    assert [(r.topic, r.value) for r in txn.records] == [("t.out", b"a"), ("t.out", b"b")]
    assert txn.offsets == {}  # replay-safe: its offsets wait for a later transaction
    await loop.flush()  # stopping commits them
    assert (kafka.transactions[-1].records, kafka.transactions[-1].offsets) == ([], {TP: 2})
    await loop.inbox.halt()


async def test_a_transient_error_rolls_the_batch_back_never_dead_letters_it() -> None:
    kafka = kafka_with(b"a", b"flaky")
    loop = Echo(kafka)
    with pytest.raises(BatchRolledBack) as failed:
        await loop.step()
    assert isinstance(failed.value.__cause__, TransientError)
    assert kafka.transactions == []
    assert loop.consumer.sought == [0]  # type: ignore[attr-defined]
    assert await loop.step() == 2
    assert [(r.topic, r.value) for r in kafka.transactions[0].records] == [
        ("t.out", b"a"),
        ("t.out", b"flaky"),
    ]
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
