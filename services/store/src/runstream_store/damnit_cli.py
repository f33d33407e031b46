"""``runstream damnit status|sync|import``: the DAMNIT databases the store keeps.

``status`` reads PostgreSQL and the file; ``sync`` and ``import`` are commands the store
carries out (it is the only writer of PostgreSQL and of files) and answers on the feed.
``import`` also registers the folder with ingest (as ``runstream proposal add`` does),
so the proposal goes on being processed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any
from uuid import uuid4

import typer
from rich.console import Console
from rich.table import Table

from .cli import DsnOption, WaitOption, _connect, _dsn, _fail, _run_command

out = Console()
damnit_app = typer.Typer(
    help="DAMNIT's runs.sqlite in each context folder (for DAMNIT's GUI and API).",
    no_args_is_help=True,
)


@damnit_app.command("status")
def status(
    proposal: Annotated[int, typer.Argument(help="Proposal number")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    dsn: DsnOption = None,
) -> None:
    """Where the DAMNIT database is, its topic, how far behind PostgreSQL it is, the last error."""
    from runstream_common.topics import damnit_db_topic

    from .damnit.sqlite_file import DB_NAME, read_state

    async def go() -> tuple[Any, dict[int, int], int]:
        conn = await _connect(_dsn(dsn))
        try:
            row = await conn.fetchrow(
                "SELECT p.context_dir, p.meta_seq, d.db_id, d.last_error, d.last_error_at, "
                "d.synced_at FROM proposals p LEFT JOIN damnit_projections d USING (proposal) "
                "WHERE p.proposal = $1",
                proposal,
            )
            seqs = await conn.fetch(
                "SELECT run, changed_seq FROM runs WHERE proposal = $1", proposal
            )
        finally:
            await conn.close()
        return row, {r["run"]: r["changed_seq"] for r in seqs}, 0

    row, seqs, _ = asyncio.run(go())
    if row is None or row["context_dir"] is None:
        raise _fail(f"proposal {proposal} has no context folder in the database yet")
    path = Path(row["context_dir"]) / DB_NAME
    state = read_state(path, proposal)
    behind = sorted(r for r, s in seqs.items() if state is None or state.seqs.get(r, -1) < s)
    from .settings import Settings

    prefix = Settings().damnit.topic_prefix
    info = {
        "proposal": proposal,
        "path": str(path),
        "exists": state is not None,
        "db_id": (state.db_id if state else None) or row["db_id"],
        "topic": damnit_db_topic(row["db_id"], prefix) if row["db_id"] else None,
        "runs": len(seqs),
        "runs_behind": len(behind),
        "variables_behind": state is None or row["meta_seq"] > state.meta_seq,
        "last_error": row["last_error"],
        "last_error_at": row["last_error_at"].isoformat() if row["last_error_at"] else None,
    }
    if as_json:
        print(json.dumps(info, indent=1))
        return
    table = Table(title=f"DAMNIT database of proposal {proposal}", show_header=False)
    for key, value in info.items():
        table.add_row(key, "" if value is None else str(value))
    out.print(table)
    if behind or info["variables_behind"]:
        raise typer.Exit(1)


@damnit_app.command("sync")
def sync(
    proposal: Annotated[int, typer.Argument(help="Proposal number")],
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Rewrite every row (keeps the db_id)")
    ] = False,
    wait: WaitOption = 120.0,
) -> None:
    """Have the store bring runs.sqlite up to date with PostgreSQL now (or rebuild it)."""
    from runstream_common.messages import SyncDamnit

    event_id = uuid4()
    command = SyncDamnit(
        event_id=event_id, correlation_id=str(event_id), proposal=proposal, rebuild=rebuild
    )
    answer = _run_command(command, wait, {"damnit_synced"})
    if answer is not None:
        out.print(f"{answer.path}: {answer.runs_written} runs written (db_id {answer.db_id})")


@damnit_app.command("import")
def import_folder(
    folder: Annotated[
        Path, typer.Argument(help="The DAMNIT folder (runs.sqlite, extracted_data/)")
    ],
    proposal: Annotated[
        int | None, typer.Option("--proposal", help="Proposal (default: the database's)")
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option("--data-root", help="The proposal's data folder (raw/, proc/)")
    ] = None,
    register: Annotated[
        bool, typer.Option("--register/--no-register", help="Register the proposal with ingest")
    ] = True,
    wait: WaitOption = 300.0,
) -> None:
    """Move a DAMNIT proposal over: its runs, values, comments, user variables, tags and
    settings go into PostgreSQL; the same folder is kept up to date from then on."""
    from runstream_common.messages import ImportDamnit

    folder = folder.expanduser().resolve()
    if not (folder / "runs.sqlite").is_file():
        raise _fail(f"{folder} has no runs.sqlite: not a DAMNIT folder", 2)
    if proposal is None:
        import sqlite3

        conn = sqlite3.connect(f"file:{folder / 'runs.sqlite'}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM metameta WHERE key = 'proposal'").fetchone()
        finally:
            conn.close()
        if row is None or row[0] is None:
            raise _fail("the database does not say its proposal: give --proposal", 2)
        proposal = int(row[0])
    if data_root is not None and not data_root.is_dir():
        raise _fail(f"--data-root {data_root} is not a folder", 2)
    event_id = uuid4()
    command = ImportDamnit(
        event_id=event_id, correlation_id=str(event_id), proposal=proposal, folder=str(folder)
    )
    answer = _run_command(command, wait, {"damnit_synced"})
    if answer is not None:
        counts = ", ".join(f"{v} {k}" for k, v in answer.imported.items())
        out.print(f"imported {folder} into proposal {proposal}: {counts}")
    if register:
        _register(proposal, folder, data_root)
        out.print(f"proposal {proposal} registered with context folder {folder}")


def _register(proposal: int, folder: Path, data_root: Path | None) -> None:
    from runstream_common.admin import ensure_topics
    from runstream_common.kafka import make_broker, publish
    from runstream_common.messages import ProposalRegistered
    from runstream_common.topics import proposal_key

    from .settings import Settings

    settings = Settings()
    root = str(data_root.resolve()) if data_root else None

    async def go() -> None:
        topic = settings.kafka.topics.proposals
        await ensure_topics(settings.kafka, [topic], compacted={topic})
        broker = make_broker(settings.kafka, client_id="runstream-cli")
        await broker.connect()
        try:
            await publish(
                broker,
                topic,
                ProposalRegistered(
                    proposal=proposal,
                    context_dir=str(folder),
                    data_root=root,
                ),
                key=proposal_key(proposal),
            )
        finally:
            await broker.stop()

    try:
        asyncio.run(go())
    except Exception as exc:
        raise _fail(f"cannot register proposal {proposal} with ingest: {exc}", 2) from exc
