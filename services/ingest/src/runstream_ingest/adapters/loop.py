"""The transactional consume-transform-produce loop: exactly one run message per input.

One aiokafka consumer (group ``settings.group_id``, ``read_committed``, no
auto-commit) reads the facility topics, the reprocess topic and ingest's retry
topic; a poller task keeps draining it into the :class:`~.inbox.Inbox`. Each
batch taken from the inbox is decided by the :class:`~.planning.Planner` (in a
worker thread) and carried out in **one Kafka transaction**: run messages,
run-catalog entries, dead letters, waiting states and retry records become
visible to ``read_committed`` readers together or not at all. Two
transactional producers take turns, so a transaction never waits for the
broker to finish the previous commit's markers.

Consumer offsets travel inside the transactions, but not in every one: a
*replay-safe* batch (its only outputs are run messages, each with the catalog
entry that makes a repeat a duplicate) may leave its offsets to a later
transaction. A batch with a dead letter, a wait or a reprocess request always
carries the offsets of everything decided so far, and so does the first
transaction after ``offsets_interval_s``. After a crash the restarted loop reads
the catalog as committed and replays from the committed offsets: the
replay-safe batches come out as duplicates, the uncommitted ones are done
again, and nothing is written twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import ProducerFenced
from opentelemetry.trace import Tracer

from ..effects import Verdict
from ..handlers import Disk
from ..settings import Settings
from ..tables import CatalogTxn, ProposalTable, RawInFlight, RunCatalog
from .inbox import DropRevoked, Inbox
from .planning import WRITER_HEADER, Plan, Planner, Records, Watched

__all__ = ["WRITER_HEADER", "BatchTiming", "IngestLoop", "Watched"]

log = logging.getLogger("runstream.ingest.loop")


def set_concurrent_transactions_backoff(seconds: float) -> bool:
    """Shorten aiokafka's fixed wait after CONCURRENT_TRANSACTIONS (20 ms). True if it was set.

    A transaction that starts within a few milliseconds of the previous commit
    has its first AddPartitionsToTxn refused with CONCURRENT_TRANSACTIONS while
    the broker still writes the previous commit's markers (KAFKA-5477). aiokafka
    then sleeps ``aiokafka.producer.sender.BACKOFF_OVERRIDE`` seconds, a module
    constant with no client option; for a loop that commits back to back it was
    the largest term of the added latency (measured: 27 ms -> 6 ms per transaction
    at 1 ms). The constant is process-wide: ingest's loop is the only
    transactional producer in its process.
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


@dataclass(frozen=True, slots=True)
class BatchTiming:
    """One batch: inputs decided, seconds deciding, seconds in its transaction, age when taken."""

    inputs: int
    plan_s: float
    txn_s: float
    wait_s: float  # age of the batch's oldest record when it was taken from the inbox
    offsets: bool  # the transaction carried consumer offsets


@dataclass
class _Batch:
    """One decided batch on its way through its transaction."""

    records: Records
    watched: list[Watched]
    txn: CatalogTxn
    plan: Plan
    wait_s: float = 0.0
    plan_s: float = 0.0
    offsets: dict[TopicPartition, int] = field(default_factory=dict)


class IngestLoop:
    """Owns the transactional producers, the group consumer and the inbox between them."""

    def __init__(
        self,
        settings: Settings,
        proposals: ProposalTable,
        catalog: RunCatalog,
        disk: Disk,
        *,
        on_outcome: Callable[[str, Verdict], None] | None = None,
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
        self.raw_in_flight = raw_in_flight if raw_in_flight is not None else RawInFlight()
        self.planner = Planner(settings, proposals, disk, self.raw_in_flight, tracer)
        self.watched: asyncio.Queue[Watched] = asyncio.Queue()
        self.stats: Counter[str] = Counter()
        self.timings: deque[BatchTiming] = deque(maxlen=10_000)
        self._window: list[BatchTiming] = []
        self._window_start = time.monotonic()
        self._on_outcome = on_outcome
        self._paused: dict[TopicPartition, float] = {}
        self._stopping = False
        self.busy_since: float | None = None  # monotonic start of the batch under way (health)
        self.consumer_started = False
        # next offset to decide / last offset a committed transaction carried, per partition
        self._positions: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._offsets_at = time.monotonic()
        kafka = settings.kafka
        set_concurrent_transactions_backoff(settings.concurrent_transactions_backoff_ms / 1000)
        self.producers = [
            AIOKafkaProducer(
                bootstrap_servers=kafka.bootstrap_servers,
                client_id=f"{kafka.client_id}-ingest",
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
        self._turn = 0
        self.consumer = AIOKafkaConsumer(
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
        self.inbox = Inbox(self.consumer, settings.batch_max_records, settings.poll_timeout_ms)
        self.consumer.subscribe(
            sorted(self.facility_topics | {self.topics.reprocess, self.retry_topic}),
            listener=DropRevoked(self.inbox, self._positions),
        )

    async def start_producer(self) -> None:
        """Fences a previous process with the same transactional ids and aborts its open transactions.

        Call this before reading the catalog: until those transactions are
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
                except _Retriable as exc:
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
        return len(batch.plan.outcomes)

    async def flush(self) -> None:
        """Commit the offsets of everything decided (when stopping).

        A failure here is logged, not raised: the events whose offsets did not
        commit are read again at the next start and found to be duplicates.
        """
        if not self._uncommitted():
            return
        try:
            await self._carry_out(_Batch({}, [], self.catalog.begin(), Plan()), with_offsets=True)
        except (_Retriable, _AbortFailed, ProducerFenced) as exc:
            log.warning("stopping: the offsets did not commit (%r)", exc.__cause__ or exc)

    # -- one batch ---------------------------------------------------------------------------

    async def _decide(self) -> _Batch | None:
        records = self.inbox.take()
        watched: list[Watched] = []
        while not self.watched.empty() and len(watched) < self.settings.batch_max_records:
            watched.append(self.watched.get_nowait())
        if not records and not watched:
            if self._offsets_due():  # idle: commit the offsets of what came before
                return _Batch({}, [], self.catalog.begin(), Plan())
            return None
        stamps = [r.timestamp for rs in records.values() for r in rs]
        wait_s = max(0.0, time.time() - min(stamps) / 1000) if stamps else 0.0
        txn = self.catalog.begin()
        t0 = time.perf_counter()
        try:
            if self._decide_inline(records, watched):
                plan = self.planner.plan(records, watched, txn, time.time())
            else:
                plan = await asyncio.to_thread(
                    self.planner.plan, records, watched, txn, time.time()
                )
        except OSError as exc:  # the file system hiccuped: decide the batch again later
            await self._roll_back(_Batch(records, watched, txn, Plan()))
            raise _Retriable() from exc
        self._positions.update(plan.offsets)
        return _Batch(records, watched, txn, plan, wait_s, time.perf_counter() - t0)

    def _decide_inline(self, records: Records, watched: list[Watched]) -> bool:
        """Small batches that need no file system are decided on the event loop.

        Handing a batch to a worker thread costs 1-3 ms of thread switching and
        GIL hand-over, more than deciding a few events takes (~0.06 ms each).
        """
        size = sum(len(rs) for rs in records.values())
        if size > self.settings.inline_max_records:
            return False
        return not self.planner.touches_disk(records, watched)

    async def _carry_out(self, batch: _Batch, *, with_offsets: bool = False) -> None:
        """The batch's transaction, then the bookkeeping; a failed batch is rolled back."""
        if with_offsets or not batch.plan.replay_safe or self._offsets_due():
            batch.offsets = self._uncommitted()
        producer = self.producers[self._turn]
        self._turn = (self._turn + 1) % len(self.producers)
        try:
            txn_s = await self._transact(batch, producer)
        except (ProducerFenced, _AbortFailed):
            raise  # another process owns our transactional id, or the producer is broken
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._roll_back(batch)
            raise _Retriable() from exc
        self.catalog.commit(batch.txn)
        plan = batch.plan
        for proposal, run in plan.raw_sent:
            self.raw_in_flight.add(proposal, run)
        self._committed.update(batch.offsets)
        if plan.pauses:
            await self.inbox.halt()  # no fetch of the old position may land after the seek
            for tp, (offset, not_before) in plan.pauses.items():
                self.inbox.drop(tp)
                self.consumer.seek(tp, offset)
                self.consumer.pause(tp)
                self._paused[tp] = not_before
        timing = BatchTiming(
            len(plan.outcomes), batch.plan_s, txn_s, batch.wait_s, bool(batch.offsets)
        )
        self.timings.append(timing)
        self._window.append(timing)
        if time.monotonic() - self._window_start >= self.settings.stats_interval_s:
            self._report_window()
        for topic, outcome in plan.outcomes:
            self.stats[outcome.value] += 1
            if self._on_outcome is not None:
                self._on_outcome(topic, outcome)

    async def _transact(self, batch: _Batch, producer: AIOKafkaProducer) -> float:
        """The batch's one transaction; returns its seconds."""
        plan, offsets = batch.plan, batch.offsets
        t0 = time.perf_counter()
        if not plan.records and not offsets:
            return 0.0
        if offsets:
            self._offsets_at = time.monotonic()
        await producer.begin_transaction()
        try:
            futures = [
                await producer.send(r.topic, r.value, key=r.key, headers=r.headers)
                for r in plan.records
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

    async def _roll_back(self, batch: _Batch) -> None:
        """Rewind every partition to its first record not carried out; empty the inbox."""
        await self.inbox.halt()
        first = self.inbox.first_offsets()
        first.update({tp: rs[0].offset for tp, rs in batch.records.items() if rs})
        self.inbox.clear()
        assigned = self.consumer.assignment()
        for tp, offset in first.items():
            if tp in assigned:
                self.consumer.seek(tp, offset)
                self._positions[tp] = offset
        for item in batch.watched:
            self.watched.put_nowait(item)

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
            dict(self.stats),
        )


class _Retriable(Exception):
    """The batch's transaction was aborted and the consumer rewound; try again."""


class _AbortFailed(Exception):
    """The transaction could not be aborted: the producer cannot go on."""
