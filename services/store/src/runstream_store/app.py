"""The store service: consumes results, run catalog, processing/job state and commands.

``build_app(settings)`` wires everything; nothing happens at import time. The
database pool is opened at start-up, after checking the schema version (an
outdated schema stops the service with the command to run).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from faststream import FastStream
from faststream.kafka import KafkaBroker
from runstream_common import parsers
from runstream_common.errors import ConfigurationError, SchemaOutdated
from runstream_common.inflight import InFlight, subscribe_in_flight
from runstream_common.kafka import Delivery, document_publication, make_broker, subscribe
from runstream_common.logs import configure_logging
from runstream_common.messages import (
    JobStateChanged,
    ProcessingStateChanged,
    ProposalRegistered,
    ProposalRemoved,
    ResultsReady,
    RunKnown,
    StoreCommand,
    VariablesDefined,
)
from runstream_common.poison import CrashLedger
from runstream_common.registry import ProposalRegistry, Registry
from runstream_common.service import KafkaTopicAdmin, Part, Runtime, Service, TopicAdmin, assemble
from runstream_common.telemetry import Telemetry, setup_telemetry
from runstream_common.topics import damnit_db_topic

from . import __version__
from .adapters.damnit_kafka import EditFollower, KafkaDamnitPublisher
from .adapters.damnit_source import ProjectionSource
from .adapters.feed import KafkaFeed
from .adapters.postgres import Repository, create_pool
from .adapters.run_files import RunFiles
from .damnit.edits import EditApplier
from .damnit.importer import Importer
from .damnit.projector import Projector
from .handlers import Database, Handlers
from .hooks import Hooks
from .registry import ResultsGuard
from .settings import Settings

log = logging.getLogger("runstream.store")


DatabaseOpener = Callable[[], AbstractAsyncContextManager[Database]]
"""Opens the store's database at start-up; closed after the broker stopped."""


@dataclass(frozen=True)
class Ports:
    """What the store talks to besides its broker and run files (tests pass in-memory ones)."""

    topics: TopicAdmin
    registry: Registry
    ledger: CrashLedger | None
    """Counts the attempts at each results record, so one that kills the store is dead-lettered."""
    database: DatabaseOpener

    @classmethod
    def of(cls, settings: Settings) -> Ports:
        kafka = settings.kafka
        return cls(
            topics=KafkaTopicAdmin(kafka),
            registry=ProposalRegistry(
                kafka, client_id="runstream-store-registry", wait_s=settings.registry_wait_s
            ),
            ledger=CrashLedger(
                kafka,
                topic=kafka.topics.attempts,
                group_id=settings.group_id,
                max_crashes=settings.max_crashes,
            ),
            database=lambda: postgres(settings),
        )


@asynccontextmanager
async def postgres(settings: Settings) -> AsyncIterator[Repository]:
    """The database pool, once its schema is checked (an outdated one stops the store)."""
    pool = await create_pool(
        settings.postgres.dsn.get_secret_value(),
        min_size=settings.postgres.min_pool,
        max_size=settings.postgres.max_pool,
    )
    try:
        repo = Repository(pool)
        try:
            await repo.check_schema()
        except SchemaOutdated as exc:
            log.critical("the store cannot start: %s", exc)
            raise SystemExit(f"runstream store: {exc}") from None
        yield repo
    finally:
        await pool.close()


@dataclass
class StoreRuntime(Runtime):
    """The handlers, once start-up opened the database, and what runs beside them."""

    settings: Settings
    ports: Ports
    broker: KafkaBroker
    telemetry: Telemetry
    handlers: Part[Handlers]
    results: InFlight
    hooks: Hooks
    running: AsyncExitStack = field(default_factory=AsyncExitStack)
    """Readers stopped before the broker stops (after the results in flight are drained)."""
    resources: AsyncExitStack = field(default_factory=AsyncExitStack)
    """The database, closed after the broker stopped."""

    async def start(self) -> None:
        db = await self.resources.enter_async_context(self.ports.database())
        topics = self.settings.kafka.topics
        await self.ports.topics.ensure(
            [topics.results, topics.run_catalog, topics.processing, topics.job_state,
             topics.commands, topics.updates, topics.proposal_settings, topics.proposals,
             topics.attempts],
            compacted=topics.compacted(),
        )  # fmt: skip
        # Read to its end before the broker starts: the first result is judged on it.
        await self.ports.registry.start()
        self.running.push_async_callback(self.ports.registry.stop)
        if self.ports.ledger is not None:
            await self.ports.ledger.start()
            self.running.push_async_callback(self.ports.ledger.stop)
        self.handlers.set(await self._handlers(db))

    async def _handlers(self, db: Database) -> Handlers:
        settings = self.settings
        files = RunFiles(
            compress_min_bytes=settings.compress_min_bytes,
            before_replace=self.hooks.before_replace,
        )
        repo = db if isinstance(db, Repository) else None
        if settings.damnit.enabled and repo is None:
            raise ConfigurationError("the DAMNIT projection needs the PostgreSQL database")
        projector = None
        if settings.damnit.enabled and repo is not None:
            projector = _projector(settings, repo, self.broker, self.hooks)
        handlers = Handlers(
            db,
            files,
            KafkaFeed(self.broker, settings.kafka.topics),
            fragment_wait_s=settings.fragment_wait_s,
            compress_min_bytes=settings.compress_min_bytes,
            copy_chunk_bytes=int(settings.copy_chunk_mb * 1024 * 1024),
            hooks=self.hooks,
            projection=projector,
            importer=Importer(repo, files) if projector is not None and repo else None,
            slurm_cluster=settings.damnit.slurm_cluster,
        )
        if projector is not None and repo is not None:
            await _start_damnit(settings, projector, handlers, ProjectionSource(repo), self.running)
        return handlers

    async def stop(self) -> None:
        await self.results.drain()  # before the broker stops: the record being handled publishes
        await self.running.aclose()

    async def stopped(self) -> None:
        self.handlers.take()
        await self.resources.aclose()
        self.telemetry.shutdown()


def build_app(
    settings: Settings,
    *,
    telemetry: Telemetry | None = None,
    ports: Ports | None = None,
    hooks: Hooks | None = None,
) -> Service[StoreRuntime]:
    """The store's app. ``ports``: the real adapters from the settings unless given.
    ``hooks``: a test's fault injection (crash tests); never set in production."""
    telemetry = telemetry or setup_telemetry("store", settings.telemetry)
    ports = ports or Ports.of(settings)
    broker = make_broker(settings.kafka, telemetry, client_id="runstream-store")
    handlers: Part[Handlers] = Part("the store")
    results = _subscribe(broker, settings, handlers, ResultsGuard(ports.registry), ports.ledger)
    document_publication(broker, settings.kafka.topics.updates, parsers.UPDATES,
                         "The change feed for GUIs")  # fmt: skip
    document_publication(broker, settings.kafka.topics.proposal_settings,
                         parsers.PROPOSAL_SETTINGS, "Accepted proposal settings")  # fmt: skip
    runtime = StoreRuntime(settings, ports, broker, telemetry, handlers, results, hooks or Hooks())
    return assemble(broker, runtime, title="runstream-store", version=__version__, logger=log)


def _subscribe(
    broker: KafkaBroker,
    settings: Settings,
    handlers: Part[Handlers],
    guard: ResultsGuard,
    ledger: CrashLedger | None,
) -> InFlight:
    """Results (counted by the crash ledger), run catalog, state, commands, proposals in."""
    topics, group = settings.kafka.topics, settings.group_id

    async def handle_results(message: ResultsReady | VariablesDefined, delivery: Delivery) -> None:
        """Executor results (ResultsReady) and variable definitions (VariablesDefined).

        A result's folder and fragment must be the registered proposal's (else dead-lettered).
        """
        if isinstance(message, ResultsReady):
            message = await guard.checked(message)
        await handlers.get().on_results(message, delivery)

    async def handle_run_known(message: RunKnown, delivery: Delivery) -> None:
        """The run catalog: a new run is announced on the feed (RunAdded)."""
        await handlers.get().on_run_known(message, delivery)

    async def handle_processing(message: ProcessingStateChanged, delivery: Delivery) -> None:
        """Processing state of runs, passed on as ProcessingStateSet."""
        await handlers.get().on_processing(message, delivery)

    async def handle_job_state(message: JobStateChanged, delivery: Delivery) -> None:
        """Slurm job state, passed on as JobStateSet."""
        await handlers.get().on_job_state(message, delivery)

    async def handle_proposal(
        message: ProposalRegistered | ProposalRemoved, delivery: Delivery
    ) -> None:
        """Registrations: the proposal's context folder (where runs.sqlite goes)."""
        await handlers.get().on_proposal(message, delivery)

    async def handle_command(message: StoreCommand, delivery: Delivery) -> None:
        """User commands; bad ones are rejected on the feed (CommandRejected)."""
        await handlers.get().on_command(message, delivery)

    async def record_poison(message: ResultsReady | VariablesDefined | None, reason: str) -> None:
        await handlers.get().results_poisoned(message, reason, socket.gethostname())

    # A results record that was being handled every time the store died (max_crashes
    # times; e.g. a fragment that crashes HDF5) fails its pass and is dead-lettered
    # instead of killing the store again. One record at a time, as the other topics.
    results = subscribe_in_flight(broker, topics.results, group_id=group, parser=parsers.RESULTS,
                                  handler=handle_results, settings=settings, limit=1,
                                  ledger=ledger, on_poison=record_poison, service="store")  # fmt: skip
    subscribe(broker, topics.run_catalog, group_id=group, parser=parsers.RUN_CATALOG,
              handler=handle_run_known, settings=settings)  # fmt: skip
    subscribe(broker, topics.processing, group_id=group, parser=parsers.PROCESSING,
              handler=handle_processing, settings=settings)  # fmt: skip
    subscribe(broker, topics.job_state, group_id=group, parser=parsers.JOB_STATE,
              handler=handle_job_state, settings=settings)  # fmt: skip
    subscribe(broker, topics.commands, group_id=group, parser=parsers.COMMANDS,
              handler=handle_command, settings=settings)  # fmt: skip
    subscribe(broker, topics.proposals, group_id=group, parser=parsers.PROPOSALS,
              handler=handle_proposal, settings=settings)  # fmt: skip
    return results


def _projector(
    settings: Settings, repo: Repository, broker: KafkaBroker, hooks: Hooks
) -> Projector:
    return Projector(
        ProjectionSource(repo),
        KafkaDamnitPublisher(broker, settings.kafka),
        topic_prefix=settings.damnit.topic_prefix,
        retry_max_s=settings.damnit.retry_max_s,
        reconcile_interval_s=settings.damnit.reconcile_interval_s,
        linger_s=settings.damnit.linger_s,
        before_commit=hooks.projecting,
    )


async def _start_damnit(
    settings: Settings,
    projector: Projector,
    handlers: Handlers,
    source: ProjectionSource,
    running: AsyncExitStack,
) -> None:
    """GUI edits in, then the projection's catch-up of every proposal (in the background)."""
    edits = EditApplier(handlers, source)
    follower = EditFollower(
        settings.kafka, settings.damnit.group_id or f"{settings.group_id}-damnit", edits.on_message
    )
    await follower.start()
    running.push_async_callback(follower.stop)

    async def follow(db_id: str, proposal: int) -> None:
        follower.follow(damnit_db_topic(db_id, settings.damnit.topic_prefix))

    projector.on_new_db = follow
    projector.on_pending_edits = edits.apply_values
    projector.on_pending_variables = edits.apply_variables
    for db_id in await source.db_ids():
        follower.follow(damnit_db_topic(db_id, settings.damnit.topic_prefix))
    await projector.start()
    running.push_async_callback(projector.stop)


async def _schema_problem(settings: Settings) -> str | None:
    import asyncpg

    from . import schema

    try:
        conn = await asyncpg.connect(settings.postgres.dsn.get_secret_value(), timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None  # start-up reports an unreachable database itself
    try:
        await schema.check(conn)
    except SchemaOutdated as exc:
        return str(exc)
    finally:
        await conn.close()
    return None


def create() -> FastStream:
    """Entry point for ``runstream serve store``: settings from the environment.

    An outdated schema stops here with one clear line (exit code 2) instead of a
    traceback from inside the running app; the start-up hook checks again.
    """
    settings = Settings()
    configure_logging(settings.log_level)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        problem = asyncio.run(_schema_problem(settings))
        if problem is not None:
            print(f"runstream store: {problem}", file=sys.stderr)
            raise SystemExit(2) from None
    return build_app(settings).app
