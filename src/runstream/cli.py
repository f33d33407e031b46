"""The ``runstream`` command.

Each service contributes its own sub-commands through the ``runstream.cli``
entry-point group (a ``register(app)`` function), and its long-running process
through the ``runstream.services`` group (a zero-argument factory returning a
FastStream app built from the environment's settings). This package imports no
service directly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

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
    service: Annotated[str, typer.Argument(help="ingest | executor | store | slurm-gateway | web")],
    log_level: Annotated[
        str | None,
        typer.Option(
            help="Python log level (default: the service's settings, e.g. RUNSTREAM_STORE_LOG_LEVEL)"
        ),
    ] = None,
    heartbeat_file: Annotated[
        Path | None,
        typer.Option(
            envvar="RUNSTREAM_HEARTBEAT_FILE",
            help="Write the state of the service's consumers to this file every few seconds "
            "(read by `runstream health`, the liveness and readiness probes)",
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
    if log_level is not None:  # else the service's own settings choose (configure_logging)
        logging.basicConfig(
            level=log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    factory = available[service].load()
    faststream_app = factory()
    if heartbeat_file is not None:
        from runstream_common.health import add_heartbeat

        add_heartbeat(faststream_app, heartbeat_file)
    anyio.run(faststream_app.run)


@app.command()
def health(
    heartbeat_file: Annotated[Path, typer.Option(envvar="RUNSTREAM_HEARTBEAT_FILE")],
    max_age: Annotated[
        float, typer.Option(min=1, help="Seconds after which the heartbeat is stale")
    ] = 30.0,
    ready: Annotated[
        bool,
        typer.Option(
            "--ready",
            help="Readiness: also every consumer joined its group, hears from Kafka, and its "
            "lag moves (default: liveness: the event loop turns and no consumer is stuck)",
        ),
    ] = False,
) -> None:
    """Exit 0 if the service behind HEARTBEAT_FILE is live (or, with --ready, ready).

    The service (``runstream serve`` with a heartbeat file) rewrites the file every
    few seconds with the state of each of its Kafka consumers.
    """
    from runstream_common.health import judge

    ok, line = judge(heartbeat_file, max_age_s=max_age, ready=ready)
    if not ok:
        err.print(f"[red]{line}[/]")
        raise typer.Exit(1)
    typer.echo(line)


_registered: list[bool] = []


def _register_plugins() -> None:
    from importlib.metadata import entry_points

    if _registered:  # main() may run more than once in one process (tests)
        return
    for ep in entry_points(group="runstream.cli"):
        register = ep.load()
        register(app)
    from . import kafka_admin

    kafka_admin.register(app)
    _registered.append(True)


# Commands defined here need no service's CLI: skip importing them (numpy, h5py, ...),
# so `runstream health` stays cheap enough for a liveness probe.
_CORE_COMMANDS = frozenset({"serve", "health"})


def main() -> None:
    """The ``runstream`` command. Any error becomes a message and an exit status, never a
    traceback (``RUNSTREAM_DEBUG=1`` shows it): 2 bad input, 1 anything else."""
    from .lazy_rich import defer

    defer()  # help renders without importing Markdown and traceback support
    try:
        if not (len(sys.argv) > 1 and sys.argv[1] in _CORE_COMMANDS):
            _register_plugins()
        app()
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("RUNSTREAM_DEBUG"):
            raise
        code, text = describe_error(exc)
        err.print(f"[red]error:[/] {escape(text)}")
        sys.exit(code)


def describe_error(exc: BaseException) -> tuple[int, str]:
    """(exit status, one readable line) for an error that reached the command line."""
    kind = type(exc)
    module = kind.__module__
    if kind.__name__ == "ValidationError" and module.startswith("pydantic"):
        errors = exc.errors(include_url=False)  # type: ignore[attr-defined]
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in errors[:5]]
        return 2, f"invalid value ({exc.title}): " + "; ".join(parts)  # type: ignore[attr-defined]
    if module.startswith("asyncpg"):
        if kind.__name__ == "UndefinedTableError":
            return 1, f"the database has no runstream schema ({exc}); run `runstream db upgrade`"
        if kind.__name__ == "ClientConfigurationError":
            return 2, f"bad PostgreSQL DSN: {exc}"
        return 1, f"PostgreSQL: {kind.__name__}: {exc}"
    if module.startswith("aiokafka"):
        return 1, f"Kafka: {kind.__name__}: {exc}"
    if isinstance(exc, ConnectionError | TimeoutError):
        return 1, f"cannot connect: {exc or kind.__name__}"
    if isinstance(exc, OSError):
        return 1, str(exc)
    if isinstance(exc, ValueError):
        return 2, f"invalid value: {exc}"
    return 1, f"unexpected {kind.__name__}: {exc} (RUNSTREAM_DEBUG=1 shows where)"


if __name__ == "__main__":
    main()
