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

from faststream import FastStream
from faststream.specification import AsyncAPI
from runstream_common import parsers
from runstream_common.admin import ensure_topics
from runstream_common.kafka import document_publication, make_broker
from runstream_common.logs import configure_logging
from runstream_common.telemetry import Telemetry, setup_telemetry

from . import __version__
from .adapters.commands import CommandSender
from .adapters.database import Database
from .adapters.http_server import HttpServer
from .adapters.updates import UpdatesReader
from .context import Web
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


def build_app(settings: Settings, *, telemetry: Telemetry | None = None) -> FastStream:
    telemetry = telemetry or setup_telemetry("web", settings.telemetry)
    instance = uuid.uuid4().hex[:8]
    broker = make_broker(settings.kafka, telemetry, client_id=f"runstream-web-{instance}")
    topics = settings.kafka.topics
    hub = Hub(settings.replay_events, settings.client_queue)
    web = Web(settings=settings, hub=hub, sender=CommandSender(broker, topics))
    reader = UpdatesReader(settings.kafka, hub.publish, client_id=f"runstream-web-{instance}")
    server = HttpServer(build_http(web), settings.host, settings.port)

    document_publication(broker, topics.commands, parsers.COMMANDS, "Edits made in browsers")
    document_publication(broker, topics.reprocess, parsers.REPROCESS, "Reprocess requests")
    app = FastStream(
        broker,
        specification=AsyncAPI(title="runstream-web", version=__version__),
        logger=log,
    )

    @app.on_startup
    async def _open() -> None:
        await ensure_topics(settings.kafka, [topics.updates, topics.commands, topics.reprocess])
        web.db_ = await Database.connect(
            settings.postgres.dsn.get_secret_value(),
            min_size=settings.postgres.min_pool,
            max_size=settings.postgres.max_pool,
        )

    @app.after_startup
    async def _serve() -> None:
        await reader.start()
        host, port = await server.start()
        web.url = _url(settings, host, port)
        log.info("runstream web serving %s (write access: %s)", web.url, settings.write_access)

    @app.on_shutdown
    async def _stop() -> None:
        hub.close()  # ends the event streams, so the server can stop at once
        await server.stop()
        await reader.stop()

    @app.after_shutdown
    async def _close() -> None:
        if web.db_ is not None:
            await web.db_.close()
        telemetry.shutdown()

    return app


def create() -> FastStream:
    """Entry point for ``runstream serve web``: settings from the environment.

    A missing database DSN stops here, before any connection, with the variable to set.
    """
    settings = Settings()
    configure_logging(settings.log_level)
    settings.postgres.dsn.get_secret_value()
    return build_app(settings)
