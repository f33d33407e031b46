"""The running ingest service: tables, the transactional loop and the watcher, started in order."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from runstream_common import parsers
from runstream_common.service import KafkaTopicAdmin, TopicAdmin
from runstream_common.telemetry import Telemetry
from runstream_common.transactional import AIOKafkaClients, TransactionalClients

from .adapters.disk import LocalDisk
from .adapters.loop import WRITER_HEADER, IngestLoop
from .adapters.processing import ProcessingFollower
from .adapters.readers import KafkaReaders, Readers, TopicReader
from .adapters.watcher import FolderWatcher
from .effects import Verdict
from .settings import Settings
from .tables import ProposalTable, RawInFlight, RunCatalog

log = logging.getLogger("runstream.ingest")


@dataclass(frozen=True)
class Ports:
    """What ingest talks to besides its own files (tests pass in-memory ones)."""

    topics: TopicAdmin
    clients: TransactionalClients
    """The transactional loop's producers and group consumer."""
    readers: Readers
    """The proposal registry and run catalog (compacted), the processing states (tail)."""

    @classmethod
    def of(cls, settings: Settings) -> Ports:
        kafka = settings.kafka
        return cls(
            topics=KafkaTopicAdmin(kafka),
            clients=AIOKafkaClients(),
            readers=KafkaReaders(kafka, settings.follower_batch_ms),
        )


class IngestService:
    def __init__(
        self,
        settings: Settings,
        telemetry: Telemetry | None = None,
        *,
        ports: Ports | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Create it inside the running event loop (its Kafka clients bind to it)."""
        self.settings = settings
        self.ports = ports = ports or Ports.of(settings)
        self.proposals = ProposalTable()
        self.catalog = RunCatalog()
        self.disk = LocalDisk(settings.layout(), settings.settle_s)
        # waiting for raw makes no sense beyond the proc events' own waiting budget
        self.raw_in_flight = RawInFlight(
            ttl_s=settings.proc_retry_delay_s * settings.proc_max_attempts
        )
        self.loop = IngestLoop(
            settings,
            self.proposals,
            self.catalog,
            self.disk,
            on_outcome=outcome_counter(telemetry),
            tracer=telemetry.tracer_provider.get_tracer("runstream.ingest") if telemetry else None,
            raw_in_flight=self.raw_in_flight,
            clients=ports.clients,
        )
        self._processing = ports.readers.tail(
            settings.kafka.topics.processing, ProcessingFollower(self.raw_in_flight).apply
        )
        self._proposal_reader, self._catalog_reader = self._table_readers()
        self.loop.registry_caught_up = self._proposal_reader.caught_up
        self.watcher = (
            FolderWatcher(settings, self.proposals, self.catalog, self.disk, self.loop.watched)
            if settings.watch
            else None
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._on_fatal = on_fatal
        self.failed: BaseException | None = None

    def _table_readers(self) -> tuple[TopicReader, TopicReader]:
        """Readers of the compacted topics behind the proposal table and the run catalog."""
        settings = self.settings
        topics = settings.kafka.topics
        readers = self.ports.readers
        proposals = readers.table(topics.proposals, parsers.PROPOSALS, self.proposals.apply)
        own = (WRITER_HEADER, settings.transactional_id.encode())
        catalog = readers.table(
            topics.run_catalog,
            parsers.RUN_CATALOG,
            self.catalog.merge,
            # what this process wrote is in its catalog since its commit: don't parse it again
            skip_when_following=lambda record: own in (record.headers or ()),
        )
        return proposals, catalog

    async def prepare(self) -> None:
        """Topics, fencing, then the state tables read to their end (in this order)."""
        s = self.settings
        if s.gil_switch_interval_s is not None:
            sys.setswitchinterval(s.gil_switch_interval_s)
        topics = s.kafka.topics
        admin = self.ports.topics
        await admin.ensure(
            [
                topics.proposals,
                topics.run_catalog,
                topics.reprocess,
                topics.runs,
                topics.processing,
                s.retry_topic(),
            ],
            compacted=topics.compacted(),
        )
        await admin.ensure(list(s.facility_topics))
        await self.loop.start_producer()
        n_prop = await self._proposal_reader.load()
        n_cat = await self._catalog_reader.load()
        log.info(
            "ingest ready: %d proposals (%d records), %d runs in the catalog (%d records)",
            len(self.proposals),
            n_prop,
            len(self.catalog),
            n_cat,
        )
        if s.gc_freeze_interval_s is not None:
            gc.collect()
            gc.freeze()
        await self._processing.load()  # before any raw message goes out: no finish is missed
        await self.loop.start_consumer()

    def launch(self) -> None:
        """Start the background tasks (after :meth:`prepare`)."""
        self._spawn(self.loop.run(), "loop")
        self._spawn(self._proposal_reader.follow(), "proposals")
        self._spawn(self._catalog_reader.follow(), "catalog")
        self._spawn(self._processing.follow(), "processing")
        if self.watcher is not None:
            self._spawn(self.watcher.run(), "watcher")
        if self.settings.gc_freeze_interval_s is not None:
            self._spawn(freeze_gc_every(self.settings.gc_freeze_interval_s), "gc")

    def _spawn(self, coro: object, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"ingest-{name}")  # type: ignore[arg-type]
        task.add_done_callback(self._done)
        self._tasks.append(task)

    def _done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.critical("ingest task %s failed; stopping: %r", task.get_name(), exc, exc_info=exc)
            self.failed = exc
            if self._on_fatal is not None:
                self._on_fatal(exc)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Let the loop finish its batch (its transaction commits or aborts), then cancel the rest."""
        self.loop.request_stop()
        loop_tasks = [t for t in self._tasks if t.get_name() == "ingest-loop"]
        if loop_tasks:
            await asyncio.wait(loop_tasks, timeout=grace_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.loop.stop()
        await self._proposal_reader.stop()
        await self._catalog_reader.stop()
        await self._processing.stop()


def outcome_counter(telemetry: Telemetry | None) -> Callable[[str, Verdict], None] | None:
    """Counts every decided input by source topic and outcome (a metric), with telemetry."""
    if telemetry is None:
        return None
    meter = telemetry.meter_provider.get_meter("runstream.ingest")
    counter = meter.create_counter(
        "runstream.ingest.inputs", description="Inputs decided by ingest, by outcome"
    )

    def on_outcome(source: str, outcome: Verdict) -> None:
        counter.add(1, {"source": source, "outcome": outcome.value})

    return on_outcome


async def freeze_gc_every(interval_s: float) -> None:
    """Move what survived so far into the permanent generation, again and again.

    Long-lived objects (the catalog, proposals, modules) then never make a full
    collection walk them; such a walk paused the loop 40-60 ms. The price: a
    reference cycle that is already garbage when a freeze happens is not freed
    (objects freed by reference counting are, frozen or not).
    """
    while True:
        await asyncio.sleep(interval_s)
        gc.freeze()
