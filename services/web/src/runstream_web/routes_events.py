"""The live feed of one proposal as Server-Sent Events.

``GET /api/proposals/{p}/events?since=<cursor>``: the cursor comes with the
table snapshot; the browser's EventSource sends the id of the last event it saw
(``Last-Event-ID``) when it reconnects by itself, and that wins. Events:

- ``update``: one message of the ``updates`` topic, as the store published it;
  its ``id`` is the cursor after it;
- ``reset``: the cursor cannot be continued (the service restarted, or the
  browser fell too far behind): reload the table and connect again;
- comments (``: keep-alive``) on an idle stream, so proxies keep it open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .context import error, web_of
from .hub import Closed, Event, Gap, Hub, Subscription
from .routes_read import path_int

HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def frame(hub: Hub, event: Event) -> bytes:
    return b"id: %s:%d\nevent: update\ndata: %s\n\n" % (hub.epoch.encode(), event.seq, event.data)


def reset_frame(reason: str) -> bytes:
    return b"event: reset\ndata: %s\n\n" % orjson.dumps({"reason": reason})


async def _stream(hub: Hub, sub: Subscription, keepalive_s: float) -> AsyncIterator[bytes]:
    try:
        yield b"retry: 2000\n: connected\n\n"
        while True:
            try:
                batch = await sub.next_batch(keepalive_s)
            except Gap as exc:
                yield reset_frame(str(exc))
                return
            except Closed:
                return
            if not batch:
                yield b": keep-alive\n\n"
                continue
            yield b"".join(frame(hub, e) for e in batch)
    finally:
        hub.unsubscribe(sub)


async def events(request: Request) -> Response:
    web = web_of(request)
    proposal = path_int(request, "proposal")
    if proposal is None:
        return error(404, "not a proposal number")
    since = request.headers.get("last-event-id") or request.query_params.get("since")
    try:
        sub = web.hub.subscribe(proposal, since)
    except Gap as exc:
        frame_ = b"retry: 2000\n\n" + reset_frame(str(exc))

        async def reset() -> AsyncIterator[bytes]:
            yield frame_

        return StreamingResponse(reset(), media_type="text/event-stream", headers=HEADERS)
    return StreamingResponse(
        _stream(web.hub, sub, web.settings.keepalive_s),
        media_type="text/event-stream",
        headers=HEADERS,
    )
