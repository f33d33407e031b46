"""The ``runstream`` command.

Each service contributes its own sub-commands through the ``runstream.cli``
entry-point group (a ``register(app)`` function), and its long-running process
through the ``runstream.services`` group (a zero-argument factory returning a
FastStream app built from the environment's settings). This package imports no
service directly.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(
    name="runstream",
    help="Process every run of a facility the moment its data lands.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
err = Console(stderr=True)


def _services() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group="runstream.services")}


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help="ingest | executor | store | slurm-gateway")],
    log_level: Annotated[str, typer.Option(help="Python log level")] = "INFO",
    heartbeat_file: Annotated[
        Path | None,
        typer.Option(
            envvar="RUNSTREAM_HEARTBEAT_FILE",
            help="Touch this file every few seconds while the service runs (liveness probes)",
        ),
    ] = None,
) -> None:
    """Run one service in the foreground until SIGINT/SIGTERM."""
    import logging

    import anyio

    available = _services()
    if service not in available:
        err.print(
            f"[red]unknown service {service!r}[/]; choose one of: {', '.join(sorted(available))}"
        )
        raise typer.Exit(2)
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    factory = available[service].load()
    faststream_app = factory()
    if heartbeat_file is not None:
        _add_heartbeat(faststream_app, heartbeat_file)
    anyio.run(faststream_app.run)


def _add_heartbeat(faststream_app: Any, path: Path, interval_s: float = 5.0) -> None:
    import asyncio

    tasks: list[asyncio.Task[None]] = []

    async def beat() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            await asyncio.to_thread(path.touch)
            await asyncio.sleep(interval_s)

    async def start() -> None:
        tasks.append(asyncio.create_task(beat()))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.to_thread(path.unlink, missing_ok=True)

    faststream_app.after_startup(start)
    faststream_app.on_shutdown(stop)


@app.command()
def health(
    heartbeat_file: Annotated[Path, typer.Option(envvar="RUNSTREAM_HEARTBEAT_FILE")],
    max_age: Annotated[
        float, typer.Option(help="Seconds after which the heartbeat is stale")
    ] = 30.0,
) -> None:
    """Exit 0 if the service behind HEARTBEAT_FILE beat within MAX_AGE seconds (liveness probe)."""
    import time

    try:
        age = time.time() - heartbeat_file.stat().st_mtime
    except FileNotFoundError:
        err.print(f"[red]no heartbeat[/]: {heartbeat_file} does not exist (service not started?)")
        raise typer.Exit(1) from None
    if age > max_age:
        err.print(f"[red]stale heartbeat[/]: last beat {age:.0f} s ago (limit {max_age:.0f} s)")
        raise typer.Exit(1)
    typer.echo(f"alive: last beat {age:.1f} s ago")


def _register_plugins() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group="runstream.cli"):
        register = ep.load()
        register(app)


# Commands defined here need no service's CLI: skip importing them (numpy, h5py, ...),
# so `runstream health` stays cheap enough for a liveness probe.
_CORE_COMMANDS = frozenset({"serve", "health"})


def main() -> None:
    from .lazy_rich import defer

    defer()  # help renders without importing Markdown and traceback support
    if not (len(sys.argv) > 1 and sys.argv[1] in _CORE_COMMANDS):
        _register_plugins()
    app()


if __name__ == "__main__":
    main()
