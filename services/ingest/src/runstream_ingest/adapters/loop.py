"""Ingest's transactional loop: exactly one run message per input.

Ingest delivers with the shared library's transactional mode
(:class:`runstream_common.transactional.TransactionalLoop`): one group consumer
(``read_committed``) reads the facility topics, the reprocess topic and ingest's retry
topic, and each batch is carried out in **one Kafka transaction** — run messages,
run-catalog entries, dead letters, waiting states and retry records become visible to
``read_committed`` readers together or not at all. What is ingest's own is how a
batch is decided: the :class:`~.planning.Planner` (in a worker thread unless the batch
is small and needs no file system), the folders the watcher found, the in-memory run
catalog (a batch's catalog changes count once its transaction commits) and the runs
whose raw pass is under way.

A *replay-safe* plan (its only outputs are run messages, each with the catalog entry
that makes a repeat a duplicate) may leave its consumer offsets to a later
transaction. After a crash the restarted loop reads the catalog as committed and
replays from the committed offsets: the replay-safe batches come out as duplicates,
the uncommitted ones are done again, and nothing is written twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from opentelemetry.trace import Tracer
from runstream_common.errors import TransientError
from runstream_common.inbox import Records
from runstream_common.transactional import (
    BatchTiming,
    TransactionalClients,
    TransactionalLoop,
    set_concurrent_transactions_backoff,
    transactional_ids,
)

from ..effects import Verdict
from ..handlers import Disk
from ..settings import Settings
from ..tables import ProposalTable, RawInFlight, RunCatalog
from .planning import WRITER_HEADER, Plan, Planner, Watched

log = logging.getLogger("runstream.ingest.loop")

# at most this long an event of an unknown proposal waits for the registry (see decide)
REGISTRY_CATCH_UP_S = 2.0

__all__ = [
    "WRITER_HEADER",
    "BatchTiming",
    "IngestLoop",
    "Watched",
    "set_concurrent_transactions_backoff",
    "transactional_ids",
]


class IngestLoop(TransactionalLoop[Plan]):
    """Decides batches of facility events, reprocess requests, retries and watched folders."""

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
        clients: TransactionalClients | None = None,
    ) -> None:
        """``clients``: makes the loop's Kafka clients (default: aiokafka's)."""
        self.topics = settings.kafka.topics
        self.retry_topic = settings.retry_topic()
        self.facility_topics = frozenset(settings.facility_topics)
        super().__init__(
            settings,
            [*self.facility_topics, self.topics.reprocess, self.retry_topic],
            client_id=f"{settings.kafka.client_id}-ingest",
            clients=clients,
        )
        self.settings: Settings = settings
        self.proposals = proposals
        self.catalog = catalog
        self.disk = disk
        self.raw_in_flight = raw_in_flight if raw_in_flight is not None else RawInFlight()
        self.planner = Planner(settings, proposals, disk, self.raw_in_flight, tracer)
        self.watched: asyncio.Queue[Watched] = asyncio.Queue()
        self.stats: Counter[str] = Counter()
        self._on_outcome = on_outcome
        # waits until the proposal registry is read to its current end (see decide)
        self.registry_caught_up: Callable[[float], Awaitable[bool]] | None = None

    async def decide(self, records: Records) -> Plan | None:
        watched = self._take_watched()
        if not records and not watched:
            return None
        plan = await self._plan(records, watched)
        if await self._registry_caught_up(plan):
            plan = await self._plan(records, watched)  # with what the registry holds now
        return plan

    async def _plan(self, records: Records, watched: list[Watched]) -> Plan:
        txn = self.catalog.begin()  # an uncommitted txn is simply dropped
        try:
            if self._decide_inline(records, watched):
                return self.planner.plan(records, watched, txn, time.time())
            return await asyncio.to_thread(self.planner.plan, records, watched, txn, time.time())
        except OSError as exc:  # the file system hiccuped: decide the batch again later
            self._give_back(watched)
            raise TransientError(f"file system: {exc}") from exc
        except TransientError:
            self._give_back(watched)
            raise

    async def _registry_caught_up(self, plan: Plan) -> bool:
        """A plan that ignores an event as unregistered waits until the registry's follower
        has read what the registry topic holds now (a proposal registered a moment before
        its first event is then known); True if it did, and the batch is decided again.
        ``registry_caught_up`` is set by the service; ``REGISTRY_CATCH_UP_S`` bounds the
        wait. Batches of registered proposals (the hot path) pay nothing."""
        if self.registry_caught_up is None:
            return False
        if not any(verdict is Verdict.UNREGISTERED for _, verdict in plan.outcomes):
            return False
        if await self.registry_caught_up(REGISTRY_CATCH_UP_S):
            return True
        log.warning(
            "the proposal registry could not be read to its end within %g s; "
            "deciding with what it holds",
            REGISTRY_CATCH_UP_S,
        )
        return False

    def committed(self, decision: Plan) -> None:
        if decision.txn is not None:
            self.catalog.commit(decision.txn)
        for proposal, run in decision.raw_sent:
            self.raw_in_flight.add(proposal, run)
        for topic, outcome in decision.outcomes:
            self.stats[outcome.value] += 1
            if self._on_outcome is not None:
                self._on_outcome(topic, outcome)

    def rolled_back(self, decision: Plan) -> None:
        self._give_back(decision.watched)

    def totals(self) -> dict[str, int]:
        return dict(self.stats)

    def _take_watched(self) -> list[Watched]:
        watched: list[Watched] = []
        while not self.watched.empty() and len(watched) < self.settings.batch_max_records:
            watched.append(self.watched.get_nowait())
        return watched

    def _give_back(self, watched: list[Watched]) -> None:
        for item in watched:
            self.watched.put_nowait(item)

    def _decide_inline(self, records: Records, watched: list[Watched]) -> bool:
        """Small batches that need no file system are decided on the event loop.

        Handing a batch to a worker thread costs 1-3 ms of thread switching and
        GIL hand-over, more than deciding a few events takes (~0.06 ms each).
        """
        size = sum(len(rs) for rs in records.values())
        if size > self.settings.inline_max_records:
            return False
        return not self.planner.touches_disk(records, watched)
