"""The ingest service shell: a FastStream app whose start-up runs :class:`IngestService`."""

from __future__ import annotations

from faststream import FastStream
from faststream.specification import AsyncAPI
from runstream_common import parsers
from runstream_common.health import ConsumerProbe, health_of
from runstream_common.kafka import document_publication, make_broker
from runstream_common.logs import configure_logging
from runstream_common.telemetry import Telemetry, setup_telemetry

from . import __version__
from .service import IngestService
from .settings import Settings


def build_app(settings: Settings, *, telemetry: Telemetry | None = None) -> FastStream:
    telemetry = telemetry or setup_telemetry("ingest", settings.telemetry)
    broker = make_broker(settings.kafka, telemetry, client_id="runstream-ingest")
    topics = settings.kafka.topics
    for topic, parser, what in (
        (topics.runs, parsers.RUNS, "One run message per (proposal, run, trigger), transactional"),
        (topics.run_catalog, parsers.RUN_CATALOG, "Every run seen (compacted)"),
        (topics.processing, parsers.PROCESSING, "Waiting states of proc events"),
    ):
        document_publication(broker, topic, parser, what)
    app = FastStream(
        broker,
        specification=AsyncAPI(
            title="runstream-ingest",
            version=__version__,
            description="Facility events, folder watcher and reprocess requests -> run messages",
        ),
    )

    def fatal(_exc: BaseException) -> None:
        app.exit()

    holder: list[IngestService] = []  # Kafka clients must be created inside the event loop

    @app.on_startup
    async def _prepare() -> None:
        service = IngestService(settings, telemetry, on_fatal=fatal)
        holder.append(service)
        loop = service.loop
        health_of(broker).watch(
            ConsumerProbe(
                name=f"ingest loop ({settings.group_id})",
                consumer=lambda: loop.consumer if loop.consumer_started else None,
                stuck_after_s=settings.stuck_after_s,
                busy_since=lambda: loop.busy_since,
            )
        )
        await service.prepare()

    @app.after_startup
    async def _launch() -> None:
        holder[0].launch()

    @app.on_shutdown
    async def _stop() -> None:
        if holder:
            await holder[0].stop()

    @app.after_shutdown
    async def _exit_status() -> None:
        telemetry.shutdown()
        if holder and holder[0].failed is not None:
            raise SystemExit(1)

    return app


def create() -> FastStream:
    """Entry point of ``runstream serve ingest``: settings from the environment."""
    settings = Settings()
    configure_logging(settings.log_level)
    return build_app(settings)
