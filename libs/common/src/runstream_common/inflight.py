"""Several records of one topic in flight, committed by a per-partition watermark.

:func:`runstream_common.kafka.subscribe` handles one record at a time, so a
commit after a record covers exactly the records whose handlers returned. A
service whose records take long and wait a lot (the executor: file reads,
worker round trips, the broker's acks) uses :func:`subscribe_in_flight`
instead: the FastStream subscriber hands each record to :class:`InFlight`,
which runs up to ``limit`` handlers at once and decides each record exactly
as :func:`~runstream_common.kafka.settle` does (dead letters, retries), with
these guarantees:

- **Watermark commits.** A partition's offset is committed only up to its
  oldest record that is not finished, so a crash at any moment replays every
  record whose effects may not be durable and none before it. A slow record
  holds back only its own partition.
- **Per-key order.** Records with the same key (one run) never overtake each
  other: a record starts only when the previous record with its key finished.
- **Bounded.** At most ``limit`` records are taken from Kafka and not finished:
  the partitions are paused while the limit is reached. The subscriber never
  blocks, so the consumer keeps polling (and stays in its group) however long
  the records in flight take.
- **Rebalances.** When partitions are revoked, records of theirs that have not
  started are dropped (they come again to the new owner), the running ones are
  awaited, and the watermark is committed before the partitions go.
- **Transient failures** are retried with backoff for as long as they last;
  the record stays in flight and holds its partition's watermark (seeking back
  would replay later records that are already done).

:meth:`InFlight.drain` (the app's shutdown hook) stops taking records, waits
for the running ones (up to a timeout) and commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aiokafka import ConsumerRebalanceListener, ConsumerRecord
from aiokafka import TopicPartition as TP
from aiokafka.errors import KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .kafka import (
    Handler,
    RetryPolicy,
    _dead_letter_with_retry,
    attach,
    observe_lag,
    poll_options,
    settle,
    watch_consumer,
)
from .metrics import DeliveryMetrics
from .parsers import Parser
from .poison import CrashLedger, PoisonRecord, retry_kafka
from .settings import ServiceSettings

log = logging.getLogger("runstream.kafka.inflight")

IN_FLIGHT_STUCK_AFTER_S = 300.0
"""An in-flight consumer that has not polled this long is stuck (its liveness fails)."""

T = TypeVar("T")
OnPoison = Callable[[Any, str], Awaitable[None]]
RETRY_LATER_S = 30.0  # pause between rounds of a transient failure that outlasted the window


@dataclass
class Watermark:
    """The offsets of one partition that were taken and are not finished yet."""

    pending: set[int] = field(default_factory=set)
    taken: int = -1  # one past the highest offset taken
    committed: int = -1  # the last position committed

    def take(self, offset: int) -> None:
        if self.taken < 0:
            self.committed = offset  # where this consumer started: nothing before it is ours
        self.pending.add(offset)
        self.taken = max(self.taken, offset + 1)

    def finish(self, offset: int) -> None:
        self.pending.discard(offset)

    @property
    def position(self) -> int:
        """What may be committed: every record before it is finished."""
        return min(self.pending) if self.pending else self.taken


@dataclass(eq=False)
class _Entry:
    record: ConsumerRecord[Any, Any]
    tp: TP
    key: tuple[TP, bytes | None]
    started: bool = False


class InFlight:
    """Runs a topic's records concurrently; see the module docstring."""

    def __init__(
        self,
        broker: KafkaBroker,
        *,
        group_id: str,
        parser: Parser[T],
        handler: Handler[T],
        retry: RetryPolicy,
        limit: int,
        metrics: DeliveryMetrics | None = None,
        drain_timeout_s: float = 30.0,
        tracer: trace.Tracer | None = None,
        ledger: CrashLedger | None = None,
        on_poison: OnPoison | None = None,
        service: str = "consumer",
    ) -> None:
        self.broker = broker
        self.group_id = group_id
        self.parser: Parser[Any] = parser
        self.handler: Handler[Any] = handler
        self.retry = retry
        self.limit = max(1, limit)
        self.metrics = metrics
        self.drain_timeout_s = drain_timeout_s
        self.tracer = tracer
        self.consumer: Any = None
        self.marks: dict[TP, Watermark] = {}
        self._entries: dict[asyncio.Task[None], _Entry] = {}
        self._last: dict[tuple[TP, bytes | None], asyncio.Task[None]] = {}
        self._commit_needed = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._committer: asyncio.Task[None] | None = None
        self._draining = False
        self._paused = False  # the partitions are paused because the limit is reached
        self.ledger = ledger
        self.on_poison = on_poison
        self.service = service
        self._gate = asyncio.Condition()
        self._active = 0  # records past the gate (being handled)
        self._solo = False  # a suspect is being handled alone
        self._solo_waiting = 0
        self.ledger_ready = asyncio.Event()  # the ledger was read since the last assignment

    @property
    def in_flight(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------ taking records

    async def dispatch(self, message: KafkaMessage) -> None:
        """The subscriber's handler: start the record and return at once (see :meth:`throttle`)."""
        record: ConsumerRecord[Any, Any] = message.raw_message
        self.consumer = message.consumer
        if self.metrics is not None:
            observe_lag(
                self.metrics, message, record, {"topic": record.topic, "group": self.group_id}
            )
        tp = TP(record.topic, record.partition)
        if self._draining or tp not in self._assigned({tp}):
            return  # not taken (stopping, or revoked meanwhile): never committed, it comes again
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_loop())
        self.marks.setdefault(tp, Watermark()).take(record.offset)
        entry = _Entry(record, tp, (tp, record.key))
        before = self._last.get(entry.key)
        task = asyncio.create_task(self._run(entry, before))
        self._entries[task] = entry
        self._last[entry.key] = task
        task.add_done_callback(self._finished)
        self.throttle()

    def throttle(self) -> None:
        """Pause the partitions while ``limit`` records are in flight, resume below it.

        The subscriber never waits here: it goes back to polling (which, paused, returns
        nothing), so a consumer whose runs all take long stays in its group however long
        they take (aiokafka leaves the group after ``max_poll_interval_ms`` without a poll).
        """
        if self.consumer is None or self._draining:
            return
        full = len(self._entries) >= self.limit
        if full == self._paused:
            return
        partitions = self._assigned(set(self.marks))
        with contextlib.suppress(Exception):  # e.g. partitions revoked meanwhile
            if full:
                self.consumer.pause(*partitions)
            else:
                self.consumer.resume(*partitions)
            self._paused = full

    async def _run(self, entry: _Entry, before: asyncio.Task[None] | None) -> None:
        if before is not None:
            await asyncio.wait([before])  # the same run's previous record first
        record = entry.record
        if self.ledger is not None:
            await self.ledger_ready.wait()  # what a process that died left behind is known
        suspect = self.ledger is not None and self.ledger.crashes(record) > 0
        await self._enter(suspect)
        entry.started = True
        try:
            with self._span(record):
                if self.ledger is None:
                    await self._settle(record)
                else:
                    await self._settle_counted(record, self.ledger)
        finally:
            await self._leave(suspect)

    async def _settle(self, record: ConsumerRecord[Any, Any]) -> None:
        for _ in itertools.count():
            finished = await settle(
                self.broker,
                record,
                parser=self.parser,
                handler=self.handler,
                group_id=self.group_id,
                retry=self.retry,
                metrics=self.metrics,
            )
            if finished:
                return
            await asyncio.sleep(RETRY_LATER_S)  # the record holds its partition meanwhile

    async def _settle_counted(self, record: ConsumerRecord[Any, Any], ledger: CrashLedger) -> None:
        """:meth:`_settle`, with the attempt counted durably before it starts."""
        before: int = await retry_kafka(lambda: ledger.begin(record))
        try:
            if before >= ledger.max_crashes:
                await self._poisoned(record, ledger.reason(record, before, self.service))
            else:
                await self._settle(record)
        except asyncio.CancelledError:  # drain or rebalance: not a crash, not a finished record
            await asyncio.shield(retry_kafka(lambda: ledger.undo(record, before), attempts=3))
            raise
        await retry_kafka(lambda: ledger.end(record))

    async def _poisoned(self, record: ConsumerRecord[Any, Any], reason: str) -> None:
        """Record the failure where users see it, then dead-letter the record."""
        log.error("poison record: %s", reason)
        if self.on_poison is not None:
            try:
                parsed = self.parser.parse(record.value)
            except Exception:
                parsed = None
            on_poison = self.on_poison
            await retry_kafka(lambda: on_poison(parsed, reason))
        error = PoisonRecord(reason)
        for _ in itertools.count():
            if await _dead_letter_with_retry(
                self.broker, record, self.group_id, error, 0, self.retry
            ):
                break
            await asyncio.sleep(RETRY_LATER_S)
        if self.metrics is not None:
            self.metrics.dead_lettered.add(1, {"topic": record.topic, "group": self.group_id})

    async def _enter(self, suspect: bool) -> None:
        """Wait for the gate: a suspect runs alone, and nothing starts while one waits or runs."""
        async with self._gate:
            if suspect:
                self._solo_waiting += 1
                try:
                    await self._gate.wait_for(lambda: not self._solo and self._active == 0)
                finally:
                    self._solo_waiting -= 1
                self._solo = True
            else:
                await self._gate.wait_for(lambda: not self._solo and not self._solo_waiting)
            self._active += 1

    async def _leave(self, suspect: bool) -> None:
        async with self._gate:
            self._active -= 1
            if suspect:
                self._solo = False
            self._gate.notify_all()

    def _finished(self, task: asyncio.Task[None]) -> None:
        entry = self._entries.pop(task)
        if self._last.get(entry.key) is task:
            del self._last[entry.key]
        if not task.cancelled() and task.exception() is None:
            mark = self.marks.get(entry.tp)
            if mark is not None:
                mark.finish(entry.record.offset)
                self._commit_needed.set()
        elif not task.cancelled():
            log.error("record %s[%d]@%d failed: %r", entry.tp.topic, entry.tp.partition,
                      entry.record.offset, task.exception())  # fmt: skip
        self.throttle()

    @contextlib.contextmanager
    def _span(self, record: ConsumerRecord[Any, Any]) -> Any:
        """A span for the whole handling (the subscriber's process span ends when it is taken)."""
        if self.tracer is None:
            yield
            return
        parent = otel_context.get_current()
        if not trace.get_current_span(parent).get_span_context().is_valid:
            # No process span around us (FastStream's telemetry middleware is not installed):
            # continue the producer's trace from the record's headers.
            carrier = {k: v.decode(errors="replace") for k, v in record.headers or () if v}
            parent = TraceContextTextMapPropagator().extract(carrier, parent)
        with self.tracer.start_as_current_span(
            f"{record.topic} handle",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": record.topic,
                "messaging.kafka.destination.partition": record.partition,
                "messaging.kafka.message.offset": record.offset,
                "messaging.kafka.message.key": (record.key or b"").decode(errors="replace"),
            },
        ):
            yield

    def _assigned(self, default: set[TP]) -> set[TP]:
        """The consumer's partitions (``default`` for a consumer that cannot tell, in tests)."""
        assignment = getattr(self.consumer, "assignment", None)
        return set(assignment()) if callable(assignment) else default

    # ------------------------------------------------------------ committing

    async def _commit_loop(self) -> None:
        while True:
            await self._commit_needed.wait()
            self._commit_needed.clear()
            await self.commit()

    async def commit(self, only: set[TP] | None = None) -> None:
        """Commit every partition's watermark that moved (``only``: these partitions)."""
        if self.consumer is None:
            return
        async with self._commit_lock:
            assigned = self._assigned(set(self.marks))
            offsets = {
                tp: mark.position
                for tp, mark in self.marks.items()
                if (only is None or tp in only)
                and tp in assigned
                and mark.position > mark.committed
            }
            if not offsets:
                return
            try:
                await self.consumer.commit(offsets)
            except (KafkaError, AssertionError) as exc:  # e.g. membership changed
                log.warning("could not commit %s: %r", offsets, exc)
                return
            for tp, position in offsets.items():
                if tp in self.marks:
                    self.marks[tp].committed = position

    # ------------------------------------------------------------ rebalances and stopping

    async def release(self, revoked: set[TP]) -> None:
        """Partitions are going: drop what has not started, finish what has, commit."""
        ours = {t: e for t, e in self._entries.items() if e.tp in revoked}
        running = [t for t, e in ours.items() if e.started]
        for task, entry in ours.items():
            if not entry.started:
                task.cancel()  # it has not begun: the new owner will do it
        if running:
            log.info("waiting for %d records of revoked partitions", len(running))
            await asyncio.wait(running)
        await self.commit(only=revoked)
        for tp in revoked:
            self.marks.pop(tp, None)

    async def drain(self) -> None:
        """Stop taking records, let the running ones finish (up to a timeout), commit."""
        self._draining = True
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                self.consumer.pause(*self._assigned(set()))
        tasks = list(self._entries)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.drain_timeout_s)
            for task in late:
                task.cancel()  # not committed: it comes again after the restart
            if late:
                await asyncio.wait(late)
        await self.commit()
        if self._committer is not None:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, inflight: InFlight) -> None:
        self.inflight = inflight

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self.inflight.ledger_ready.clear()
        await self.inflight.release(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TP]) -> None:
        self.inflight._paused = False  # a new assignment starts unpaused
        self.inflight.throttle()
        ledger = self.inflight.ledger
        if ledger is not None and assigned:
            # What a process that died left behind (ours before a restart, or another
            # instance's whose partitions we take over).
            self.inflight.ledger_ready.clear()
            await retry_kafka(ledger.load)
        self.inflight.ledger_ready.set()


def _consumer_options(
    settings: ServiceSettings,
    auto_offset_reset: Literal["earliest", "latest"],
    max_poll_interval_ms: int | None,
) -> dict[str, Any]:
    return {
        "auto_offset_reset": auto_offset_reset,
        "isolation_level": "read_committed",
        "session_timeout_ms": settings.kafka.session_timeout_ms,
        "heartbeat_interval_ms": settings.kafka.heartbeat_interval_ms,
        **poll_options(max_poll_interval_ms),
    }


def subscribe_in_flight(
    broker: KafkaBroker,
    topic: str,
    *,
    group_id: str,
    parser: Parser[T],
    handler: Handler[T],
    settings: ServiceSettings,
    limit: int,
    retry: RetryPolicy | None = None,
    auto_offset_reset: Literal["earliest", "latest"] = "earliest",
    max_poll_interval_ms: int | None = None,
    drain_timeout_s: float = 30.0,
    tracer_provider: Any = None,
    ledger: CrashLedger | None = None,
    on_poison: OnPoison | None = None,
    service: str = "consumer",
) -> InFlight:
    """Like :func:`~runstream_common.kafka.subscribe`, with up to ``limit`` records in flight.

    Call the returned object's :meth:`InFlight.drain` before the broker stops
    (FastStream: ``app.on_shutdown``). With a ``ledger`` (see
    :mod:`runstream_common.poison`), a record that was being handled every time
    the process died, ``ledger.max_crashes`` times, is dead-lettered; ``on_poison``
    (the parsed record or None, the reason) records that where users see it first.
    """
    inflight = InFlight(
        broker,
        group_id=group_id,
        parser=parser,
        handler=handler,
        retry=retry or RetryPolicy.from_settings(settings),
        limit=limit,
        metrics=DeliveryMetrics.create(getattr(broker, "_runstream_meter_provider", None)),
        drain_timeout_s=drain_timeout_s,
        tracer=tracer_provider.get_tracer("runstream.inflight") if tracer_provider else None,
        ledger=ledger,
        on_poison=on_poison,
        service=service,
    )
    subscriber = broker.subscriber(
        topic,
        group_id=group_id,
        ack_policy=AckPolicy.MANUAL,  # never acked by FastStream: InFlight commits
        listener=_Listener(inflight),
        description=handler.__doc__ or None,
        **_consumer_options(settings, auto_offset_reset, max_poll_interval_ms),
    )

    async def consume(message: KafkaMessage) -> None:
        await inflight.dispatch(message)

    attach(subscriber, parser, handler, consume)
    # The subscriber never waits for runs (full: its partitions are paused), so it polls
    # all the time; a long max poll interval (a long pass deadline) must not make a
    # consumer that stopped polling look alive for hours.
    stuck_after_s = min((max_poll_interval_ms or 300_000) / 1000, IN_FLIGHT_STUCK_AFTER_S)
    watch_consumer(broker, subscriber, f"{topic} ({group_id}, in flight)", stuck_after_s)
    return inflight


__all__ = ["IN_FLIGHT_STUCK_AFTER_S", "InFlight", "Watermark", "subscribe_in_flight"]
