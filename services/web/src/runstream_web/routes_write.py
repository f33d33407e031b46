"""Write endpoints: every edit becomes a command on Kafka; nothing is written here.

A request must carry ``X-Requested-With: runstream`` (a page of another site
cannot add that header without a CORS preflight, which this service never
allows) and come from a caller allowed to write. The answer is ``202`` with the
command's id: the store's ``values_updated`` (or ``command_rejected``) on the
event stream carries it as ``correlation_id`` (``command_event_id``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from . import edits
from .adapters.commands import reprocess_request_id
from .auth import Caller
from .context import Web, error, json_response, web_of
from .routes_read import path_int, value_path

log = logging.getLogger("runstream.web.edits")
MAX_BODY = 256 * 1024

Handler = Callable[[Request, Web, Caller, dict[str, Any]], Awaitable[Response]]


def guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """CSRF header, permission, JSON body and EditRejected -> 400, around ``handler``."""

    async def endpoint(request: Request) -> Response:
        web = web_of(request)
        if request.headers.get("x-requested-with") != "runstream":
            return error(403, "missing X-Requested-With: runstream")
        caller = web.caller(request)
        if not caller.can_write:
            return error(403, caller.why or "read-only")
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return error(413, "request too large")
        try:
            body = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError:
            return error(400, "the body is not JSON")
        if not isinstance(body, dict):
            return error(400, "the body must be a JSON object")
        try:
            return await handler(request, web, caller, body)
        except edits.EditRejected as exc:
            return error(400, str(exc))

    endpoint.__name__ = handler.__name__
    return endpoint


async def _send(web: Web, command: Any, caller: Caller) -> Response:
    assert web.sender is not None
    await web.sender.command(command, caller.user)
    log.info("%s %s by %s", command.type, command.event_id, caller.user or "anonymous")
    return json_response({"command": str(command.event_id)}, 202)


@guarded
async def set_comment(request: Request, web: Web, caller: Caller, body: dict[str, Any]) -> Response:
    proposal, run = path_int(request, "proposal"), path_int(request, "run")
    if proposal is None or run is None or not await web.db.run_exists(proposal, run):
        return error(404, "no such run")
    command = edits.comment_command(proposal, run, body, web.settings.max_text_length)
    return await _send(web, command, caller)


@guarded
async def set_value(request: Request, web: Web, caller: Caller, body: dict[str, Any]) -> Response:
    where = value_path(request)
    if where is None:
        return error(404, "no such value")
    proposal, run, name = where
    variable = await web.db.variable(proposal, name)
    if variable is None:
        return error(404, f"proposal {proposal} has no variable {name!r}")
    if not await web.db.run_exists(proposal, run):
        return error(404, f"proposal {proposal} has no run {run}")
    command = edits.user_value_command(
        proposal, run, name, variable.user_type, body, web.settings.max_text_length
    )
    return await _send(web, command, caller)


@guarded
async def define_variable(
    request: Request, web: Web, caller: Caller, body: dict[str, Any]
) -> Response:
    proposal = path_int(request, "proposal")
    if proposal is None:
        return error(404, "not a proposal number")
    existing = await web.db.variable_names(proposal)
    command = edits.define_variable_command(proposal, body, existing)
    return await _send(web, command, caller)


@guarded
async def reprocess(request: Request, web: Web, caller: Caller, body: dict[str, Any]) -> Response:
    proposal = path_int(request, "proposal")
    if proposal is None:
        return error(404, "not a proposal number")
    runs = await web.db.run_numbers(proposal)
    computed = await web.db.computed_variable_names(proposal)
    chosen = edits.reprocess_command(proposal, body, runs, computed)
    assert web.sender is not None
    await web.sender.reprocess(chosen.request, caller.user)
    log.info(
        "reprocess %s of p%d (%d runs) by %s",
        chosen.request.event_id, proposal, len(chosen.runs), caller.user or "anonymous",
    )  # fmt: skip
    expected = {reprocess_request_id(chosen.request, run): run for run in chosen.runs}
    return json_response({"request": str(chosen.request.event_id), "runs": expected}, 202)
