"""The HTTP application: the page, its static modules, plotly.js, and the API.

The page is plain ES modules under ``static/`` (no build step). plotly.js is the
file shipped inside the ``plotly`` Python package, served from the installed
package, so the plots work on a beamline network without internet access.
Every response carries a Content-Security-Policy that allows only this
origin's scripts: even a value that slipped into the page as markup could not
run.
"""

from __future__ import annotations

import hashlib
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
from runstream_common.errors import ServiceUnavailable
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import routes_events, routes_read, routes_write
from .context import Web, error

log = logging.getLogger("runstream.web.http")

STATIC = Path(__file__).resolve().parent / "static"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; font-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Adds the security headers to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def plotly_js() -> Path:
    """plotly.min.js from the installed ``plotly`` package."""
    path = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is the plotly package installed whole?")
    return path


class StaticFiles:
    """The page's own files, read once into memory (tiny; no thread per request).

    Always revalidated (``no-cache`` with an ETag), so an upgrade shows at once.
    """

    TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}

    def __init__(self, directory: Path) -> None:
        self.files: dict[str, tuple[bytes, str, str]] = {}
        for path in sorted(directory.rglob("*")):
            if path.is_file() and path.suffix in self.TYPES:
                body = path.read_bytes()
                etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
                media = self.TYPES[path.suffix] + "; charset=utf-8"
                self.files[path.relative_to(directory).as_posix()] = (body, media, etag)

    def response(self, name: str, request: Request) -> Response:
        found = self.files.get(name)
        if found is None:
            return error(404, "not found")
        body, media, etag = found
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=media, headers=headers)


def build_http(web: Web) -> Starlette:
    plotly_path = plotly_js()

    static = StaticFiles(STATIC)

    async def index(request: Request) -> Response:
        return static.response("index.html", request)

    async def static_file(request: Request) -> Response:
        return static.response(str(request.path_params["path"]), request)

    async def vendor_plotly(request: Request) -> Response:
        return FileResponse(
            plotly_path,
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    p, r = "/api/proposals/{proposal}", "/api/proposals/{proposal}/runs/{run}"
    routes: list[Any] = [
        Route("/", index),
        Route("/vendor/plotly.min.js", vendor_plotly),
        Route("/static/{path:path}", static_file),
        Route("/api/session", routes_read.session),
        Route("/api/health", routes_read.health),
        Route("/api/proposals", routes_read.proposals),
        Route(f"{p}/table", routes_read.table),
        Route(f"{p}/events", routes_events.events),
        Route(f"{p}/variables/{{name}}/trend", routes_read.trend),
        Route(f"{p}/user-variables", routes_write.define_variable, methods=["POST"]),
        Route(f"{p}/reprocess", routes_write.reprocess, methods=["POST"]),
        Route(f"{r}/summary/{{name}}", routes_read.summary),
        Route(f"{r}/values/{{name}}/plot", routes_read.plot),
        Route(f"{r}/values/{{name}}", routes_read.value),
        Route(f"{r}/comment", routes_write.set_comment, methods=["POST"]),
        Route(f"{r}/values/{{name}}", routes_write.set_value, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(GZipMiddleware, minimum_size=2048, compresslevel=1),
        ],
        exception_handlers={
            ServiceUnavailable: _unavailable,
            OSError: _unavailable,
            asyncpg.PostgresConnectionError: _unavailable,
            asyncpg.InterfaceError: _unavailable,
            asyncpg.UndefinedTableError: _no_schema,
        },
    )
    app.state.web = web
    return app


async def _unavailable(request: Request, exc: Exception) -> Response:
    """The database (or Kafka) is not answering: 503, and the browser retries."""
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return error(503, f"temporarily unavailable: {exc}")


async def _no_schema(request: Request, exc: Exception) -> Response:
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return error(503, "the database has no runstream schema yet: run `runstream db upgrade`")
