"""The transactional consume-transform-produce loop: exactly one run message per input.

One aiokafka consumer (group ``settings.group_id``, ``read_committed``, no
auto-commit) reads the facility topics, the reprocess topic and ingest's retry
topic. Each polled batch is decided by the pure handlers (in a worker thread,
they touch the file system) and carried out in **one Kafka transaction**: run
messages, run-catalog entries, dead letters, waiting states, retry records *and*
the consumer offsets of the batch. Either all of it becomes visible to
``read_committed`` readers or none of it does, so a crash at any point makes the
restarted loop redo exactly the batches whose transaction did not commit, with
de-duplication state (the catalog) that matches what was committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import ProducerFenced
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import SpanKind, Tracer
from runstream_common import parsers
from runstream_common.errors import MessageFormatError
from runstream_common.kafka import dead_letter_headers as common_dead_letter_headers
from runstream_common.messages import RunRequested, Trigger
from runstream_common.topics import dlq, run_key

from ..effects import DeadLetter, Effect, EmitRun, Ignore, Outcome, Wait, outcome_of
from ..handlers import Disk, handle_facility, handle_reprocess, handle_watched
from ..retry import RetryInfo, parse_retry_headers, retry_headers
from ..settings import Settings
from ..tables import CatalogTxn, ProposalTable, RawInFlight, RunCatalog

log = logging.getLogger("runstream.ingest.loop")

JSON = [("content-type", b"application/json")]
WRITER_HEADER = "x-ingest-writer"
"""On catalog records: the transactional id that wrote them (its own catalog already has them)."""


@dataclass(frozen=True, slots=True)
class Watched:
    """A complete new run folder the watcher found."""

    proposal: int
    run: int
    path: Path


@dataclass(frozen=True, slots=True)
class Out:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class BatchTiming:
    """One transaction: inputs decided, seconds deciding, seconds in the Kafka transaction."""

    inputs: int
    plan_s: float
    txn_s: float
    wait_s: float  # age of the batch's oldest record when the poll returned


@dataclass
class Plan:
    """What one transaction writes, and what the consumer does afterwards."""

    records: list[Out] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    pauses: dict[TopicPartition, tuple[int, float]] = field(default_factory=dict)
    raw_sent: list[tuple[int, int]] = field(default_factory=list)
    outcomes: list[tuple[str, Outcome]] = field(default_factory=list)


def dead_letter_headers(
    record: ConsumerRecord[Any, Any], reason: str, error_class: str, group_id: str
) -> list[tuple[str, bytes]]:
    """The original headers plus the same ``x-dlq-*`` headers every runstream consumer writes."""
    headers = common_dead_letter_headers(
        record, reason=reason, error_class=error_class, group_id=group_id, attempts=0
    )
    return [(k, v.encode()) for k, v in headers.items()]


class IngestLoop:
    """Owns the transactional producer and the group consumer."""

    def __init__(
        self,
        settings: Settings,
        proposals: ProposalTable,
        catalog: RunCatalog,
        disk: Disk,
        *,
        on_outcome: Callable[[str, Outcome], None] | None = None,
        tracer: Tracer | None = None,
        raw_in_flight: RawInFlight | None = None,
    ) -> None:
        self.settings = settings
        self.proposals = proposals
        self.catalog = catalog
        self.disk = disk
        self.topics = settings.kafka.topics
        self.retry_topic = settings.retry_topic()
        self.facility_topics = frozenset(settings.facility_topics)
        self.watched: asyncio.Queue[Watched] = asyncio.Queue()
        self.stats: Counter[str] = Counter()
        self.timings: deque[BatchTiming] = deque(maxlen=10_000)
        self._window: list[BatchTiming] = []
        self._window_start = time.monotonic()
        self._on_outcome = on_outcome
        self._paused: dict[TopicPartition, float] = {}
        self._stopping = False
        self._tracer = tracer
        self.raw_in_flight = raw_in_flight if raw_in_flight is not None else RawInFlight()
        kafka = settings.kafka
        self.producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.client_id}-ingest",
            transactional_id=settings.transactional_id,
            enable_idempotence=True,
            acks="all",
            max_request_size=kafka.max_request_size,
            linger_ms=0,
            # The broker answers CONCURRENT_TRANSACTIONS while it finishes the previous
            # commit; aiokafka's default 100 ms back-off would then dominate latency.
            retry_backoff_ms=settings.producer_retry_backoff_ms,
            transaction_timeout_ms=settings.transaction_timeout_ms,
            **kafka.security_kwargs(),
        )
        self.consumer = AIOKafkaConsumer(
            *sorted(self.facility_topics | {self.topics.reprocess, self.retry_topic}),
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.client_id}-ingest",
            group_id=settings.group_id,
            group_instance_id=settings.group_instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=kafka.heartbeat_interval_ms,
            max_poll_records=settings.batch_max_records,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            **kafka.security_kwargs(),
        )

    async def start_producer(self) -> None:
        """Fences a previous process with the same transactional id and aborts its open transaction.

        Call this before reading the catalog: until that transaction is aborted,
        ``read_committed`` readers cannot get past it.
        """
        await self.producer.start()

    async def start_consumer(self) -> None:
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.producer.stop()

    def request_stop(self) -> None:
        """Finish the current batch, then return from :meth:`run`."""
        self._stopping = True

    async def run(self) -> None:
        """Process batches until stopped. Errors other than Kafka's retriable ones propagate."""
        backoff = self.settings.retry_backoff_s
        while not self._stopping:
            try:
                await self.step()
                backoff = self.settings.retry_backoff_s
            except asyncio.CancelledError:
                raise
            except _Retriable as exc:
                log.warning(
                    "batch failed and was rolled back, retrying in %.1f s: %s",
                    backoff,
                    exc.__cause__,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.retry_backoff_max_s)

    async def step(self) -> int:
        """One poll -> one transaction. Returns the number of inputs decided."""
        self._resume_due()
        batch = await self.consumer.getmany(
            timeout_ms=self.settings.poll_timeout_ms, max_records=self.settings.batch_max_records
        )
        watched: list[Watched] = []
        while not self.watched.empty() and len(watched) < self.settings.batch_max_records:
            watched.append(self.watched.get_nowait())
        if not batch and not watched:
            return 0
        txn = self.catalog.begin()
        t_polled = time.perf_counter()
        stamps = [r.timestamp for records in batch.values() for r in records]
        wait_s = max(0.0, time.time() - min(stamps) / 1000) if stamps else 0.0
        try:
            plan = await asyncio.to_thread(self._plan, batch, watched, txn, time.time())
        except OSError as exc:  # the file system hiccuped: decide the batch again later
            await self._roll_back(batch, watched)
            raise _Retriable() from exc
        t_planned = time.perf_counter()
        try:
            await self._transact(plan)
        except (ProducerFenced, _AbortFailed):
            raise  # another process owns our transactional id, or the producer is broken
        except Exception as exc:
            await self._roll_back(batch, watched)
            raise _Retriable() from exc
        self.catalog.commit(txn)
        for proposal, run in plan.raw_sent:
            self.raw_in_flight.add(proposal, run)
        timing = BatchTiming(
            len(plan.outcomes), t_planned - t_polled, time.perf_counter() - t_planned, wait_s
        )
        self.timings.append(timing)
        self._window.append(timing)
        if time.monotonic() - self._window_start >= self.settings.stats_interval_s:
            self._report_window()
        for tp, (offset, not_before) in plan.pauses.items():
            self.consumer.seek(tp, offset)
            self.consumer.pause(tp)
            self._paused[tp] = not_before
        for topic, outcome in plan.outcomes:
            self.stats[outcome.value] += 1
            if self._on_outcome is not None:
                self._on_outcome(topic, outcome)
        return len(plan.outcomes)

    def _report_window(self) -> None:
        window, self._window = self._window, []
        seconds = time.monotonic() - self._window_start
        self._window_start = time.monotonic()

        def p(values: list[float], q: float) -> float:
            ordered = sorted(values)
            return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        waits = [t.wait_s for t in window]
        txns = [t.txn_s for t in window]
        plans = [t.plan_s for t in window]
        log.info(
            "last %.0f s: %d inputs in %d transactions; ms p50/p99: waited %.1f/%.1f, "
            "decided %.1f/%.1f, transaction %.1f/%.1f; totals %s",
            seconds,
            sum(t.inputs for t in window),
            len(window),
            p(waits, 0.5),
            p(waits, 0.99),
            p(plans, 0.5),
            p(plans, 0.99),
            p(txns, 0.5),
            p(txns, 0.99),
            dict(self.stats),
        )

    async def _transact(self, plan: Plan) -> None:
        if not plan.records and not plan.offsets:
            return
        await self.producer.begin_transaction()
        try:
            futures = [
                await self.producer.send(r.topic, r.value, key=r.key, headers=r.headers)
                for r in plan.records
            ]
            await asyncio.gather(*futures)
            if plan.offsets:
                await self.producer.send_offsets_to_transaction(
                    plan.offsets, self.settings.group_id
                )
            await self.producer.commit_transaction()
        except BaseException:  # also on cancellation: never leave a transaction open
            try:
                await asyncio.shield(self.producer.abort_transaction())
            except Exception as abort_exc:
                raise _AbortFailed(str(abort_exc)) from abort_exc
            raise

    async def _roll_back(
        self, batch: dict[TopicPartition, list[Any]], watched: list[Watched]
    ) -> None:
        for tp, records in batch.items():
            if records:
                self.consumer.seek(tp, records[0].offset)
        for item in watched:
            self.watched.put_nowait(item)

    def _resume_due(self) -> None:
        if not self._paused:
            return
        now = time.time()
        assigned = self.consumer.assignment()
        for tp, not_before in list(self._paused.items()):
            if tp not in assigned:
                del self._paused[tp]
            elif not_before <= now:
                self.consumer.resume(tp)
                del self._paused[tp]

    # -- deciding (worker thread) ------------------------------------------------------------

    def _plan(
        self,
        batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]],
        watched: list[Watched],
        txn: CatalogTxn,
        now: float,
    ) -> Plan:
        plan = Plan()
        kw: dict[str, Any] = {
            "settings": self.settings,
            "proposals": self.proposals,
            "catalog": txn,
            "disk": self.disk,
        }
        facility_kw = {**kw, "raw_in_flight": self.raw_in_flight}
        for tp, records in batch.items():
            for record in records:
                source = record.topic
                try:
                    if record.topic == self.retry_topic:
                        info = parse_retry_headers(record.headers or ())
                        if info.not_before > now:
                            plan.pauses[tp] = (record.offset, info.not_before)
                            break
                        source = info.source_topic or record.topic
                        effects = handle_facility(
                            record.value, now=now, attempt=info.attempt, **facility_kw
                        )
                    elif record.topic == self.topics.reprocess:
                        effects = self._reprocess(record, kw)
                    else:
                        effects = handle_facility(record.value, now=now, **facility_kw)
                except OSError:
                    raise  # transient: the whole batch is decided again
                except Exception as exc:  # a bug must not stop the service: park the record
                    log.exception(
                        "deciding %s[%d]@%d failed", record.topic, record.partition, record.offset
                    )
                    effects = [DeadLetter(f"{type(exc).__name__}: {exc}", type(exc).__name__)]
                for effect in effects:
                    self._carry_out(effect, record, source, plan)
                plan.offsets[tp] = record.offset + 1
        for item in watched:
            for effect in handle_watched(item.proposal, item.run, item.path, **kw):
                self._carry_out(effect, None, "watcher", plan)
        return plan

    def _trace_headers(
        self, msg: RunRequested, record: ConsumerRecord[Any, Any] | None, source: str
    ) -> list[tuple[str, bytes]]:
        """A producer span per run message, continuing the input's trace if it carried one."""
        if self._tracer is None:
            return []
        parent = None
        if record is not None and record.headers:
            parent = extract({k: v.decode(errors="replace") for k, v in record.headers})
        with self._tracer.start_as_current_span(
            f"{self.topics.runs} publish",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": self.topics.runs,
                "messaging.source.name": source,
                "runstream.proposal": msg.proposal,
                "runstream.run": msg.run,
                "runstream.trigger": msg.trigger.value,
                "runstream.request_id": msg.request_id,
                "runstream.reason": msg.reason,
            },
        ):
            carrier: dict[str, str] = {}
            inject(carrier)
        return [(k, v.encode()) for k, v in carrier.items()]

    def _reprocess(self, record: ConsumerRecord[Any, Any], kw: dict[str, Any]) -> list[Effect]:
        try:
            request = parsers.REPROCESS.parse(record.value)
        except MessageFormatError as exc:
            return [DeadLetter(str(exc), type(exc).__name__)]
        return handle_reprocess(request, **kw)

    def _carry_out(
        self, effect: Effect, record: ConsumerRecord[Any, Any] | None, source: str, plan: Plan
    ) -> None:
        plan.outcomes.append((source, outcome_of(effect)))
        if isinstance(effect, EmitRun):
            msg = effect.run
            key = run_key(msg.proposal, msg.run)
            headers = JSON + self._trace_headers(msg, record, source)
            if msg.trigger is Trigger.RAW and msg.reason != "reprocess":
                plan.raw_sent.append((msg.proposal, msg.run))
            plan.records.append(Out(self.topics.runs, key, parsers.encode(msg), headers))
            if effect.catalog is not None:
                plan.records.append(
                    Out(
                        self.topics.run_catalog,
                        key,
                        parsers.encode(effect.catalog),
                        [*JSON, (WRITER_HEADER, self.settings.transactional_id.encode())],
                    )
                )
            if effect.note:
                log.warning("p%d r%d %s: %s", msg.proposal, msg.run, msg.trigger, effect.note)
        elif isinstance(effect, DeadLetter):
            assert record is not None
            plan.records.append(
                Out(
                    dlq(record.topic),
                    record.key,
                    record.value if record.value is not None else b"",
                    dead_letter_headers(
                        record, effect.reason, effect.error_class, self.settings.group_id
                    ),
                )
            )
            log.warning(
                "dead-lettered %s[%d]@%d: %s",
                record.topic,
                record.partition,
                record.offset,
                effect.reason,
            )
        elif isinstance(effect, Wait):
            assert record is not None
            state = effect.state
            key = run_key(state.proposal, state.run)
            plan.records.append(Out(self.topics.processing, key, parsers.encode(state), JSON))
            info = RetryInfo(effect.attempt, effect.not_before, source)
            plan.records.append(
                Out(self.retry_topic, key, record.value or b"", retry_headers(info))
            )
            log.info("p%d r%d proc waits: %s", state.proposal, state.run, state.reason)
        elif isinstance(effect, Ignore):
            level = logging.DEBUG if effect.outcome is Outcome.DUPLICATE else logging.INFO
            log.log(level, "ignored (%s): %s", effect.outcome.value, effect.detail)


class _Retriable(Exception):
    """The batch's transaction was aborted and the consumer rewound; try again."""


class _AbortFailed(Exception):
    """The transaction could not be aborted: the producer cannot go on."""
