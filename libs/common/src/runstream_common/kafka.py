"""Kafka wiring shared by every service: the broker factory and reliable delivery.

FastStream's defaults are not at-least-once (``ACK_FIRST`` auto-commits;
``ACK`` commits even when the handler raised). :func:`subscribe` therefore uses
``AckPolicy.MANUAL`` and decides itself, per record:

- the payload does not parse             -> dead-letter topic, commit, move on
- the handler raises ``PermanentError``   -> dead-letter topic, commit, move on
- the handler raises ``TransientError``   -> retry with backoff; when the retry
  window is used up, seek back (nack) so the record comes again; never DLQ
- the handler raises anything else        -> retry up to ``max_attempts``, then DLQ
- the handler returns                     -> commit (its effects are durable)

A record is committed past only once its dead letter is on the broker: if the
dead-letter publish fails, it is tried again with backoff, and when the retry
window is used up the record is sought back (it comes again) instead of being
committed. A dead letter never exceeds the producer's size limit: the value is
cut (``x-dlq-truncated`` says so), the reason is kept.

The subscriber consumes one record at a time (``getone``), so a commit after a
record covers only records whose handler already returned. For several records
in flight with the same decisions, see :mod:`runstream_common.inflight`.

This is the first of two delivery modes (at-least-once). The second, exactly-once
read-process-write with the offsets in the producer's transaction, is
:mod:`runstream_common.transactional` (ingest).
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from aiokafka import ConsumerRecord
from aiokafka import TopicPartition as AioTopicPartition
from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, TopicPartition
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from opentelemetry.metrics import MeterProvider

from .errors import MessageFormatError, PermanentError, TransientError
from .health import ConsumerProbe, health_of
from .limits import DLQ_REASON_MAX_CHARS, check_size, fit_dead_letter
from .metrics import DeliveryMetrics
from .parsers import Parser
from .settings import KafkaSettings, ServiceSettings
from .telemetry import Telemetry
from .topics import dlq

log = logging.getLogger("runstream.kafka")

T = TypeVar("T")

DLQ_REASON = "x-dlq-reason"
DLQ_ERROR_CLASS = "x-dlq-error-class"
DLQ_SOURCE_TOPIC = "x-dlq-source-topic"
DLQ_SOURCE_PARTITION = "x-dlq-source-partition"
DLQ_SOURCE_OFFSET = "x-dlq-source-offset"
DLQ_GROUP = "x-dlq-consumer-group"
DLQ_ATTEMPTS = "x-dlq-attempts"
DLQ_TIME = "x-dlq-time"


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where a record came from; handed to handlers next to the parsed message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...]
    attempt: int


Handler = Callable[[T, Delivery], Awaitable[None]]


def _security(settings: KafkaSettings) -> BaseSecurity | None:
    kwargs = settings.security_kwargs()
    ssl_context = kwargs.get("ssl_context")
    password = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
    user = settings.sasl_username or ""
    if settings.sasl_mechanism == "PLAIN":
        return SASLPlaintext(user, password, ssl_context=ssl_context)
    if settings.sasl_mechanism == "SCRAM-SHA-256":
        return SASLScram256(user, password, ssl_context=ssl_context)
    if settings.sasl_mechanism == "SCRAM-SHA-512":
        return SASLScram512(user, password, ssl_context=ssl_context)
    if ssl_context is not None:
        return BaseSecurity(ssl_context=ssl_context)
    return None


def make_broker(
    settings: KafkaSettings, telemetry: Telemetry | None = None, *, client_id: str | None = None
) -> KafkaBroker:
    """A broker whose producer waits for every in-sync replica (``acks=all``)."""
    middlewares: list[Any] = []
    if telemetry is not None:
        middlewares.append(
            KafkaTelemetryMiddleware(
                tracer_provider=telemetry.tracer_provider,
                meter_provider=telemetry.meter_provider,
            )
        )
    broker = KafkaBroker(
        settings.bootstrap_servers,
        client_id=client_id or settings.client_id,
        acks="all",
        enable_idempotence=True,
        max_request_size=settings.max_request_size,
        security=_security(settings),
        # Topics are created by ensure_topics (or, with Kafka ACLs, by the administrator):
        # FastStream's own attempt at start-up would be refused by the broker.
        allow_auto_create_topics=False,
        middlewares=middlewares,
        graceful_timeout=30.0,
        logger=logging.getLogger(f"runstream.{client_id or settings.client_id}"),
    )
    # subscribe() records delivery metrics with the same provider as the middleware.
    broker._runstream_meter_provider = telemetry.meter_provider if telemetry else None  # type: ignore[attr-defined]
    broker._runstream_limits = _Limits(settings.max_message_bytes, settings.max_request_size)  # type: ignore[attr-defined]
    return broker


@dataclass(frozen=True, slots=True)
class _Limits:
    message_bytes: int
    request_bytes: int


def _limits(broker: KafkaBroker) -> _Limits:
    limits = getattr(broker, "_runstream_limits", None)
    return limits if isinstance(limits, _Limits) else _Limits(1_000_000, 1_048_576)


def _headers(record: ConsumerRecord[Any, Any]) -> tuple[tuple[str, bytes], ...]:
    return tuple(
        (k, v if isinstance(v, bytes) else str(v).encode()) for k, v in record.headers or ()
    )


def dead_letter_headers(
    record: ConsumerRecord[Any, Any],
    *,
    reason: str,
    error_class: str,
    group_id: str,
    attempts: int,
) -> dict[str, str]:
    """The headers of ``record``'s dead letter: its own (minus old ``x-dlq-*``) plus why."""
    headers = {
        k: v.decode(errors="replace") for k, v in _headers(record) if not k.startswith("x-dlq-")
    }
    headers.update(
        {
            DLQ_REASON: reason[:DLQ_REASON_MAX_CHARS] or error_class,
            DLQ_ERROR_CLASS: error_class,
            DLQ_SOURCE_TOPIC: record.topic,
            DLQ_SOURCE_PARTITION: str(record.partition),
            DLQ_SOURCE_OFFSET: str(record.offset),
            DLQ_GROUP: group_id,
            DLQ_ATTEMPTS: str(attempts),
            DLQ_TIME: str(time.time()),
        }
    )
    return headers


SMALL_DEAD_LETTER_BYTES = 16_384
"""A dead letter the broker refused for its size is sent again cut to this."""


async def dead_letter(
    broker: KafkaBroker,
    record: ConsumerRecord[Any, Any],
    *,
    group_id: str,
    error: BaseException,
    attempts: int,
) -> None:
    """Publish the original bytes, headers and key of ``record`` to ``<topic>.dlq`` with the reason.

    Raises if the broker did not take it (the caller must not commit the record then).
    """
    headers = dead_letter_headers(
        record,
        reason=str(error),
        error_class=type(error).__name__,
        group_id=group_id,
        attempts=attempts,
    )
    value = record.value if record.value is not None else b""
    limit = _limits(broker).request_bytes
    try:
        await _publish_dead_letter(broker, record, value, headers, limit)
    except (MessageSizeTooLargeError, RecordTooLargeError) as exc:
        # the topic (or broker) takes less than our producer may send: cut it further
        log.warning("dead letter refused for its size (%s); sending it cut short", exc)
        await _publish_dead_letter(broker, record, value, headers, SMALL_DEAD_LETTER_BYTES)
    log.warning(
        "dead-lettered %s[%d]@%d: %s: %s",
        record.topic,
        record.partition,
        record.offset,
        type(error).__name__,
        error,
    )


async def _publish_dead_letter(
    broker: KafkaBroker,
    record: ConsumerRecord[Any, Any],
    value: bytes,
    headers: dict[str, str],
    limit: int,
) -> None:
    key = record.key if isinstance(record.key, bytes) or record.key is None else None
    fitted, fitted_headers = fit_dead_letter(
        key, value, [(k, v.encode()) for k, v in headers.items()], limit
    )
    if len(fitted) < len(value):
        log.warning(
            "dead letter of %s[%d]@%d cut from %d to %d bytes to fit %d",
            record.topic,
            record.partition,
            record.offset,
            len(value),
            len(fitted),
            limit,
        )
    await broker.publish(
        fitted,
        topic=dlq(record.topic),
        key=record.key,
        headers={k: v.decode(errors="replace") for k, v in fitted_headers},
    )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    transient_window_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> RetryPolicy:
        return cls(settings.max_attempts, settings.retry_backoff_s, settings.retry_backoff_max_s)

    def delay(self, attempt: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)))


async def settle(
    broker: KafkaBroker,
    record: ConsumerRecord[Any, Any],
    *,
    parser: Parser[T],
    handler: Handler[T],
    group_id: str,
    retry: RetryPolicy,
    metrics: DeliveryMetrics | None = None,
) -> bool:
    """Take one record to a decision (see the module docstring). Never raises.

    True: the record is finished (handled, or dead-lettered) and may be committed.
    False: a transient failure outlasted the retry window, or the record's dead letter
    could not be published; the record must come again.
    """
    started = time.monotonic()
    labels = {"topic": record.topic, "group": group_id}
    try:
        parsed = parser.parse(record.value)
    except MessageFormatError as exc:
        finished = await _dead_letter_with_retry(broker, record, group_id, exc, 0, retry)
        if finished and metrics is not None:
            metrics.dead_lettered.add(1, labels)
        return finished

    attempt = 0
    while True:
        attempt += 1
        try:
            await handler(parsed, _delivery(record, attempt))
        except Exception as exc:
            step, kind = _after_failure(exc, attempt, started, retry)
            if metrics is not None:
                metrics.failed.add(1, {**labels, "kind": kind})
            if step == "retry":
                await asyncio.sleep(retry.delay(attempt))
                continue
            if step == "come again":
                return False
            finished = await _dead_letter_with_retry(broker, record, group_id, exc, attempt, retry)
            _observe_end(metrics, labels, started, "dead_lettered" if finished else None)
            return finished
        _observe_end(metrics, labels, started, "processed")
        return True


def _delivery(record: ConsumerRecord[Any, Any], attempt: int) -> Delivery:
    return Delivery(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        timestamp_ms=record.timestamp,
        headers=_headers(record),
        attempt=attempt,
    )


_Step = Literal["retry", "come again", "dead letter"]


def _after_failure(
    exc: Exception, attempt: int, started: float, retry: RetryPolicy
) -> tuple[_Step, str]:
    """The error tree: what follows a handler's failure, and its metric label."""
    if isinstance(exc, TransientError):
        if time.monotonic() - started > retry.transient_window_s:
            log.warning("transient failure persists, record comes again later: %s", exc)
            return "come again", "transient"
        log.info("transient failure (attempt %d), retrying: %s", attempt, exc)
        return "retry", "transient"
    if isinstance(exc, PermanentError):
        return "dead letter", "permanent"
    if attempt >= retry.max_attempts:
        trace = "".join(traceback.format_exception(exc))
        log.error("giving up after %d attempts:\n%s", attempt, trace)
        return "dead letter", "unexpected"
    log.warning("unexpected failure (attempt %d), retrying: %r", attempt, exc)
    return "retry", "unexpected"


def _observe_end(
    metrics: DeliveryMetrics | None,
    labels: dict[str, str],
    started: float,
    counter: Literal["processed", "dead_lettered"] | None,
) -> None:
    """A record's handling ended (handled, or given up on): its count and its seconds."""
    if metrics is None:
        return
    if counter is not None:
        getattr(metrics, counter).add(1, labels)
    metrics.handler_seconds.record(time.monotonic() - started, labels)


async def _dead_letter_with_retry(
    broker: KafkaBroker,
    record: ConsumerRecord[Any, Any],
    group_id: str,
    error: BaseException,
    attempts: int,
    retry: RetryPolicy,
) -> bool:
    """Dead-letter the record. True once its dead letter is on the broker.

    A failed dead-letter publish is tried again with backoff; once the retry
    window is used up, False: the record must come again (seek back), never
    committed without its dead letter.
    """
    started = time.monotonic()
    tries = 0
    while True:
        tries += 1
        try:
            await dead_letter(broker, record, group_id=group_id, error=error, attempts=attempts)
        except Exception as exc:
            if time.monotonic() - started > retry.transient_window_s:
                log.error(
                    "dead letter of %s[%d]@%d still not published after %d tries (%r); "
                    "the record is not committed and comes again",
                    record.topic,
                    record.partition,
                    record.offset,
                    tries,
                    exc,
                )
                return False
            log.warning(
                "dead letter of %s[%d]@%d not published (try %d), retrying: %r",
                record.topic,
                record.partition,
                record.offset,
                tries,
                exc,
            )
            await asyncio.sleep(retry.delay(tries))
        else:
            return True


async def deliver(
    broker: KafkaBroker,
    message: Any,
    *,
    parser: Parser[T],
    handler: Handler[T],
    group_id: str,
    retry: RetryPolicy,
    metrics: DeliveryMetrics | None = None,
) -> None:
    """Decide the fate of one record and commit it, or seek back to it. Never raises."""
    record: ConsumerRecord[Any, Any] = message.raw_message
    if metrics is not None:
        observe_lag(metrics, message, record, {"topic": record.topic, "group": group_id})
    finished = await settle(
        broker,
        record,
        parser=parser,
        handler=handler,
        group_id=group_id,
        retry=retry,
        metrics=metrics,
    )
    if finished:
        await message.ack()
    else:
        await message.nack()


def observe_lag(
    metrics: DeliveryMetrics, message: Any, record: ConsumerRecord[Any, Any], labels: dict[str, str]
) -> None:
    consumer = getattr(message, "consumer", None)
    highwater = getattr(consumer, "highwater", None)
    if highwater is None:
        return
    try:
        high = highwater(AioTopicPartition(record.topic, record.partition))
    except Exception:  # a fake consumer (tests) or a revoked partition
        return
    if isinstance(high, int):
        metrics.lag.set(
            max(0, high - record.offset - 1), {**labels, "partition": str(record.partition)}
        )


def subscribe(
    broker: KafkaBroker,
    topic: str,
    *,
    group_id: str | None,
    parser: Parser[T],
    handler: Handler[T],
    settings: ServiceSettings,
    retry: RetryPolicy | None = None,
    auto_offset_reset: Literal["earliest", "latest"] = "earliest",
    isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed",
    partitions: int | None = None,
    title: str | None = None,
    description: str | None = None,
    meter_provider: MeterProvider | None = None,
    max_poll_interval_ms: int | None = None,
) -> Any:
    """Register ``handler`` for ``topic`` with at-least-once delivery and a DLQ.

    ``group_id=None``: every partition, read from ``auto_offset_reset`` at each start,
    nothing committed (a table every instance needs whole, such as a compacted topic).

    Returns the FastStream subscriber (useful for tests and AsyncAPI docs).
    """
    policy = retry or RetryPolicy.from_settings(settings)
    metrics = DeliveryMetrics.create(
        meter_provider or getattr(broker, "_runstream_meter_provider", None)
    )
    subscriber = broker.subscriber(
        topic,
        group_id=group_id,
        # without a group there is nothing to commit: acks are no-ops
        ack_policy=AckPolicy.MANUAL if group_id else AckPolicy.ACK_FIRST,
        auto_offset_reset=auto_offset_reset,
        isolation_level=isolation_level,
        session_timeout_ms=settings.kafka.session_timeout_ms,
        heartbeat_interval_ms=settings.kafka.heartbeat_interval_ms,
        title=title,
        description=description or (handler.__doc__ or None),
        **poll_options(max_poll_interval_ms),
    )

    async def consume(message: KafkaMessage) -> None:
        await deliver(broker, message, parser=parser, handler=handler,
                      group_id=group_id or "(no group)", retry=policy, metrics=metrics)  # fmt: skip

    attach(subscriber, parser, handler, consume)
    name = f"{topic} ({group_id or 'no group'})"
    # aiokafka leaves the group after this long without a poll: stuck
    stuck_after_s = (max_poll_interval_ms or 300_000) / 1000
    watch_consumer(broker, subscriber, name, stuck_after_s, grouped=group_id is not None)
    return subscriber


def poll_options(max_poll_interval_ms: int | None) -> dict[str, Any]:
    """The subscriber's poll interval, if set.

    A handler may run longer than aiokafka's default 5 min between polls (e.g. a
    long evaluation); without a longer interval the member is evicted and the
    record redelivered.
    """
    if max_poll_interval_ms is None:
        return {}
    return {"max_poll_interval_ms": max_poll_interval_ms}


def attach(
    subscriber: Any,
    parser: Parser[Any],
    handler: Handler[Any],
    consume: Callable[[KafkaMessage], Awaitable[None]],
) -> None:
    """Register ``consume`` (named after the handler) and document the topic's messages."""
    consume.__name__ = getattr(handler, "__name__", "consume")
    subscriber(consume)
    _document_payload(subscriber, parser)


def watch_consumer(
    broker: KafkaBroker, subscriber: Any, name: str, stuck_after_s: float, *, grouped: bool = True
) -> None:
    """Have the broker's health check look at the subscriber's consumer."""
    health_of(broker).watch(
        ConsumerProbe(
            name=name,
            consumer=lambda: subscriber.consumer,
            stuck_after_s=stuck_after_s,
            grouped=grouped,
        )
    )


def document_publication(
    broker: KafkaBroker, topic: str, parser: Parser[Any], description: str | None = None
) -> None:
    """Declare that this service publishes ``parser``'s messages on ``topic``.

    Publishing goes through :func:`publish`; the declaration only puts the topic and
    its message models into the service's AsyncAPI document.
    """
    broker.publisher(
        topic,
        title=f"{topic}:Publisher",
        description=description,
        schema=parser.schema,
    )


def _document_payload(subscriber: Any, parser: Parser[Any]) -> None:
    """Show the topic's message models in the AsyncAPI document.

    The handler takes the raw record (so that bad payloads reach the dead-letter
    topic instead of failing in FastStream's decoder), which leaves FastStream
    nothing to document; the topic's parser knows the real schema.
    """
    spec = subscriber.specification
    schema = parser.json_schema()
    name = parser.schema_name
    base = type(spec)
    documented = type(
        base.__name__,
        (base,),
        {"__slots__": (), "get_payloads": lambda self: [(schema, name)]},
    )
    spec.__class__ = documented


async def publish(
    broker: KafkaBroker,
    topic: str,
    message: Any,
    *,
    key: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    """Publish one message model as JSON and wait until the broker has it (acks=all).

    A message longer than ``KafkaSettings.max_message_bytes`` is refused with
    :class:`~runstream_common.errors.MessageTooLarge` (a permanent error) before
    it is sent.
    """
    correlation_id = getattr(message, "correlation_id", None)
    data = message.model_dump_json().encode()
    check_size(
        f"{getattr(message, 'type', type(message).__name__)} message for {topic}",
        data,
        _limits(broker).message_bytes,
    )
    await broker.publish(
        data,
        topic=topic,
        key=key,
        headers={"content-type": "application/json", **(headers or {})},
        correlation_id=correlation_id,
    )


__all__ = [
    "Delivery",
    "Handler",
    "RetryPolicy",
    "TopicPartition",
    "dead_letter",
    "dead_letter_headers",
    "deliver",
    "document_publication",
    "make_broker",
    "observe_lag",
    "publish",
    "settle",
    "subscribe",
]
