"""Read endpoints: proposals, the run table, one value (plot, history), trends, thumbnails."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from . import __version__
from .adapters import run_files
from .context import error, json_response, web_of

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,199}$")


def path_int(request: Request, key: str) -> int | None:
    text = request.path_params.get(key, "")
    return int(text) if isinstance(text, str) and text.isdigit() and len(text) < 10 else None


def path_name(request: Request) -> str | None:
    name = request.path_params.get("name", "")
    return name if isinstance(name, str) and NAME.match(name) else None


def value_path(request: Request) -> tuple[int, int, str] | None:
    """(proposal, run, variable name) of a ``.../runs/{run}/.../{name}`` URL, if valid."""
    proposal, run, name = (
        path_int(request, "proposal"),
        path_int(request, "run"),
        path_name(request),
    )
    if proposal is None or run is None or name is None:
        return None
    return proposal, run, name


def _query_int(request: Request, key: str) -> int | None:
    text = request.query_params.get(key, "")
    return int(text) if text.isdigit() and len(text) < 10 else None


async def session(request: Request) -> Response:
    web = web_of(request)
    caller = web.caller(request)
    return json_response(
        {
            "can_write": caller.can_write,
            "user": caller.user,
            "why": caller.why,
            "write_access": web.settings.write_access,
            "version": __version__,
        },
        headers={"Cache-Control": "no-store"},
    )


async def health(request: Request) -> Response:
    web = web_of(request)
    try:
        await web.db.ping()
    except Exception as exc:
        return error(503, f"database: {exc}")
    return json_response({"ok": True, "subscribers": web.hub.subscribers, "seq": web.hub.seq})


async def proposals(request: Request) -> Response:
    return json_response(await web_of(request).db.proposals())


async def table(request: Request) -> Response:
    web = web_of(request)
    proposal = path_int(request, "proposal")
    if proposal is None:
        return error(404, "not a proposal number")
    newest, before = _query_int(request, "newest"), _query_int(request, "before")
    cursor = web.hub.cursor()  # before reading: every later change comes after it
    body = await web.db.table_json(proposal, cursor, newest=newest, before=before)
    if body is None:
        return error(404, f"proposal {proposal} is not known to runstream")
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


async def _run_file(request: Request) -> tuple[Path, str] | Response:
    web = web_of(request)
    where = value_path(request)
    if where is None:
        return error(404, "no such value")
    proposal, run, name = where
    context_dir = await web.db.context_dir(proposal)
    if context_dir is None:
        return error(404, f"proposal {proposal} has no context folder")
    return run_files.run_file(context_dir, proposal, run), name


async def summary(request: Request) -> Response:
    """A thumbnail (PNG as stored) or a trendline (as SVG) for a table cell."""
    found = await _run_file(request)
    if isinstance(found, Response):
        return found
    path, name = found
    try:
        stat = await asyncio.to_thread(path.stat)
    except FileNotFoundError:
        return error(404, "no run file yet")
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    try:
        kind, data = await asyncio.to_thread(run_files.summary_bytes, path, name)
    except run_files.NotStored as exc:
        return error(404, str(exc))
    if kind == "png":
        return Response(data, media_type="image/png", headers=headers)
    svg = await asyncio.to_thread(run_files.sparkline_svg, data)
    return Response(svg, media_type="image/svg+xml", headers=headers)


async def value(request: Request) -> Response:
    """The current value of one variable of one run, and its history."""
    web = web_of(request)
    where = value_path(request)
    if where is None:
        return error(404, "no such value")
    proposal, run, name = where
    current, history, variable = await asyncio.gather(
        web.db.value(proposal, run, name),
        web.db.history(proposal, run, name),
        web.db.variable(proposal, name),
    )
    if current is None and not history:
        return error(404, f"run {run} has no value of {name!r}")
    return json_response(
        {
            "proposal": proposal,
            "run": run,
            "name": name,
            "title": variable.title if variable else name,
            "user_type": variable.user_type if variable else None,
            "value": current,
            "history": history,
        }
    )


async def plot(request: Request) -> Response:
    """The stored data of one value, ready to plot (decimated when large)."""
    found = await _run_file(request)
    if isinstance(found, Response):
        return found
    path, name = found
    limit = web_of(request).settings.max_plot_points
    try:
        data = await asyncio.to_thread(run_files.plot_data, path, name, limit)
    except run_files.NotStored as exc:
        return error(404, str(exc))
    except (OSError, ValueError) as exc:
        return error(422, f"cannot read {name}: {exc}")
    return json_response(data)


async def trend(request: Request) -> Response:
    """A numeric variable over every run of the proposal."""
    web = web_of(request)
    proposal, name = path_int(request, "proposal"), path_name(request)
    if proposal is None or name is None:
        return error(404, "no such variable")
    return json_response({"name": name, "points": await web.db.trend(proposal, name)})
