"""The store service: consumes results, run catalog, processing/job state and commands.

``build_app(settings)`` wires everything; nothing happens at import time. The
database pool is opened at start-up, after checking the schema version (an
outdated schema stops the service with the command to run).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from typing import Any

from faststream import FastStream
from faststream.specification import AsyncAPI
from runstream_common import parsers
from runstream_common.admin import ensure_topics
from runstream_common.errors import SchemaOutdated, ServiceUnavailable
from runstream_common.inflight import subscribe_in_flight
from runstream_common.kafka import Delivery, document_publication, make_broker, subscribe
from runstream_common.logs import configure_logging
from runstream_common.messages import ResultsReady, VariablesDefined
from runstream_common.poison import CrashLedger
from runstream_common.registry import ProposalRegistry
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
from .handlers import Handlers
from .registry import ResultsGuard
from .settings import Settings

log = logging.getLogger("runstream.store")


class _Runtime:
    """The handlers once start-up has opened the database."""

    handlers: Handlers | None = None

    def get(self) -> Handlers:
        if self.handlers is None:
            raise ServiceUnavailable("the store is still starting")
        return self.handlers


def build_app(settings: Settings, *, telemetry: Telemetry | None = None) -> FastStream:
    telemetry = telemetry or setup_telemetry("store", settings.telemetry)
    broker = make_broker(settings.kafka, telemetry, client_id="runstream-store")
    topics = settings.kafka.topics
    runtime = _Runtime()
    pools: list[Any] = []
    closers: list[Any] = []
    registry = ProposalRegistry(
        settings.kafka, client_id="runstream-store-registry", wait_s=settings.registry_wait_s
    )
    guard = ResultsGuard(registry)

    async def handle_results(message: Any, delivery: Delivery) -> None:
        """Executor results (ResultsReady) and variable definitions (VariablesDefined).

        A result's folder and fragment must be the registered proposal's (else dead-lettered).
        """
        handlers = runtime.get()
        if isinstance(message, ResultsReady):
            message = await guard.checked(message)
        await handlers.on_results(message, delivery)

    async def handle_run_known(message: Any, delivery: Delivery) -> None:
        """The run catalog: a new run is announced on the feed (RunAdded)."""
        await runtime.get().on_run_known(message, delivery)

    async def handle_processing(message: Any, delivery: Delivery) -> None:
        """Processing state of runs, passed on as ProcessingStateSet."""
        await runtime.get().on_processing(message, delivery)

    async def handle_job_state(message: Any, delivery: Delivery) -> None:
        """Slurm job state, passed on as JobStateSet."""
        await runtime.get().on_job_state(message, delivery)

    async def handle_proposal(message: Any, delivery: Delivery) -> None:
        """Registrations: the proposal's context folder (where runs.sqlite goes)."""
        await runtime.get().on_proposal(message, delivery)

    async def handle_command(message: Any, delivery: Delivery) -> None:
        """User commands; bad ones are rejected on the feed (CommandRejected)."""
        await runtime.get().on_command(message, delivery)

    async def record_poison(message: ResultsReady | VariablesDefined | None, reason: str) -> None:
        await runtime.get().results_poisoned(message, reason, socket.gethostname())

    group = settings.group_id
    # A results record that was being handled every time the store died (max_crashes
    # times; e.g. a fragment that crashes HDF5) fails its pass and is dead-lettered
    # instead of killing the store again. One record at a time, as the other topics.
    ledger = CrashLedger(
        settings.kafka, topic=topics.attempts, group_id=group, max_crashes=settings.max_crashes
    )
    results = subscribe_in_flight(
        broker,
        topics.results,
        group_id=group,
        parser=parsers.RESULTS,
        handler=handle_results,
        settings=settings,
        limit=1,
        ledger=ledger,
        on_poison=record_poison,
        service="store",
    )
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

    document_publication(broker, topics.updates, parsers.UPDATES, "The change feed for GUIs")
    document_publication(
        broker, topics.proposal_settings, parsers.PROPOSAL_SETTINGS, "Accepted proposal settings"
    )
    app = FastStream(
        broker,
        specification=AsyncAPI(title="runstream-store", version=__version__),
        logger=log,
    )

    @app.on_startup
    async def _start() -> None:
        pool = await create_pool(
            settings.postgres.dsn.get_secret_value(),
            min_size=settings.postgres.min_pool,
            max_size=settings.postgres.max_pool,
        )
        pools.append(pool)
        repo = Repository(pool)
        try:
            await repo.check_schema()
        except SchemaOutdated as exc:
            log.critical("the store cannot start: %s", exc)
            await pool.close()
            raise SystemExit(f"runstream store: {exc}") from None
        await ensure_topics(
            settings.kafka,
            [topics.results, topics.run_catalog, topics.processing, topics.job_state,
             topics.commands, topics.updates, topics.proposal_settings, topics.proposals,
             topics.attempts],
            compacted=set(topics.compacted()),
        )  # fmt: skip
        # Read to its end before the broker starts: the first result is judged on it.
        await registry.start()
        closers.append(registry.stop)
        await ledger.start()
        closers.append(ledger.stop)
        files = RunFiles(
            compress_min_bytes=settings.compress_min_bytes,
            before_replace=_die if settings.crash_point == "before_replace" else None,
        )
        projector = _projector(settings, repo, broker) if settings.damnit.enabled else None
        handlers = Handlers(
            repo,
            files,
            KafkaFeed(broker, topics),
            fragment_wait_s=settings.fragment_wait_s,
            compress_min_bytes=settings.compress_min_bytes,
            copy_chunk_bytes=int(settings.copy_chunk_mb * 1024 * 1024),
            crash_point=settings.crash_point,
            projection=projector,
            importer=Importer(repo, files) if projector is not None else None,
            slurm_cluster=settings.damnit.slurm_cluster,
        )
        if projector is not None:
            await _start_damnit(settings, projector, handlers, ProjectionSource(repo), closers)
        runtime.handlers = handlers

    @app.on_shutdown
    async def _stop_damnit() -> None:
        await results.drain()  # before the broker stops: the record being handled publishes
        for closer in reversed(closers):
            await closer()

    @app.after_shutdown
    async def _stop() -> None:
        for pool in pools:
            await pool.close()
        telemetry.shutdown()

    return app


def _projector(settings: Settings, repo: Repository, broker: Any) -> Projector:
    return Projector(
        ProjectionSource(repo),
        KafkaDamnitPublisher(broker, settings.kafka),
        topic_prefix=settings.damnit.topic_prefix,
        retry_max_s=settings.damnit.retry_max_s,
        reconcile_interval_s=settings.damnit.reconcile_interval_s,
        before_commit=_die_projecting if settings.crash_point == "during_projection" else None,
    )


async def _start_damnit(
    settings: Settings,
    projector: Projector,
    handlers: Handlers,
    source: ProjectionSource,
    closers: list[Any],
) -> None:
    """GUI edits in, then the projection's catch-up of every proposal (in the background)."""
    edits = EditApplier(handlers, source)
    follower = EditFollower(
        settings.kafka, settings.damnit.group_id or f"{settings.group_id}-damnit", edits.on_message
    )
    await follower.start()
    closers.append(follower.stop)

    async def follow(db_id: str, proposal: int) -> None:
        follower.follow(damnit_db_topic(db_id, settings.damnit.topic_prefix))

    projector.on_new_db = follow
    projector.on_pending_edits = edits.apply_values
    projector.on_pending_variables = edits.apply_variables
    for db_id in await source.db_ids():
        follower.follow(damnit_db_topic(db_id, settings.damnit.topic_prefix))
    await projector.start()
    closers.append(projector.stop)


def _die_projecting() -> None:
    log.critical("fault injection: dying inside the DAMNIT database's transaction")
    os._exit(137)


def _die(_: object) -> None:
    log.critical("fault injection: dying before the run file is replaced")
    os._exit(137)


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
    return build_app(settings)
