"""Transactional delivery: read, decide, write in one Kafka transaction (exactly once).

The second of the two delivery modes of this library. The first,
:func:`runstream_common.kafka.subscribe` (``deliver``/``settle``), is at-least-once:
one record at a time, the handler makes its effects durable itself and must be
idempotent, and the offset is committed after it returns. This mode is for a
consumer whose only effects are Kafka records (ingest: facility events in, run
messages out): a batch's outputs and its consumer offsets are written in **one
producer transaction**, so ``read_committed`` readers see all of a batch's
outputs or none, and a restart neither loses nor repeats one.

A service subclasses :class:`TransactionalLoop` and implements :meth:`decide`
(records in, a :class:`Decision` out: the records to write, the positions decided,
partitions to pause), and optionally :meth:`committed` / :meth:`rolled_back`. The
loop owns the rest:

- its Kafka clients, made by a :class:`TransactionalClients` port (aiokafka's,
  :class:`AIOKafkaClients`, unless a test passes in-memory ones);
- one group consumer (``read_committed``, no auto-commit) drained by a poller task
  into an :class:`~runstream_common.inbox.Inbox`, so fetching goes on while a
  transaction commits;
- two transactional producers that take turns (a transaction that starts right
  after the same producer's commit waits for the broker's commit markers);
- one transaction per batch: outputs, then the offsets, then commit; any failure
  aborts it, seeks every partition back to its first record not carried out and
  decides the batch again after a back-off;
- offsets: a *replay-safe* decision (deciding the same inputs again writes nothing
  new) may leave its offsets to a later transaction; any other decision carries the
  offsets of everything decided so far, and so does the first transaction after
  ``offsets_interval_s`` and the last one when stopping;
- pauses: a decision may ask to stop a partition at an offset until a time (records
  to look at again later), and the loop resumes it then.

The error tree at the edge, per record (:func:`failure_of`, :func:`dead_letter_output`):
a :class:`~runstream_common.errors.PermanentError` (a malformed message included)
becomes the record's dead letter *inside* the batch's transaction, with the same
``x-dlq-*`` headers as in the first mode; a
:class:`~runstream_common.errors.TransientError` rolls the batch back and decides it
again after a back-off, never dead-lettered; anything else (a bug) is logged and
dead-lettered at once — deciding is pure, so the same record would fail the same way
again. Only Kafka's own failures stop the loop: a fenced producer (another process
took the transactional id) or a transaction that could not even be aborted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import ProducerFenced

from .errors import PermanentError, TransientError
from .inbox import DropRevoked, Inbox, Records
from .kafka import dead_letter_headers
from .limits import fit_dead_letter
from .settings import KafkaSettings
from .topics import dlq

log = logging.getLogger("runstream.transactional")

Headers = list[tuple[str, bytes]]


class TransactionalSettings(Protocol):
    """What the loop reads from a service's settings (ingest's ``Settings`` has all of it)."""

    @property
    def kafka(self) -> KafkaSettings: ...
    @property
    def group_id(self) -> str: ...
    @property
    def group_instance_id(self) -> str | None: ...
    @property
    def transactional_id(self) -> str: ...
    @property
    def batch_max_records(self) -> int: ...
    @property
    def poll_timeout_ms(self) -> int: ...
    @property
    def fetch_max_wait_ms(self) -> int: ...
    @property
    def producer_retry_backoff_ms(self) -> int: ...
    @property
    def concurrent_transactions_backoff_ms(self) -> float: ...
    @property
    def transaction_timeout_ms(self) -> int: ...
    @property
    def offsets_interval_s(self) -> float: ...
    @property
    def retry_backoff_s(self) -> float: ...
    @property
    def retry_backoff_max_s(self) -> float: ...
    @property
    def stats_interval_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Output:
    """One record a transaction writes."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers


@dataclass
class Decision:
    """What one batch's transaction writes, and what the consumer does after it commits.

    ``positions``: per partition, the next offset to decide (everything before it is
    decided by this batch). ``pauses``: partitions to stop at an offset until a time
    (epoch s). ``replay_safe``: deciding the same inputs again after this commits writes
    nothing new, so its offsets may wait for a later transaction.
    """

    outputs: list[Output] = field(default_factory=list)
    positions: dict[TopicPartition, int] = field(default_factory=dict)
    pauses: dict[TopicPartition, tuple[int, float]] = field(default_factory=dict)
    replay_safe: bool = True

    def inputs(self) -> int:
        """How many inputs this decision covers (for the timings)."""
        return len(self.outputs)


D = TypeVar("D", bound=Decision)


@dataclass(frozen=True, slots=True)
class BatchTiming:
    """One batch: inputs decided, seconds deciding, seconds in its transaction, age when taken."""

    inputs: int
    plan_s: float
    txn_s: float
    wait_s: float  # age of the batch's oldest record when it was taken from the inbox
    offsets: bool  # the transaction carried consumer offsets


@dataclass
class _Batch(Generic[D]):
    """One decided batch on its way through its transaction (no decision: offsets only)."""

    records: Records
    decision: D | None
    wait_s: float = 0.0
    plan_s: float = 0.0
    offsets: dict[TopicPartition, int] = field(default_factory=dict)


def failure_of(exc: Exception, record: ConsumerRecord[Any, Any]) -> tuple[str, str]:
    """The error tree for a record whose deciding raised ``exc``: its dead letter's
    (reason, error class). A :class:`TransientError` is raised again (the batch is
    rolled back and decided again)."""
    if isinstance(exc, TransientError):
        raise exc
    if isinstance(exc, PermanentError):
        return str(exc), type(exc).__name__
    log.error(
        "deciding %s[%d]@%d failed", record.topic, record.partition, record.offset, exc_info=exc
    )
    return f"{type(exc).__name__}: {exc}", type(exc).__name__


def dead_letter_output(
    record: ConsumerRecord[Any, Any],
    *,
    reason: str,
    error_class: str,
    group_id: str,
    max_bytes: int,
) -> Output:
    """``record``'s dead letter as one output of a transaction.

    The original key and bytes with the ``x-dlq-*`` headers every runstream consumer
    writes, cut to fit ``max_bytes`` (the producer's request size: a transaction that
    cannot be sent would fail again and again).
    """
    headers = dead_letter_headers(
        record, reason=reason, error_class=error_class, group_id=group_id, attempts=0
    )
    value, fitted = fit_dead_letter(
        record.key,
        record.value if record.value is not None else b"",
        [(k, v.encode()) for k, v in headers.items()],
        max_bytes,
    )
    log.warning(
        "dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason
    )
    return Output(dlq(record.topic), record.key, value, fitted)


def set_concurrent_transactions_backoff(seconds: float) -> bool:
    """Shorten aiokafka's fixed wait after CONCURRENT_TRANSACTIONS (20 ms). True if it was set.

    A transaction that starts within a few milliseconds of the previous commit
    has its first AddPartitionsToTxn refused with CONCURRENT_TRANSACTIONS while
    the broker still writes the previous commit's markers (KAFKA-5477). aiokafka
    then sleeps ``aiokafka.producer.sender.BACKOFF_OVERRIDE`` seconds, a module
    constant with no client option; for a loop that commits back to back it was
    the largest term of the added latency (measured: 27 ms -> 6 ms per transaction
    at 1 ms). The constant is process-wide: run one transactional loop per process.
    """
    import aiokafka.producer.sender as sender

    if not isinstance(getattr(sender, "BACKOFF_OVERRIDE", None), float):
        log.warning("aiokafka has no BACKOFF_OVERRIDE any more; transactions keep its back-off")
        return False
    sender.BACKOFF_OVERRIDE = seconds
    return True


def transactional_ids(base: str) -> tuple[str, str]:
    """The loop's two producers, which take turns.

    A transaction that starts right after the same producer's commit is refused
    (CONCURRENT_TRANSACTIONS) until the broker has written that commit's markers;
    the other producer's transaction does not wait for them.
    """
    return base, f"{base}.2"


class TransactionalClients(Protocol):
    """Makes the loop's Kafka clients (a port: tests pass in-memory ones).

    Called inside the running event loop (aiokafka clients bind to it). The clients
    must behave like aiokafka's: the producers transactional, the consumer a group
    member that reads ``read_committed`` and never commits by itself.
    """

    def producers(self, settings: TransactionalSettings, client_id: str) -> list[AIOKafkaProducer]:
        """The loop's two producers, one per id of :func:`transactional_ids`."""
        ...

    def consumer(self, settings: TransactionalSettings, client_id: str) -> AIOKafkaConsumer:
        """The loop's group consumer (not yet subscribed, not started)."""
        ...


class AIOKafkaClients:
    """:class:`TransactionalClients` of the real broker (the default)."""

    def producers(self, settings: TransactionalSettings, client_id: str) -> list[AIOKafkaProducer]:
        return _producers(settings, client_id)

    def consumer(self, settings: TransactionalSettings, client_id: str) -> AIOKafkaConsumer:
        return _consumer(settings, client_id)


def _producers(settings: TransactionalSettings, client_id: str) -> list[AIOKafkaProducer]:
    kafka = settings.kafka
    set_concurrent_transactions_backoff(settings.concurrent_transactions_backoff_ms / 1000)
    return [
        AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=client_id,
            transactional_id=tid,
            enable_idempotence=True,
            acks="all",
            max_request_size=kafka.max_request_size,
            linger_ms=0,
            retry_backoff_ms=settings.producer_retry_backoff_ms,
            transaction_timeout_ms=settings.transaction_timeout_ms,
            **kafka.security_kwargs(),
        )
        for tid in transactional_ids(settings.transactional_id)
    ]


def _consumer(settings: TransactionalSettings, client_id: str) -> AIOKafkaConsumer:
    kafka = settings.kafka
    return AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=client_id,
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


class TransactionalLoop(ABC, Generic[D]):
    """Owns the transactional producers, the group consumer and the inbox between them.

    Create it inside the running event loop (aiokafka clients bind to it). Start:
    :meth:`start_producer` (fences a previous process with the same transactional ids
    and aborts its open transactions; read any state topics after it),
    :meth:`start_consumer`, then :meth:`run` in a task; :meth:`request_stop` lets it
    finish the batch under way and commit the offsets, :meth:`stop` closes the clients.
    """

    def __init__(
        self,
        settings: TransactionalSettings,
        topics: Sequence[str],
        *,
        client_id: str,
        clients: TransactionalClients | None = None,
    ) -> None:
        """``clients``: makes the Kafka clients (default: :class:`AIOKafkaClients`)."""
        self.settings = settings
        self.timings: deque[BatchTiming] = deque(maxlen=10_000)
        self._window: list[BatchTiming] = []
        self._window_start = time.monotonic()
        self._paused: dict[TopicPartition, float] = {}
        self._stopping = False
        self.busy_since: float | None = None  # monotonic start of the batch under way (health)
        self.consumer_started = False
        # next offset to decide / last offset a committed transaction carried, per partition
        self._positions: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._offsets_at = time.monotonic()
        clients = clients if clients is not None else AIOKafkaClients()
        self.producers = clients.producers(settings, client_id)
        self._turn = 0
        self.consumer = clients.consumer(settings, client_id)
        self.inbox = Inbox(self.consumer, settings.batch_max_records, settings.poll_timeout_ms)
        self.consumer.subscribe(
            sorted(set(topics)), listener=DropRevoked(self.inbox, self._positions)
        )

    # -- what a service implements -----------------------------------------------------------

    @abstractmethod
    async def decide(self, records: Records) -> D | None:
        """Decide a batch (possibly empty: other inputs may be pending).

        None: nothing to do. Raise :class:`TransientError` to have the batch rolled back
        and decided again after a back-off (undo your own bookkeeping first).
        """

    def committed(self, decision: D) -> None:
        """The decision's transaction committed."""

    def rolled_back(self, decision: D) -> None:
        """The decision's transaction was aborted; its records come again."""

    def totals(self) -> dict[str, int]:
        """Counts to add to the periodic log line."""
        return {}

    # -- life cycle ----------------------------------------------------------------------------

    async def start_producer(self) -> None:
        """Fences a previous process with the same transactional ids and aborts its open transactions.

        Call this before reading state topics: until those transactions are
        aborted, ``read_committed`` readers cannot get past them.
        """
        for producer in self.producers:
            await producer.start()

    async def start_consumer(self) -> None:
        await self.consumer.start()
        self.consumer_started = True

    async def stop(self) -> None:
        await self.inbox.halt()
        await self.consumer.stop()
        for producer in self.producers:
            await producer.stop()

    def request_stop(self) -> None:
        """Finish the batches under way, commit the offsets, then return from :meth:`run`."""
        self._stopping = True

    async def run(self) -> None:
        """Process batches until stopped. Errors other than Kafka's retriable ones propagate."""
        backoff = self.settings.retry_backoff_s
        try:
            while not self._stopping:
                try:
                    await self.step()
                    backoff = self.settings.retry_backoff_s
                except asyncio.CancelledError:
                    raise
                except BatchRolledBack as exc:
                    log.warning(
                        "batch failed and was rolled back, retrying in %.1f s: %s",
                        backoff,
                        exc.__cause__,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.settings.retry_backoff_max_s)
            await self.flush()
        finally:
            await self.inbox.halt()

    async def step(self) -> int:
        """What the inbox holds -> one transaction. Returns the number of inputs decided."""
        self._resume_due()
        await self.inbox.wait(self.settings.poll_timeout_ms / 1000)
        self.busy_since = time.monotonic()
        try:
            batch = await self._decide()
            if batch is None:
                return 0
            await self._carry_out(batch)
        finally:
            self.busy_since = None
        return batch.decision.inputs() if batch.decision is not None else 0

    async def flush(self) -> None:
        """Commit the offsets of everything decided (when stopping).

        A failure here is logged, not raised: the inputs whose offsets did not
        commit are read again at the next start (and must be found to be duplicates).
        """
        if not self._uncommitted():
            return
        try:
            await self._carry_out(_Batch({}, None), with_offsets=True)
        except (BatchRolledBack, _AbortFailed, ProducerFenced) as exc:
            log.warning("stopping: the offsets did not commit (%r)", exc.__cause__ or exc)

    # -- one batch ---------------------------------------------------------------------------

    async def _decide(self) -> _Batch[D] | None:
        records = self.inbox.take()
        stamps = [r.timestamp for rs in records.values() for r in rs]
        wait_s = max(0.0, time.time() - min(stamps) / 1000) if stamps else 0.0
        t0 = time.perf_counter()
        try:
            decision = await self.decide(records)
        except TransientError as exc:  # decide the batch again later
            await self._roll_back(records)
            raise BatchRolledBack() from exc
        if decision is None:
            # idle: commit the offsets of what came before
            return _Batch(records, None) if self._offsets_due() else None
        self._positions.update(decision.positions)
        return _Batch(records, decision, wait_s, time.perf_counter() - t0)

    async def _carry_out(self, batch: _Batch[D], *, with_offsets: bool = False) -> None:
        """The batch's transaction, then the bookkeeping; a failed batch is rolled back."""
        decision = batch.decision
        replay_safe = decision is None or decision.replay_safe
        if with_offsets or not replay_safe or self._offsets_due():
            batch.offsets = self._uncommitted()
        producer = self.producers[self._turn]
        self._turn = (self._turn + 1) % len(self.producers)
        outputs = decision.outputs if decision is not None else []
        try:
            txn_s = await self._transact(outputs, batch.offsets, producer)
        except (ProducerFenced, _AbortFailed):
            raise  # another process owns our transactional id, or the producer is broken
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._roll_back(batch.records)
            if decision is not None:
                self.rolled_back(decision)
            raise BatchRolledBack() from exc
        self._committed.update(batch.offsets)
        if decision is not None:
            self.committed(decision)
            await self._pause(decision.pauses)
        self._record(batch, txn_s)

    async def _transact(
        self,
        outputs: Sequence[Output],
        offsets: dict[TopicPartition, int],
        producer: AIOKafkaProducer,
    ) -> float:
        """One transaction: the outputs, then the offsets; returns its seconds."""
        t0 = time.perf_counter()
        if not outputs and not offsets:
            return 0.0
        if offsets:
            self._offsets_at = time.monotonic()
        await producer.begin_transaction()
        try:
            futures = [
                await producer.send(r.topic, r.value, key=r.key, headers=r.headers) for r in outputs
            ]
            await asyncio.gather(*futures)
            if offsets:
                await producer.send_offsets_to_transaction(offsets, self.settings.group_id)
            await producer.commit_transaction()
        except BaseException:  # also on cancellation: never leave a transaction open
            try:
                await asyncio.shield(producer.abort_transaction())
            except Exception as abort_exc:
                raise _AbortFailed(str(abort_exc)) from abort_exc
            raise
        return time.perf_counter() - t0

    async def _roll_back(self, records: Records) -> None:
        """Rewind every partition to its first record not carried out; empty the inbox."""
        await self.inbox.halt()
        first = self.inbox.first_offsets()
        first.update({tp: rs[0].offset for tp, rs in records.items() if rs})
        self.inbox.clear()
        assigned = self.consumer.assignment()
        for tp, offset in first.items():
            if tp in assigned:
                self.consumer.seek(tp, offset)
                self._positions[tp] = offset

    # -- offsets and pauses ------------------------------------------------------------------

    def _uncommitted(self) -> dict[TopicPartition, int]:
        """Positions of owned partitions that no committed transaction carried yet."""
        assigned = self.consumer.assignment()
        return {
            tp: offset
            for tp, offset in self._positions.items()
            if tp in assigned and self._committed.get(tp) != offset
        }

    def _offsets_due(self) -> bool:
        if time.monotonic() - self._offsets_at < self.settings.offsets_interval_s:
            return False
        return bool(self._uncommitted())

    async def _pause(self, pauses: dict[TopicPartition, tuple[int, float]]) -> None:
        if not pauses:
            return
        await self.inbox.halt()  # no fetch of the old position may land after the seek
        for tp, (offset, not_before) in pauses.items():
            self.inbox.drop(tp)
            self.consumer.seek(tp, offset)
            self.consumer.pause(tp)
            self._paused[tp] = not_before

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

    # -- timings -------------------------------------------------------------------------------

    def _record(self, batch: _Batch[D], txn_s: float) -> None:
        inputs = batch.decision.inputs() if batch.decision is not None else 0
        timing = BatchTiming(inputs, batch.plan_s, txn_s, batch.wait_s, bool(batch.offsets))
        self.timings.append(timing)
        self._window.append(timing)
        if time.monotonic() - self._window_start >= self.settings.stats_interval_s:
            self._report_window()

    def _report_window(self) -> None:
        window, self._window = self._window, []
        seconds = time.monotonic() - self._window_start
        self._window_start = time.monotonic()
        if not window:
            return

        def p(values: list[float], q: float) -> float:
            ordered = sorted(values)
            return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        waits = [t.wait_s for t in window]
        txns = [t.txn_s for t in window]
        plans = [t.plan_s for t in window]
        log.info(
            "last %.0f s: %d inputs in %d transactions (%d with offsets); ms p50/p99: "
            "waited %.1f/%.1f, decided %.1f/%.1f, transaction %.1f/%.1f; totals %s",
            seconds,
            sum(t.inputs for t in window),
            len(window),
            sum(t.offsets for t in window),
            p(waits, 0.5),
            p(waits, 0.99),
            p(plans, 0.5),
            p(plans, 0.99),
            p(txns, 0.5),
            p(txns, 0.99),
            self.totals(),
        )


class BatchRolledBack(Exception):
    """The batch's transaction was aborted (or never began) and the consumer rewound: :meth:`TransactionalLoop.run` decides it again after a back-off. The cause is ``__cause__``."""


class _AbortFailed(Exception):
    """The transaction could not be aborted: the producer cannot go on."""


__all__ = [
    "AIOKafkaClients",
    "BatchRolledBack",
    "BatchTiming",
    "Decision",
    "Output",
    "TransactionalClients",
    "TransactionalLoop",
    "TransactionalSettings",
    "dead_letter_output",
    "failure_of",
    "set_concurrent_transactions_backoff",
    "transactional_ids",
]
