"""Bounds at the edge: number ranges, size caps, dead letters that fit and are never lost."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaConnectionError
from pydantic import ValidationError
from runstream_common import parsers
from runstream_common.errors import MessageTooLarge, PermanentError
from runstream_common.kafka import DLQ_REASON, Delivery, RetryPolicy, deliver, make_broker, publish
from runstream_common.limits import (
    DLQ_TRUNCATED,
    MAX_INT32,
    MAX_RUNS_PER_REQUEST,
    fit_dead_letter,
    record_size,
)
from runstream_common.messages import (
    ProposalRegistered,
    ReprocessRequested,
    RunRequested,
    VariableDefinition,
    VariablesDefined,
)
from runstream_common.settings import KafkaSettings

pytestmark = pytest.mark.unit

FAST = RetryPolicy(max_attempts=1, backoff_s=0.001, backoff_max_s=0.001, transient_window_s=0.2)


def _record(value: bytes, *, headers: list[tuple[str, bytes]] | None = None) -> ConsumerRecord:
    return ConsumerRecord(
        topic="t.runs",
        partition=0,
        offset=41,
        timestamp=int(time.time() * 1000),
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=headers or [],
    )


class FakeMessage:
    def __init__(self, record: ConsumerRecord) -> None:
        self.raw_message = record
        self.acked = 0
        self.nacked = 0

    async def ack(self) -> None:
        self.acked += 1

    async def nack(self) -> None:
        self.nacked += 1


class FlakyBroker:
    """Its dead-letter publishes fail ``failures`` times (a broker blip), then work."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.published: list[tuple[bytes, str, dict[str, str]]] = []

    async def publish(self, value: bytes, *, topic: str, key: Any, headers: dict[str, str]) -> None:
        if self.failures:
            self.failures -= 1
            raise KafkaConnectionError("broker blip")
        self.published.append((value, topic, headers))


@pytest.mark.parametrize("field", ["proposal", "run"])
@pytest.mark.parametrize("value", [-1, MAX_INT32 + 1, 10**20, True])
def test_numbers_outside_the_databases_integer_are_refused(field: str, value: object) -> None:
    fields: dict[str, Any] = dict(
        request_id="r", proposal=1, run=1, trigger="raw", context_dir="/c", proposal_dir="/p"
    )
    fields[field] = value
    with pytest.raises(ValidationError):
        RunRequested(**fields)
    fields[field] = MAX_INT32
    assert getattr(RunRequested(**fields), field) == MAX_INT32


def test_reprocess_requests_name_at_most_the_cap_of_runs() -> None:
    ReprocessRequested(proposal=1, runs=tuple(range(MAX_RUNS_PER_REQUEST)))
    with pytest.raises(ValidationError, match="at most 100000"):
        ReprocessRequested(proposal=1, runs=tuple(range(MAX_RUNS_PER_REQUEST + 1)))


def test_the_facility_parser_refuses_a_big_event_unread() -> None:
    big = b'{"event": "migration_complete", "proposal": 1, "run": 1, "x": "' + b"a" * 70_000
    with pytest.raises(MessageTooLarge, match="more than the limit of 65536 bytes"):
        parsers.FACILITY.parse(big + b'"}')
    assert parsers.FACILITY.parse(big + b'"}', max_bytes=100_000).run == 1


async def test_publish_refuses_a_message_over_the_cap_before_sending() -> None:
    broker = make_broker(KafkaSettings(max_message_bytes=10_000))
    huge = VariablesDefined(
        proposal=1,
        context_hash="h",
        revision=1,
        variables=tuple(
            VariableDefinition(name=f"v{i}", title="t" * 100, description="d" * 200)
            for i in range(100)
        ),
    )
    with pytest.raises(MessageTooLarge, match=r"variables_defined message for t\.results"):
        await publish(broker, "t.results", huge)  # the broker is not even connected
    with pytest.raises(MessageTooLarge, match="reprocess_requested"):
        await publish(
            broker, "t.reprocess", ReprocessRequested(proposal=1, runs=tuple(range(5000)))
        )
    assert issubclass(MessageTooLarge, PermanentError)


def test_settings_keep_room_for_headers() -> None:
    with pytest.raises(ValidationError, match="4096 bytes"):
        KafkaSettings(max_message_bytes=1_048_576)


def test_a_dead_letter_is_cut_to_fit_and_keeps_its_reason() -> None:
    reason = [(DLQ_REASON, b"r" * 4000), ("x-dlq-source-topic", b"t")]
    original = [("traceparent", b"00-abc"), ("content-type", b"application/json")]
    value = b"v" * 1_100_000
    fitted, headers = fit_dead_letter(b"key", value, [*original, *reason], 1_048_576)
    assert record_size(b"key", fitted, headers) <= 1_048_576
    assert value.startswith(fitted)
    assert len(fitted) > 1_000_000
    names = dict(headers)
    assert names[DLQ_REASON] == b"r" * 4000
    assert b"first %d of 1100000 bytes" % len(fitted) in names[DLQ_TRUNCATED]
    assert names["traceparent"] == b"00-abc"
    # original headers that alone are too big go too; ours stay
    fat = [("x-custom", b"h" * 20_000), *reason]
    fitted, headers = fit_dead_letter(None, b"small", fat, 16_384)
    assert record_size(None, fitted, headers) <= 16_384
    assert "x-custom" not in dict(headers)
    assert dict(headers)[DLQ_REASON] == b"r" * 4000
    assert b"original headers dropped" in dict(headers)[DLQ_TRUNCATED]
    # what fits is left alone
    assert fit_dead_letter(b"k", b"v", reason, 1_048_576) == (b"v", reason)


async def _fail(message: Any, delivery: Delivery) -> None:
    raise PermanentError("bad input")


async def test_a_failing_dead_letter_publish_is_retried_before_the_ack() -> None:
    message = FakeMessage(_record(b'{"not": "a run"}'))
    broker = FlakyBroker(failures=2)
    await deliver(broker, message, parser=parsers.RUNS, handler=_fail, group_id="g", retry=FAST)  # type: ignore[arg-type]
    assert (message.acked, message.nacked) == (1, 0)
    [(value, topic, headers)] = broker.published
    assert (value, topic) == (b'{"not": "a run"}', "t.runs.dlq")
    assert "runs:" in headers[DLQ_REASON]


@pytest.mark.parametrize("payload", [b"{broken", b'{"type": "run_requested"}'])
async def test_a_dead_letter_that_cannot_be_published_leaves_the_record_unacknowledged(
    payload: bytes,
) -> None:
    """Broken JSON (parser) or a handler's PermanentError: no dead letter, no ack; it comes again."""
    message = FakeMessage(_record(payload))
    broker = FlakyBroker(failures=10**6)
    await deliver(broker, message, parser=parsers.RUNS, handler=_fail, group_id="g", retry=FAST)  # type: ignore[arg-type]
    assert (message.acked, message.nacked) == (0, 1)
    assert broker.published == []


async def test_a_handler_error_whose_dead_letter_fails_is_not_acknowledged() -> None:
    run = RunRequested(
        request_id="r", proposal=1, run=1, trigger="raw", context_dir="/c", proposal_dir="/p"
    )
    message = FakeMessage(_record(parsers.encode(run)))
    broker = FlakyBroker(failures=10**6)
    await deliver(broker, message, parser=parsers.RUNS, handler=_fail, group_id="g", retry=FAST)  # type: ignore[arg-type]
    assert (message.acked, message.nacked) == (0, 1)


def test_registrations_are_bounded_too() -> None:
    with pytest.raises(ValidationError):
        ProposalRegistered(proposal=2**31, context_dir="/c")
