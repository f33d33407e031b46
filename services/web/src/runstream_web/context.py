"""What the HTTP handlers share: settings, the hub, and the adapters once started."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from runstream_common.messages import ReprocessRequested
from runstream_common.service import Part
from starlette.requests import Request
from starlette.responses import Response

from .adapters.database import Variable
from .auth import Caller, authorize
from .hub import Hub
from .settings import Settings


class Sender(Protocol):
    """Where edits go (adapters.commands.CommandSender: Kafka)."""

    async def command(self, message: Any, user: str | None) -> None: ...

    async def reprocess(self, request: ReprocessRequested, user: str | None) -> None: ...


class Reader(Protocol):
    """The web service's queries (adapters.database.Database: read-only PostgreSQL)."""

    async def close(self) -> None: ...
    async def ping(self) -> None: ...
    async def proposals(self) -> list[dict[str, Any]]: ...
    async def context_dir(self, proposal: int) -> str | None: ...
    async def variable(self, proposal: int, name: str) -> Variable | None: ...
    async def variable_names(self, proposal: int) -> set[str]: ...
    async def computed_variable_names(self, proposal: int) -> set[str]: ...
    async def run_numbers(self, proposal: int) -> list[int]: ...
    async def run_exists(self, proposal: int, run: int) -> bool: ...
    async def table_json(
        self, proposal: int, cursor: str, *, newest: int | None = None, before: int | None = None
    ) -> bytes | None: ...
    async def value(self, proposal: int, run: int, name: str) -> dict[str, Any] | None: ...
    async def history(
        self, proposal: int, run: int, name: str, limit: int = 500
    ) -> list[dict[str, Any]]: ...
    async def trend(self, proposal: int, name: str) -> list[list[Any]]: ...


@dataclass
class Web:
    """What the HTTP handlers share; ``database`` is opened at start-up."""

    settings: Settings
    hub: Hub
    sender: Sender | None = None
    database: Part[Reader] = field(default_factory=lambda: Part("the web service"))
    url: str = ""

    @property
    def db(self) -> Reader:
        return self.database.get()

    def caller(self, request: Request) -> Caller:
        client = request.client.host if request.client else None
        return authorize(self.settings, request.headers, client)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def error(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def web_of(request: Request) -> Web:
    web: Web = request.app.state.web
    return web
