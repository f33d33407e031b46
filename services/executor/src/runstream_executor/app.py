"""The executor service: run messages in, results and processing state out."""

from __future__ import annotations

from faststream import FastStream
from faststream.specification import AsyncAPI
from runstream_common import parsers
from runstream_common.admin import ensure_topics
from runstream_common.inflight import subscribe_in_flight
from runstream_common.kafka import Delivery, document_publication, make_broker, subscribe
from runstream_common.logs import configure_logging
from runstream_common.messages import ProposalSettingsSet, RunRequested
from runstream_common.poison import CrashLedger
from runstream_common.registry import ProposalRegistry
from runstream_common.telemetry import Telemetry, setup_telemetry

from . import __version__
from .adapters.kafka import KafkaPublisher
from .handlers import RunProcessor
from .pools import PoolSet
from .registry import RunGuard
from .settings import Settings


def build_app(settings: Settings, *, telemetry: Telemetry | None = None) -> FastStream:
    telemetry = telemetry or setup_telemetry("executor", settings.telemetry)
    broker = make_broker(settings.kafka, telemetry, client_id="runstream-executor")
    topics = settings.kafka.topics
    pools = PoolSet(settings)
    processor = RunProcessor(settings, pools, KafkaPublisher(broker), topics)
    registry = ProposalRegistry(
        settings.kafka, client_id="runstream-executor-registry", wait_s=settings.registry_wait_s
    )
    guard = RunGuard(registry, settings.data_root)

    async def handle_run(message: RunRequested, delivery: Delivery) -> None:
        """Evaluate the context file for one run and publish its results.

        Its folders must be the proposal's registered ones (else dead-lettered, nothing runs).
        """
        await processor.process(await guard.checked(message))

    async def record_poison(message: RunRequested | None, reason: str) -> None:
        if message is not None:
            await processor.poisoned(message, reason)

    async def handle_proposal_settings(message: ProposalSettingsSet, delivery: Delivery) -> None:
        """Keep the latest settings of every proposal (context_python, ...)."""
        processor.proposal_settings[message.proposal] = dict(message.settings)

    # A run that was being evaluated every time the executor died (max_crashes times)
    # is recorded as failed and dead-lettered instead of killing it again.
    ledger = CrashLedger(
        settings.kafka,
        topic=topics.attempts,
        group_id=settings.consumer_group,
        max_crashes=settings.max_crashes,
    )
    # Several runs at once; offsets are committed per partition up to the oldest unfinished
    # run, and messages of the same run (key) never overtake each other.
    runs = subscribe_in_flight(
        broker,
        topics.runs,
        group_id=settings.consumer_group,
        parser=parsers.RUNS,
        handler=handle_run,
        settings=settings,
        limit=settings.runs_in_flight,
        drain_timeout_s=settings.drain_timeout_s,
        tracer_provider=telemetry.tracer_provider,
        ledger=ledger,
        on_poison=record_poison,
        service="executor",
        # Records never block polling (partitions are paused when full), but a rebalance
        # waits for the passes running, up to this long: a pass ends by its deadline,
        # plus loading the context and writing the fragment.
        max_poll_interval_ms=max_poll_interval_ms(settings),
    )
    # Every instance needs the whole compacted table: no group (no offsets), from the start.
    subscribe(
        broker,
        topics.proposal_settings,
        group_id=None,
        parser=parsers.PROPOSAL_SETTINGS,
        handler=handle_proposal_settings,
        settings=settings,
        auto_offset_reset="earliest",
    )
    for topic, parser, what in (
        (
            topics.results,
            parsers.RESULTS,
            "Variable definitions and results (claim check: HDF5 fragments)",
        ),
        (topics.processing, parsers.PROCESSING, "Processing state of each pass"),
        (topics.job_requests, parsers.JOB_REQUESTS, "Cluster variables to run as batch jobs"),
    ):
        document_publication(broker, topic, parser, what)
    app = FastStream(
        broker, specification=AsyncAPI(title="runstream-executor", version=__version__)
    )
    app.processor = processor  # type: ignore[attr-defined]  # for tests and introspection
    app.runs = runs  # type: ignore[attr-defined]
    app.registry = registry  # type: ignore[attr-defined]

    @app.on_startup
    async def _start() -> None:
        await ensure_topics(
            settings.kafka,
            [
                topics.runs,
                topics.results,
                topics.processing,
                topics.job_requests,
                topics.proposal_settings,
                topics.proposals,
                topics.attempts,
            ],
            compacted=set(topics.compacted()),
        )
        # Read to its end before the broker starts: the first run message is judged on it.
        await registry.start()
        await ledger.start()
        await pools.get()  # warm the default pool before the first run arrives

    @app.on_shutdown
    async def _drain() -> None:
        await runs.drain()  # before the broker stops: running passes still publish
        await ledger.stop()

    @app.after_shutdown
    async def _stop() -> None:
        await registry.stop()
        await pools.close()

    return app


def max_poll_interval_ms(settings: Settings) -> int:
    """Longer than any pass may take (its deadline, the context load, the fragment write)."""
    return int((settings.pass_timeout_s + settings.context_load_timeout_s + 600) * 1000)


def create() -> FastStream:
    settings = Settings()
    configure_logging(settings.log_level)
    return build_app(settings)
