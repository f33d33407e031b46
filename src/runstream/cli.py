"""The ``runstream`` command.

Each service contributes its own sub-commands through the ``runstream.cli``
entry-point group (a ``register(app)`` function), and its long-running process
through the ``runstream.services`` group (a zero-argument factory returning a
FastStream app built from the environment's settings). This package imports no
service directly.
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import entry_points
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
    return {ep.name: ep for ep in entry_points(group="runstream.services")}


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help="ingest | executor | store | slurm-gateway")],
    log_level: Annotated[str, typer.Option(help="Python log level")] = "INFO",
) -> None:
    """Run one service in the foreground until SIGINT/SIGTERM."""
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
    anyio.run(faststream_app.run)


def _register_plugins() -> None:
    for ep in entry_points(group="runstream.cli"):
        register = ep.load()
        register(app)


def main() -> None:
    _register_plugins()
    app()


if __name__ == "__main__":
    main()
