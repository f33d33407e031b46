"""``runstream db upgrade``, ``runstream table``, ``runstream comment``, ``runstream config``.

``table`` and the read-only form of ``config`` read PostgreSQL directly. Changes
go to the store as commands on Kafka; ``comment`` and ``config`` then wait for the
store's answer on the updates feed (a rejection exits 1 with the reason).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from runstream_common.limits import MAX_INT32

if TYPE_CHECKING:  # the commands import what they use: `runstream --help` stays quick
    from .settings import Settings

out = Console()
err = Console(stderr=True)

DsnOption = Annotated[
    str | None,
    typer.Option(
        "--dsn", help="PostgreSQL DSN (default: RUNSTREAM_POSTGRES_DSN)", show_default=False
    ),
]
WaitOption = Annotated[
    float,
    typer.Option("--wait", min=0, help="Seconds to wait for the store's answer (0: do not wait)"),
]


def _dsn(dsn: str | None) -> str:
    if dsn:
        return dsn
    plain = dsn_from_environment()
    if plain is not None:
        return plain
    from .settings import Settings

    return Settings().postgres.dsn.get_secret_value()


# The two plain ways to name the database, in the order the store's settings read them.
_DSN_VARIABLES = ("RUNSTREAM_STORE_POSTGRES__DSN", "RUNSTREAM_POSTGRES_DSN")


def dsn_from_environment() -> str | None:
    """The DSN when the environment sets only one of the two plain variables, else None.

    The same value the store's settings give, without building them (pydantic-settings:
    ~60 ms of a ~0.35 s ``runstream table``). Any other spelling or companion variable
    (another case, JSON, a pool size) returns None: the settings then decide.
    """
    import os

    prefixes = ("RUNSTREAM_STORE_POSTGRES", "RUNSTREAM_POSTGRES_")
    related = [key for key in os.environ if key.upper().startswith(prefixes)]
    if len(related) == 1 and related[0] in _DSN_VARIABLES:
        return os.environ[related[0]]
    return None


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/] {message}")
    return typer.Exit(code)


async def _connect(dsn: str) -> Any:
    import asyncpg

    try:
        return await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise _fail(f"cannot connect to PostgreSQL: {exc}", 2) from exc


# ---------------------------------------------------------------------- db
db_app = typer.Typer(help="The store's PostgreSQL schema.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(dsn: DsnOption = None) -> None:
    """Apply the missing schema migrations (safe to run twice, and concurrently)."""
    import asyncio

    from . import schema

    async def go() -> tuple[int, list[schema.Migration]]:
        conn = await _connect(_dsn(dsn))
        try:
            before = await schema.current_version(conn)
            return before, await schema.upgrade(conn)
        finally:
            await conn.close()

    before, applied = asyncio.run(go())
    for m in applied:
        out.print(f"applied {m.version:03d}_{m.name}")
    version = applied[-1].version if applied else before
    out.print(f"schema at version {version} (was {before})")


@db_app.command("status")
def db_status(dsn: DsnOption = None) -> None:
    """Show the schema version; exit 1 if an upgrade is needed."""
    import asyncio

    from . import schema

    async def go() -> int:
        conn = await _connect(_dsn(dsn))
        try:
            return await schema.current_version(conn)
        finally:
            await conn.close()

    have, want = asyncio.run(go()), schema.latest_version()
    out.print(f"database schema version {have}; this code needs {want}")
    if have != want:
        raise _fail(schema.UPGRADE_HINT if have < want else "the database is newer than this code")


# ---------------------------------------------------------------------- table
TABLE_TIMEZONE = "Europe/Berlin"  # as RunTable.to_dataframe (DAMNIT's Damnit.table())


def _json_value(value: Any) -> Any:
    import math

    if value is None:
        return None
    if isinstance(value, complex):
        return [value.real, value.imag]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def start_time_text(seconds: float | None) -> tuple[str, str] | None:
    """(isoformat, "%Y-%m-%d %H:%M:%S") of an epoch start time in the table's time zone.

    Exactly what pandas gives for ``to_datetime(s, unit="s", utc=True).tz_convert(...)``
    (nanoseconds included), without importing pandas: ``runstream table`` starts fast.
    """
    import datetime as dt
    import math
    from zoneinfo import ZoneInfo

    if seconds is None or math.isnan(seconds):
        return None
    base = int(seconds)  # pandas: whole seconds, then the fraction rounded to 1 ns
    nanos = base * 1_000_000_000 + int(round((seconds - base) * 1e9) / 1e9 * 1e9)
    whole, rest = divmod(nanos, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(whole, ZoneInfo(TABLE_TIMEZONE)).replace(
        microsecond=rest // 1000
    )
    iso = stamp.isoformat()
    if rest % 1000:
        offset = stamp.strftime("%z")
        offset = f"{offset[:3]}:{offset[3:]}"
        iso = f"{stamp.strftime('%Y-%m-%dT%H:%M:%S')}.{rest:09d}{offset}"
    return iso, stamp.strftime("%Y-%m-%d %H:%M:%S")


def _rows(data: Any, last: int | None) -> tuple[list[str], list[dict[str, Any]]]:
    """Column names (run first) and one dict per run, as ``RunTable.to_dataframe`` has them.

    A missing value and a cleared one are both None here; start_time is its texts.
    """
    from .names import COMMENT
    from .table import START_TIME

    names = ["run", START_TIME, COMMENT, *(c.name for c in data.columns)]
    rows = []
    for run, start, _ in data.runs[-last:] if last is not None else data.runs:
        cells = data.cells.get(run, {})
        row = {name: cells.get(name) for name in names[2:]}
        rows.append({"run": run, START_TIME: start_time_text(start), **row})
    return names, rows


def table(
    proposal: Annotated[int, typer.Argument(min=0, max=MAX_INT32, help="Proposal number")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON records (names as keys)")
    ] = False,
    last: Annotated[int | None, typer.Option("--last", help="Only the last N runs", min=1)] = None,
    dsn: DsnOption = None,
) -> None:
    """Print the run table of PROPOSAL: runs as rows, variable titles as columns."""
    import asyncio
    import json

    from .table import FIXED_TITLES, read_table

    async def go() -> Any:
        conn = await _connect(_dsn(dsn))
        try:
            table = await read_table(conn, proposal)
            failed = await conn.fetch(
                "SELECT run, name, error, error_cls FROM run_values "
                "WHERE proposal = $1 AND error IS NOT NULL",
                proposal,
            )
            return table, {(r["run"], r["name"]): (r["error_cls"], r["error"]) for r in failed}
        finally:
            await conn.close()

    data, errors = asyncio.run(go())
    if not data.runs:
        raise _fail(f"proposal {proposal} has no runs in the database")
    names, rows = _rows(data, last)
    if as_json:
        records = []
        for row in rows:
            record = {k: _json_value(row[k]) for k in names}
            record["start_time"] = row["start_time"] and row["start_time"][0]
            failed = {
                name: {"error_cls": cls, "error": message}
                for (run, name), (cls, message) in errors.items()
                if run == row["run"]
            }
            if failed:
                record["errors"] = failed
            records.append(record)
        print(json.dumps({"proposal": proposal, "runs": records}, indent=1))
        return
    _print_table(proposal, data, names, rows, errors, FIXED_TITLES)


def _print_table(
    proposal: int,
    data: Any,
    names: list[str],
    rows: list[dict[str, Any]],
    errors: dict[tuple[int, str], tuple[str, str]],
    fixed_titles: dict[str, str],
) -> None:
    import math

    from rich.markup import escape
    from rich.table import Table

    titles = {**fixed_titles, **data.titles()}
    units = {c.name: c.units for c in data.columns}
    rich_table = Table(title=f"proposal {proposal}", show_lines=False)
    for name in names:
        header = titles.get(name, name)
        if units.get(name):
            header += f" [{units[name]}]"
        rich_table.add_column(escape(header), overflow="fold")
    for row in rows:
        cells = []
        for name in names:
            value = row[name]
            if (row["run"], name) in errors:  # DAMNIT's GUI shows these cells as errors too
                cls = errors[(row["run"], name)][0] or "error"
                cells.append(f"[red]{escape(cls)}[/]" if cls != "Skip" else "[dim]skipped[/]")
            elif value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("")
            elif name == "start_time":
                cells.append(value[1])
            elif isinstance(value, float):
                cells.append(f"{value:.6g}")
            else:
                cells.append(escape(str(value)))
        rich_table.add_row(*cells)
    Console().print(rich_table)  # sized for the terminal at hand


# ---------------------------------------------------------------------- commands
async def _send_and_wait(settings: Settings, command: Any, wait_s: float, accept: set[str]) -> Any:
    """Publish ``command``; return the first feed message answering it (or None on timeout)."""
    from aiokafka import AIOKafkaProducer

    kafka = settings.kafka
    consumer = await _updates_from_now(settings, wait_s) if wait_s > 0 else None
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers, acks="all", **kafka.security_kwargs()
    )
    try:
        await producer.start()
        await producer.send_and_wait(
            kafka.topics.commands,
            command.model_dump_json().encode(),
            key=str(command.proposal).encode(),
            headers=[("content-type", b"application/json")],
        )
        if consumer is None:
            return None
        return await _answer(consumer, command.correlation_id, accept, wait_s)
    finally:
        await producer.stop()
        if consumer is not None:
            await consumer.stop()


async def _updates_from_now(settings: Settings, wait_s: float) -> Any:
    """A consumer of the feed positioned at its current end (before the command is sent)."""
    import asyncio
    import time

    from aiokafka import AIOKafkaConsumer

    kafka, topic = settings.kafka, settings.kafka.topics.updates
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        isolation_level="read_committed",
        metadata_max_age_ms=1000,
        **kafka.security_kwargs(),
    )
    await consumer.start()
    try:
        give_up = time.monotonic() + min(wait_s, 15.0)
        while not consumer.assignment():
            if time.monotonic() > give_up:
                raise RuntimeError(f"topic {topic} does not exist (has the store run?)")
            await asyncio.sleep(0.05)
        for tp in consumer.assignment():  # pin the current end before publishing
            await consumer.position(tp)
    except BaseException:
        await consumer.stop()
        raise
    return consumer


async def _answer(consumer: Any, wanted: str | None, accept: set[str], wait_s: float) -> Any:
    """The first feed message with ``wanted`` as its correlation id and an accepted type."""
    import time

    from runstream_common import parsers

    deadline = time.monotonic() + wait_s
    while (remaining := deadline - time.monotonic()) > 0:
        batch = await consumer.getmany(timeout_ms=int(min(remaining, 1.0) * 1000))
        for records in batch.values():
            for record in records:
                try:
                    update = parsers.UPDATES.parse(record.value)
                except Exception:
                    continue
                if update.correlation_id == wanted and update.type in accept:
                    return update
    return None


def _run_command(command: Any, wait_s: float, accept: set[str]) -> Any:
    import asyncio

    from .settings import Settings

    settings = Settings()
    try:
        answer = asyncio.run(
            _send_and_wait(settings, command, wait_s, accept | {"command_rejected"})
        )
    except Exception as exc:
        raise _fail(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {exc}", 2) from exc
    if wait_s <= 0:
        out.print("sent")
        return None
    if answer is None:
        raise _fail(
            f"no answer from the store within {wait_s:g} s (the command is queued; "
            "is `runstream serve store` running?)",
            3,
        )
    if answer.type == "command_rejected":
        raise _fail(f"rejected: {answer.reason}")
    return answer


def comment(
    proposal: Annotated[int, typer.Argument(min=0, max=MAX_INT32, help="Proposal number")],
    run: Annotated[int, typer.Argument(min=0, max=MAX_INT32, help="Run number")],
    text: Annotated[str, typer.Argument(help="The comment (replaces the old one)")],
    wait: WaitOption = 10.0,
) -> None:
    """Set the comment of one run."""
    from uuid import uuid4

    from runstream_common.messages import SetComment

    event_id = uuid4()
    command = SetComment(
        event_id=event_id, correlation_id=str(event_id), proposal=proposal, run=run, text=text
    )
    if _run_command(command, wait, {"values_updated"}) is not None:
        out.print(f"comment of p{proposal} r{run} set")


def config(
    proposal: Annotated[int, typer.Argument(min=0, max=MAX_INT32, help="Proposal number")],
    key: Annotated[str | None, typer.Argument(help="Setting name")] = None,
    value: Annotated[str | None, typer.Argument(help="New value")] = None,
    delete: Annotated[bool, typer.Option("--delete", "-d", help="Delete KEY")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    wait: WaitOption = 10.0,
    dsn: DsnOption = None,
) -> None:
    """Show or change proposal settings (slurm_partition, slurm_time, concurrent_jobs, ...)."""
    import json
    from uuid import uuid4

    from rich.table import Table
    from runstream_common.messages import SetProposalSetting

    from .proposal_settings import PARSERS

    if delete and (key is None or value is not None):
        raise _fail("--delete needs KEY and no VALUE", 2)
    if key is not None and value is None and not delete:
        settings = _read_settings(proposal, dsn)
        if key not in settings:
            known = "" if key in PARSERS else f" (known settings: {', '.join(sorted(PARSERS))})"
            raise _fail(f"setting {key!r} is not set for proposal {proposal}{known}")
        print(json.dumps(settings[key]) if as_json else settings[key])
        return
    if key is None:
        settings = _read_settings(proposal, dsn)
        if as_json:
            print(json.dumps(settings, indent=1))
            return
        rich_table = Table(title=f"settings of proposal {proposal}")
        rich_table.add_column("key")
        rich_table.add_column("value")
        for k, v in settings.items():
            rich_table.add_row(k, str(v))
        out.print(rich_table)
        return
    event_id = uuid4()
    command = SetProposalSetting(
        event_id=event_id,
        correlation_id=str(event_id),
        proposal=proposal,
        key=key,
        value=None if delete else value,
    )
    answer = _run_command(command, wait, {"proposal_settings_set"})
    if answer is not None:
        if as_json:
            print(json.dumps(answer.settings, indent=1))
        elif delete:
            out.print(f"{key} deleted")
        else:
            out.print(f"{key} = {answer.settings.get(key)!r}")


def _read_settings(proposal: int, dsn: str | None) -> dict[str, Any]:
    import asyncio
    import json

    async def go() -> dict[str, Any]:
        conn = await _connect(_dsn(dsn))
        try:
            rows = await conn.fetch(
                "SELECT key, value::text AS value FROM proposal_settings WHERE proposal = $1 "
                "ORDER BY key",
                proposal,
            )
        finally:
            await conn.close()
        return {r["key"]: json.loads(r["value"]) for r in rows}

    return asyncio.run(go())


def register(app: typer.Typer) -> None:
    """Add the store's commands to the root ``runstream`` app."""
    app.add_typer(db_app, name="db")
    app.command("table")(table)
    app.command("comment")(comment)
    app.command("config")(config)
    from .damnit_cli import damnit_app

    app.add_typer(damnit_app, name="damnit")
