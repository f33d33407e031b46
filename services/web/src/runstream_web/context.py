"""What the HTTP handlers share: settings, the hub, and the adapters once started."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from runstream_common.errors import ServiceUnavailable
from runstream_common.messages import ReprocessRequested
from starlette.requests import Request
from starlette.responses import Response

from .adapters.database import Database
from .auth import Caller, authorize
from .hub import Hub
from .settings import Settings


class Sender(Protocol):
    """Where edits go (adapters.commands.CommandSender: Kafka)."""

    async def command(self, message: Any, user: str | None) -> None: ...

    async def reprocess(self, request: ReprocessRequested, user: str | None) -> None: ...


@dataclass
class Web:
    settings: Settings
    hub: Hub
    sender: Sender | None = None
    db_: Database | None = field(default=None)
    url: str = ""

    @property
    def db(self) -> Database:
        if self.db_ is None:
            raise ServiceUnavailable("the web service is still starting")
        return self.db_

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
