"""``runstream cancel P RUN`` and ``runstream slurm-jobs``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from runstream_common.limits import MAX_INT32

if TYPE_CHECKING:  # the commands import what they use: `runstream --help` stays quick
    from runstream_common.messages import JobCancelRequested

    from .settings import Settings

out = Console()
err = Console(stderr=True)


async def send_cancel(settings: Settings, message: JobCancelRequested) -> None:
    from runstream_common.admin import ensure_topics
    from runstream_common.kafka import make_broker, publish
    from runstream_common.topics import run_key

    topic = settings.kafka.topics.job_control
    await ensure_topics(settings.kafka, [topic])
    broker = make_broker(settings.kafka, client_id="runstream-cli")
    await broker.connect()
    try:
        await publish(broker, topic, message, key=run_key(message.proposal, message.run))
    finally:
        await broker.stop()


def cancel(
    proposal: Annotated[int, typer.Argument(min=0, max=MAX_INT32, help="Proposal number")],
    run: Annotated[int, typer.Argument(min=0, max=MAX_INT32, help="Run number")],
    reason: Annotated[str, typer.Option(help="Written into the run's log")] = "cancelled by user",
    as_json: Annotated[bool, typer.Option("--json", help="Print the request as JSON")] = False,
) -> None:
    """Cancel the cluster jobs of one run (the slurm-gateway does it and logs it)."""
    import asyncio

    from runstream_common.errors import RunstreamError
    from runstream_common.messages import JobCancelRequested

    from .settings import Settings

    message = JobCancelRequested(proposal=proposal, run=run, reason=reason)
    try:
        asyncio.run(send_cancel(Settings(), message))
    except RunstreamError as exc:
        err.print(f"[red]could not send the cancel request:[/] {exc}")
        raise typer.Exit(1) from exc
    if as_json:
        out.print_json(message.model_dump_json())
    else:
        out.print(f"cancel requested for proposal {proposal} run {run} (event {message.event_id})")


async def _list(settings: Settings, *, every_instance: bool) -> list[dict[str, object]]:
    from .app import make_slurm_client

    client = make_slurm_client(settings)
    try:
        listing = await client.list()
    finally:
        await client.aclose()
    rows = []
    for info in listing.jobs or []:
        tag = info.tag
        if tag is None or (not every_instance and tag.instance != settings.kafka.topic_prefix):
            continue
        rows.append(
            {
                "job_id": info.job_id,
                "proposal": tag.proposal,
                "run": tag.run,
                "instance": tag.instance,
                "job_request_id": tag.job_request_id,
                "state": info.state.value,
                "held": info.held,
                "slurm_state": info.raw_state,
                "exit_status": info.exit_status,
                "signal": info.signal,
                "reason": info.reason,
                "log_path": info.log_path,
            }
        )
    return rows


def slurm_jobs(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines")] = False,
    every_instance: Annotated[
        bool, typer.Option("--all", help="Also jobs of other installations (topic prefixes)")
    ] = False,
) -> None:
    """List runstream's jobs as Slurm knows them (through slurmrestd)."""
    import asyncio
    import json

    from rich.table import Table
    from runstream_common.errors import RunstreamError

    from .settings import Settings

    try:
        rows = asyncio.run(_list(Settings(), every_instance=every_instance))
    except RunstreamError as exc:
        err.print(f"[red]cannot list Slurm jobs:[/] {exc}")
        raise typer.Exit(1) from exc
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    columns = [
        "job_id",
        "proposal",
        "run",
        "state",
        "slurm_state",
        "exit_status",
        "signal",
        "reason",
    ]
    if every_instance:
        columns.insert(1, "instance")
    table = Table(*(c.replace("_status", "").replace("slurm_state", "slurm") for c in columns))
    for row in rows:
        table.add_row(*(str(row[k]) if row[k] is not None else "" for k in columns))
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("cancel")(cancel)
    app.command("slurm-jobs")(slurm_jobs)
