"""The web service: the live run table for browsers, one more client of the topics.

``build_app(settings)`` wires everything; nothing happens at import time. At
start-up it opens the database read-only, positions its reader at the end of
the ``updates`` topic, and serves HTTP (the URL is logged). Browsers read the
table once, then follow the changes over Server-Sent Events; their edits go to
the store as commands, their reprocess requests to ingest. This service writes
nothing itself.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from faststream import FastStream
from runstream_common import parsers
from runstream_common.kafka import document_publication, make_broker
from runstream_common.logs import configure_logging
from runstream_common.service import KafkaTopicAdmin, Runtime, Service, TopicAdmin, assemble
from runstream_common.telemetry import Telemetry, setup_telemetry

from . import __version__
from .adapters.commands import CommandSender
from .adapters.database import Database
from .adapters.http_server import HttpServer
from .adapters.updates import OnUpdate, UpdatesReader
from .context import Reader, Web
from .http import build_http
from .hub import Hub
from .settings import Settings

log = logging.getLogger("runstream.web")


def _url(settings: Settings, host: str, port: int) -> str:
    if settings.public_url:
        return settings.public_url
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


class Follower(Protocol):
    """Follows the ``updates`` topic into the hub (adapters.updates.UpdatesReader)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True)
class Ports:
    """What the web service talks to besides its broker (tests pass in-memory ones)."""

    topics: TopicAdmin
    database: Callable[[], Awaitable[Reader]]
    """Opens the read-only database at start-up; closed after the broker stopped."""
    updates: Callable[[OnUpdate], Follower]

    @classmethod
    def of(cls, settings: Settings, client_id: str) -> Ports:
        async def database() -> Reader:
            return await Database.connect(
                settings.postgres.dsn.get_secret_value(),
                min_size=settings.postgres.min_pool,
                max_size=settings.postgres.max_pool,
            )

        return cls(
            topics=KafkaTopicAdmin(settings.kafka),
            database=database,
            updates=lambda on_update: UpdatesReader(settings.kafka, on_update, client_id=client_id),
        )


@dataclass
class WebRuntime(Runtime):
    """The shared state of the HTTP handlers, the updates follower and the HTTP server."""

    settings: Settings
    telemetry: Telemetry
    ports: Ports
    web: Web
    reader: Follower
    server: HttpServer

    async def start(self) -> None:
        topics = self.settings.kafka.topics
        await self.ports.topics.ensure([topics.updates, topics.commands, topics.reprocess])
        self.web.database.set(await self.ports.database())

    async def started(self) -> None:
        await self.reader.start()
        host, port = await self.server.start()
        self.web.url = _url(self.settings, host, port)
        log.info("runstream web serving %s (write access: %s)", self.web.url,
                 self.settings.write_access)  # fmt: skip

    async def stop(self) -> None:
        self.web.hub.close()  # ends the event streams, so the server can stop at once
        await self.server.stop()
        await self.reader.stop()

    async def stopped(self) -> None:
        database = self.web.database.take()
        if database is not None:
            await database.close()
        self.telemetry.shutdown()


def build_app(
    settings: Settings, *, telemetry: Telemetry | None = None, ports: Ports | None = None
) -> Service[WebRuntime]:
    telemetry = telemetry or setup_telemetry("web", settings.telemetry)
    client_id = f"runstream-web-{uuid.uuid4().hex[:8]}"
    ports = ports or Ports.of(settings, client_id)
    broker = make_broker(settings.kafka, telemetry, client_id=client_id)
    topics = settings.kafka.topics
    hub = Hub(settings.replay_events, settings.client_queue)
    web = Web(settings=settings, hub=hub, sender=CommandSender(broker, topics))
    server = HttpServer(build_http(web), settings.host, settings.port)
    document_publication(broker, topics.commands, parsers.COMMANDS, "Edits made in browsers")
    document_publication(broker, topics.reprocess, parsers.REPROCESS, "Reprocess requests")
    runtime = WebRuntime(settings, telemetry, ports, web, ports.updates(hub.publish), server)
    return assemble(broker, runtime, title="runstream-web", version=__version__, logger=log)


def create() -> FastStream:
    """Entry point for ``runstream serve web``: settings from the environment.

    A missing database DSN stops here, before any connection, with the variable to set.
    """
    settings = Settings()
    configure_logging(settings.log_level)
    settings.postgres.dsn.get_secret_value()
    return build_app(settings).app
