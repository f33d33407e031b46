"""``runstream proposal add|list|remove`` and ``runstream reprocess``.

Kafka settings come from the environment (``RUNSTREAM_KAFKA_*``), as for the
service. Exit status: 0 done, 1 failed (runs failed, Kafka unreachable, nothing
to do), 2 bad input.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from runstream_common.limits import MAX_INT32

if TYPE_CHECKING:  # the commands import what they use: `runstream --help` stays quick
    from runstream_common.messages import ReprocessRequested, RunKnown, Selection, Trigger

    from .adapters.updates import UpdatesFollower
    from .progress import RequestTracker
    from .settings import Settings
    from .tables import ProposalTable, RunCatalog

out = Console()
err = Console(stderr=True, soft_wrap=True)

proposal_app = typer.Typer(help="Register the proposals runstream processes.", no_args_is_help=True)


class DataChoice(StrEnum):
    raw = "raw"
    proc = "proc"
    all = "all"


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/] {message}")
    return typer.Exit(code)


def _run(coro: Any) -> Any:
    # aiokafka logs connection retries and metadata races as warnings; our errors say it better
    import asyncio
    import logging

    from runstream_common.errors import RunstreamError

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(coro)
    except RunstreamError as exc:
        raise _fail(str(exc)) from exc


async def _proposals(settings: Settings) -> ProposalTable:
    from runstream_common import parsers
    from runstream_common.admin import ensure_topics

    from .adapters.compacted import read_table
    from .tables import fold_proposals

    topic = settings.kafka.topics.proposals
    await ensure_topics(settings.kafka, [topic], compacted={topic})
    return fold_proposals(await read_table(settings.kafka, topic, parsers.PROPOSALS))


async def _catalog(settings: Settings) -> RunCatalog:
    from runstream_common import parsers
    from runstream_common.admin import ensure_topics
    from runstream_common.messages import RunKnown

    from .adapters.compacted import read_table
    from .tables import RunCatalog

    topic = settings.kafka.topics.run_catalog
    await ensure_topics(settings.kafka, [topic], compacted={topic})
    catalog = RunCatalog()
    for entry in await read_table(settings.kafka, topic, parsers.RUN_CATALOG):
        assert isinstance(entry, RunKnown)
        catalog.merge(entry)
    return catalog


# -- proposal ----------------------------------------------------------------------------------


@proposal_app.command("add")
def proposal_add(
    proposal: Annotated[int, typer.Argument(min=0, max=MAX_INT32, help="Proposal number")],
    context_dir: Annotated[
        Path, typer.Option("--context-dir", help="Folder for context.py and the outputs (created)")
    ],
    data_root: Annotated[
        Path | None,
        typer.Option(
            "--data-root",
            help="The proposal's data folder, or a root holding <instrument>/<cycle>/pNNNNNN",
        ),
    ] = None,
) -> None:
    """Register (or re-register) a proposal; write a starter context.py if the folder has none."""
    from runstream_common.admin import ensure_topics
    from runstream_common.messages import ProposalRegistered
    from runstream_common.topics import proposal_key

    from .adapters.publisher import publish_once
    from .settings import Settings
    from .starter import write_starter

    settings = Settings()
    context_dir = context_dir.expanduser().resolve()
    if context_dir.exists() and not context_dir.is_dir():
        raise _fail(f"--context-dir {context_dir} exists and is not a folder", 2)
    if data_root is not None:
        data_root = data_root.expanduser().resolve()
        if not data_root.is_dir():
            raise _fail(f"--data-root {data_root} is not a folder", 2)
    try:
        created = write_starter(context_dir, proposal)
    except OSError as exc:
        raise _fail(f"cannot write to {context_dir}: {exc}", 2) from exc
    proposal_dir = settings.layout().proposal_dir(proposal, str(data_root) if data_root else None)

    async def go() -> None:
        topic = settings.kafka.topics.proposals
        await ensure_topics(settings.kafka, [topic], compacted={topic})
        message = ProposalRegistered(
            proposal=proposal,
            context_dir=str(context_dir),
            data_root=str(data_root) if data_root else None,
        )
        await publish_once(settings.kafka, [(topic, proposal_key(proposal), message)])

    _run(go())
    out.print(f"registered proposal [bold]{proposal}[/] with context folder {context_dir}")
    if created:
        out.print(f"wrote a starter context file: {created}")
    if proposal_dir is None:
        root = data_root or settings.data_root
        err.print(
            f"[yellow]warning:[/] no proposal folder for p{proposal} under {root} yet "
            f"(looked for {root}/raw and {root}/{settings.proposal_dir_glob.format(proposal=proposal)}); "
            "events for it are dead-lettered until it exists"
        )
    else:
        out.print(f"proposal data folder: {proposal_dir}")


@proposal_app.command("list")
def proposal_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
) -> None:
    """The registered proposals (read from the compacted proposals topic)."""
    import json

    from rich.table import Table

    from .settings import Settings

    settings = Settings()
    table = _run(_proposals(settings))
    rows = [
        {
            "proposal": r.proposal,
            "context_dir": r.context_dir,
            "data_root": r.data_root,
            "registered_at": r.registered_at.isoformat(),
        }
        for r in table.all()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        out.print("no proposals registered")
        return
    t = Table(title="Registered proposals")
    for col in ("Proposal", "Context folder", "Data root", "Registered (UTC)"):
        t.add_column(col)
    for row in rows:
        t.add_row(
            str(row["proposal"]),
            row["context_dir"],
            row["data_root"] or f"[dim](default) {settings.data_root}[/]",
            row["registered_at"][:19],
        )
    out.print(t)


@proposal_app.command("remove")
def proposal_remove(proposal: Annotated[int, typer.Argument(min=0, max=MAX_INT32)]) -> None:
    """Stop processing a proposal (its data and results are kept)."""
    from runstream_common.messages import ProposalRemoved
    from runstream_common.topics import proposal_key

    from .adapters.publisher import publish_once
    from .settings import Settings

    settings = Settings()

    async def go() -> bool:
        table = await _proposals(settings)
        if table.get(proposal) is None:
            return False
        topic = settings.kafka.topics.proposals
        await publish_once(
            settings.kafka, [(topic, proposal_key(proposal), ProposalRemoved(proposal=proposal))]
        )
        return True

    if not _run(go()):
        raise _fail(f"proposal {proposal} is not registered", 1)
    out.print(f"removed proposal [bold]{proposal}[/]")


@proposal_app.command("runs")
def proposal_runs(
    proposal: Annotated[int, typer.Argument(min=0, max=MAX_INT32)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
) -> None:
    """The runs of a proposal that ingest knows (the run catalog; no database needed)."""
    import json

    from rich.table import Table
    from runstream_common import parsers
    from runstream_common.admin import ensure_topics

    from .adapters.compacted import read_table
    from .settings import Settings
    from .tables import RunCatalog

    settings = Settings()

    async def go() -> list[RunKnown]:
        topic = settings.kafka.topics.run_catalog
        await ensure_topics(settings.kafka, [topic], compacted={topic})
        catalog = RunCatalog()
        for entry in await read_table(settings.kafka, topic, parsers.RUN_CATALOG):
            if entry.proposal == proposal:
                catalog.merge(entry)
        return [e for r in catalog.runs(proposal) if (e := catalog.get(proposal, r)) is not None]

    entries = _run(go())
    if as_json:
        print(
            json.dumps(
                [
                    e.model_dump(
                        mode="json", include={"proposal", "run", "raw_seen", "proc_seen", "source"}
                    )
                    for e in entries
                ],
                indent=2,
            )
        )
        return
    if not entries:
        out.print(f"no runs known for proposal {proposal}")
        return
    t = Table(title=f"Runs of proposal {proposal}")
    for col in ("Run", "raw", "proc", "Facility fields"):
        t.add_column(col)
    for e in entries:
        fields = ", ".join(f"{k}={v}" for k, v in sorted(e.source.items()))
        t.add_row(str(e.run), "yes" if e.raw_seen else "", "yes" if e.proc_seen else "", fields)
    out.print(t)


# -- reprocess ---------------------------------------------------------------------------------


def _parse_runs(runs: list[str]) -> list[int] | None:
    from runstream_common.runranges import parse_runs

    try:
        return parse_runs(runs)
    except ValueError as exc:
        raise _fail(f"bad RUNS: {exc}", 2) from exc


def reprocess(
    proposal: Annotated[int, typer.Argument(min=0, max=MAX_INT32, help="Proposal number")],
    runs: Annotated[
        list[str],
        typer.Argument(
            help="Runs: numbers, ranges and lists (42 10-20 1,3,5-7), or 'all' (every known run)"
        ),
    ],
    match: Annotated[
        list[str] | None,
        typer.Option(
            "--match",
            metavar="TEXT",
            help="Only variables whose title contains TEXT, any case (repeatable; DAMNIT's --match)",
        ),
    ] = None,
    var: Annotated[
        list[str] | None,
        typer.Option("--var", metavar="NAME", help="Only the variable NAME (repeatable)"),
    ] = None,
    data: Annotated[DataChoice, typer.Option("--data", help="Which data to read")] = DataChoice.all,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the processing until every run is finished")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option(min=0, help="With --wait: give up after this many seconds")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
) -> None:
    """Process runs again with the current context file (all variables, or a selection)."""
    from runstream_common.messages import Selection, Trigger

    from .settings import Settings

    settings = Settings()
    wanted = _parse_runs(runs)
    trigger = Trigger(data.value)
    selection = Selection(names=tuple(var or ()), match=tuple(match or ()))
    code = _run(_reprocess(settings, proposal, wanted, trigger, selection, wait, timeout, as_json))
    if code:
        raise typer.Exit(code)


async def _reprocess(
    settings: Settings,
    proposal: int,
    wanted: list[int] | None,
    trigger: Trigger,
    selection: Selection,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> int:
    import json

    from runstream_common.messages import ReprocessRequested

    from .ids import reprocess_request_id
    from .progress import RequestTracker

    present, missing = await _runs_on_disk(settings, proposal, wanted, trigger)
    if not present:
        if not as_json:
            err.print("[red]nothing to reprocess[/]")
        else:
            print(json.dumps({"sent": [], "skipped": missing}))
        return 1

    request = ReprocessRequested(
        proposal=proposal,
        runs="all" if wanted is None else tuple(present),
        trigger=trigger,
        selection=selection,
    )
    follower = await _updates_follower(settings) if wait else None
    try:
        await _send_reprocess(settings, request, len(present), quiet=as_json)
        if follower is None:
            if as_json:
                print(
                    json.dumps(
                        {"request": str(request.event_id), "sent": present, "skipped": missing}
                    )
                )
            return 0
        expected = {
            reprocess_request_id(request.event_id, proposal, run, trigger): run for run in present
        }
        tracker = RequestTracker(expected, missing)
        finished = await _follow(follower, tracker, timeout, quiet=as_json)
    finally:
        if follower is not None:
            await follower.stop()
    return _report(tracker, str(request.event_id), finished, as_json)


async def _updates_follower(settings: Settings) -> UpdatesFollower:
    """A started reader of the updates feed (before the request goes out: nothing is missed)."""
    from runstream_common.admin import ensure_topics

    from .adapters.updates import UpdatesFollower

    follower = UpdatesFollower(settings.kafka)
    await ensure_topics(settings.kafka, [settings.kafka.topics.updates])
    await follower.start()
    return follower


async def _send_reprocess(
    settings: Settings, request: ReprocessRequested, runs: int, *, quiet: bool
) -> None:
    """Publish the request on the reprocess topic and say so."""
    from runstream_common.admin import ensure_topics
    from runstream_common.topics import proposal_key

    from .adapters.publisher import publish_once

    topic = settings.kafka.topics.reprocess
    await ensure_topics(settings.kafka, [topic])
    await publish_once(settings.kafka, [(topic, proposal_key(request.proposal), request)])
    selection = request.selection
    what = "all variables" if selection.is_all else _describe(selection)
    if not quiet:
        out.print(
            f"asked to reprocess {runs} run(s) of p{request.proposal} ({request.trigger.value} "
            f"data, {what}); request {request.event_id}"
        )


async def _runs_on_disk(
    settings: Settings, proposal: int, wanted: list[int] | None, trigger: Trigger
) -> tuple[list[int], list[int]]:
    """(present, missing) among the wanted runs (default: the catalog's); says which are skipped."""
    import asyncio

    from runstream_common.messages import Trigger

    from .adapters.disk import LocalDisk

    proposals = await _proposals(settings)
    registration = proposals.get(proposal)
    if registration is None:
        raise _fail(f"proposal {proposal} is not registered (runstream proposal add)", 2)
    disk = LocalDisk(settings.layout(), settings.settle_s)
    proposal_dir = await asyncio.to_thread(disk.proposal_dir, registration)
    if proposal_dir is None:
        raise _fail(f"the data folder of proposal {proposal} cannot be found", 1)
    candidates = wanted if wanted is not None else (await _catalog(settings)).runs(proposal)
    kind = Trigger.PROC if trigger is Trigger.PROC else Trigger.RAW

    def on_disk() -> tuple[list[int], list[int]]:
        present: list[int] = []
        absent: list[int] = []
        for run in candidates:
            (present if disk.exists(disk.run_dir(proposal_dir, run, kind)) else absent).append(run)
        return present, absent

    present, missing = await asyncio.to_thread(on_disk)
    for run in missing:
        err.print(
            f"[yellow]skipped:[/] run {run} of p{proposal} does not exist on disk "
            f"({disk.run_dir(proposal_dir, run, kind)})"
        )
    return present, missing


def _describe(selection: Selection) -> str:
    parts = [f"--var {n}" for n in selection.names] + [f"--match {m}" for m in selection.match]
    return " ".join(parts)


async def _follow(
    follower: UpdatesFollower, tracker: RequestTracker, timeout: float | None, *, quiet: bool
) -> bool:
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    deadline = None if timeout is None else time.monotonic() + timeout
    with Progress(
        TextColumn("[bold]processing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
    ) as progress:
        task = progress.add_task("runs", total=tracker.total, last="")
        async for state in follower.states():
            if state is not None:
                done = tracker.observe(state)
                if done is not None:
                    progress.update(
                        task, completed=tracker.done, last=f"r{done.run}: {done.status}"
                    )
            if tracker.complete:
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
    return False  # pragma: no cover - the feed never ends


def _report(tracker: RequestTracker, request_id: str, finished: bool, as_json: bool) -> int:
    import json

    from rich.table import Table

    summary = tracker.summary()
    if as_json:
        print(
            json.dumps(
                {
                    "request": request_id,
                    "ok": summary.ok,
                    "failed": summary.failed,
                    "skipped": summary.skipped,
                    "pending": summary.pending,
                    "variables": summary.variables,
                    "failures": {
                        str(o.run): o.reason for o in tracker.outcomes() if o.run in summary.failed
                    },
                }
            )
        )
    else:
        t = Table(title="Reprocessing summary")
        for col in ("ok", "failed", "skipped", "not finished"):
            t.add_column(col, justify="right")
        t.add_row(
            *(str(len(x)) for x in (summary.ok, summary.failed, summary.skipped, summary.pending))
        )
        out.print(t)
        if summary.variables:
            out.print(
                "variables: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.variables.items()))
            )
        for o in tracker.outcomes():
            if o.run in summary.failed:
                out.print(f"[red]run {o.run} failed:[/] {o.reason or 'no reason given'}")
        if not finished:
            err.print(f"[yellow]gave up waiting; runs not finished: {summary.pending}[/]")
    return 1 if summary.failed or not finished else 0


def register(app: typer.Typer) -> None:
    """Add ``proposal`` and ``reprocess`` to the root ``runstream`` command."""
    app.add_typer(proposal_app, name="proposal")
    app.command("reprocess")(reprocess)


def main() -> None:
    """``python -m runstream_ingest.cli``: these commands without the other services' plugins."""
    root = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False)

    @root.callback()
    def _root() -> None:
        """runstream ingest commands."""

    register(root)
    root()


if __name__ == "__main__":
    main()
