"""The ingest service shell: a FastStream app whose start-up runs :class:`IngestService`."""

from __future__ import annotations

from dataclasses import dataclass, field

from faststream import FastStream
from faststream.kafka import KafkaBroker
from runstream_common import parsers
from runstream_common.health import ConsumerProbe, health_of
from runstream_common.kafka import document_publication, make_broker
from runstream_common.logs import configure_logging
from runstream_common.service import Part, Runtime, Service, assemble
from runstream_common.telemetry import Telemetry, setup_telemetry

from . import __version__
from .service import IngestService, Ports
from .settings import Settings


@dataclass
class IngestRuntime(Runtime):
    """The running :class:`IngestService`: its Kafka clients are created inside the event loop."""

    settings: Settings
    telemetry: Telemetry
    broker: KafkaBroker
    ports: Ports
    service: Part[IngestService] = field(default_factory=lambda: Part("ingest"))

    async def start(self) -> None:
        service = self.service.set(
            IngestService(
                self.settings, self.telemetry, ports=self.ports, on_fatal=lambda _e: self.exit()
            )
        )
        loop = service.loop
        health_of(self.broker).watch(
            ConsumerProbe(
                name=f"ingest loop ({self.settings.group_id})",
                consumer=lambda: loop.consumer if loop.consumer_started else None,
                stuck_after_s=self.settings.stuck_after_s,
                busy_since=lambda: loop.busy_since,
            )
        )
        await service.prepare()

    async def started(self) -> None:
        self.service.get().launch()

    async def stop(self) -> None:
        if self.service.ready:
            await self.service.get().stop()

    async def stopped(self) -> None:
        self.telemetry.shutdown()
        if self.service.ready and self.service.get().failed is not None:
            raise SystemExit(1)


def build_app(
    settings: Settings, *, telemetry: Telemetry | None = None, ports: Ports | None = None
) -> Service[IngestRuntime]:
    """``ports``: the topic admin, the loop's Kafka clients and the state-topic readers
    (default: :meth:`Ports.of`, the real ones)."""
    telemetry = telemetry or setup_telemetry("ingest", settings.telemetry)
    ports = ports or Ports.of(settings)
    broker = make_broker(settings.kafka, telemetry, client_id="runstream-ingest")
    topics = settings.kafka.topics
    for topic, parser, what in (
        (topics.runs, parsers.RUNS, "One run message per (proposal, run, trigger), transactional"),
        (topics.run_catalog, parsers.RUN_CATALOG, "Every run seen (compacted)"),
        (topics.processing, parsers.PROCESSING, "Waiting states of proc events"),
    ):
        document_publication(broker, topic, parser, what)
    return assemble(
        broker,
        IngestRuntime(settings, telemetry, broker, ports),
        title="runstream-ingest",
        version=__version__,
        description="Facility events, folder watcher and reprocess requests -> run messages",
    )


__all__ = ["IngestRuntime", "Ports", "build_app", "create"]


def create() -> FastStream:
    """Entry point of ``runstream serve ingest``: settings from the environment."""
    settings = Settings()
    configure_logging(settings.log_level)
    return build_app(settings).app
