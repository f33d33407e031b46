"""PostgreSQL through asyncpg: every read and write of the store's database.

Writes are idempotent: results are recorded once per ``result_id`` (the
``applied_results`` row is part of the same transaction as the values), and a
result of an older context revision never replaces the current value of a newer
one (it is only kept in the history, marked ``superseded``).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from runstream_common.errors import InvalidCommand, ServiceUnavailable
from runstream_common.messages import (
    JobStateChanged,
    ProcessingStateChanged,
    ResultsReady,
    RunKnown,
    VariableDefinition,
)

from .. import schema
from ..values import StoredValue

VALUE_COLUMNS = (
    "kind",
    "value_int",
    "value_float",
    "value_imag",
    "value_bool",
    "value_text",
    "summary_type",
    "summary_method",
    "units",
    "max_diff",
    "bold",
    "background",
    "error",
    "error_cls",
    "cleared",
    "provenance",
    "context_hash",
    "revision",
    "result_id",
)
_COLS = ", ".join(VALUE_COLUMNS)
_PARAMS = ", ".join(f"${i + 4}" for i in range(len(VALUE_COLUMNS)))
_UPDATES = ", ".join(f"{c} = EXCLUDED.{c}" for c in VALUE_COLUMNS)

_SET_CURRENT = f"""
INSERT INTO run_values (proposal, run, name, {_COLS}, updated_at)
VALUES ($1, $2, $3, {_PARAMS}, now())
ON CONFLICT (proposal, run, name) DO UPDATE SET {_UPDATES}, updated_at = now()
"""
_INSERT_HISTORY = f"""
INSERT INTO run_value_history (proposal, run, name, {_COLS}, superseded)
VALUES ($1, $2, $3, {_PARAMS}, ${len(VALUE_COLUMNS) + 4})
"""
_SELECT_VALUES = f"SELECT name, {_COLS} FROM run_values"

# One statement per ResultsReady: every value into the history, the winners into the
# current values (unless a newer revision is there), from column arrays.
_ARRAY_TYPES = {
    "kind": "text", "value_int": "bigint", "value_float": "float8", "value_imag": "float8",
    "value_bool": "boolean", "value_text": "text", "summary_type": "text",
    "summary_method": "text", "units": "text", "max_diff": "float8", "bold": "boolean",
    "error": "text", "error_cls": "text", "cleared": "boolean", "provenance": "text",
    "context_hash": "text", "revision": "bigint", "result_id": "text",
}  # fmt: skip
_BATCH_FIELDS = ["name", *_ARRAY_TYPES, "bg_r", "bg_g", "bg_b", "superseded"]
_BATCH_TYPES = ["text", *_ARRAY_TYPES.values(), "smallint", "smallint", "smallint", "boolean"]
_UNNEST = ", ".join(f"${i + 3}::{t}[]" for i, t in enumerate(_BATCH_TYPES))
_SELECT_U = ", ".join(
    "CASE WHEN u.bg_r IS NULL THEN NULL ELSE ARRAY[u.bg_r, u.bg_g, u.bg_b] END"
    if c == "background"
    else f"u.{c}"
    for c in VALUE_COLUMNS
)
_APPLY_BATCH = f"""
WITH h AS (
    INSERT INTO run_value_history (proposal, run, name, {_COLS}, superseded)
    SELECT $1, $2, u.name, {_SELECT_U}, u.superseded
    FROM unnest({_UNNEST}) AS u({", ".join(_BATCH_FIELDS)})
    RETURNING proposal, run, name, {_COLS}, superseded
)
INSERT INTO run_values (proposal, run, name, {_COLS}, updated_at)
SELECT proposal, run, name, {_COLS}, now() FROM h WHERE NOT superseded
ON CONFLICT (proposal, run, name) DO UPDATE SET {_UPDATES}, updated_at = now()
WHERE run_values.revision <= EXCLUDED.revision
"""
# Every change of a run's current values also takes a new change number (migration 003),
# which the DAMNIT projection uses to find the runs it has not written yet.
_REFRESH_CELLS = (
    "UPDATE runs SET cells = runstream_run_cells($1, $2), "
    "changed_seq = nextval('runstream_change_seq') WHERE proposal = $1 AND run = $2"
)


def _batch_args(values: dict[str, StoredValue], winners: set[str]) -> list[list[Any]]:
    columns: list[list[Any]] = [[] for _ in _BATCH_FIELDS]
    for name, value in values.items():
        background = value.background or (None, None, None)
        row = [
            name,
            *(getattr(value, c) for c in _ARRAY_TYPES),
            *background,
            name not in winners,
        ]
        for column, item in zip(columns, row, strict=True):
            column.append(item)
    return columns


def _row(value: StoredValue) -> tuple[Any, ...]:
    out = []
    for column in VALUE_COLUMNS:
        item = getattr(value, column)
        if column == "background" and item is not None:
            item = list(item)
        out.append(item)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class RunRow:
    proposal: int
    run: int
    start_time: float | None
    added_at: float
    announced: bool


@dataclass(frozen=True, slots=True)
class VariableRow:
    name: str
    title: str
    description: str | None
    units: str | None
    user_type: str | None
    data: str
    cluster: bool
    tags: tuple[str, ...]

    def definition(self) -> VariableDefinition:
        return VariableDefinition(
            name=self.name,
            title=self.title,
            description=self.description,
            units=self.units,
            tags=self.tags,
            data=self.data,
            cluster=self.cluster,
            user_type=self.user_type,
        )


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 5) -> asyncpg.Pool:
    """A pool with JSON codecs; ServiceUnavailable when PostgreSQL does not answer."""
    try:
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, init=_init_connection, timeout=10
        )
    except (
        OSError,
        asyncpg.PostgresConnectionError,
        asyncpg.exceptions.OperatorInterventionError,
        TimeoutError,
    ) as exc:
        raise ServiceUnavailable(f"PostgreSQL is not answering: {exc}") from exc
    assert pool is not None
    return pool


class Repository:
    """The store's database operations over one asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self.pool.acquire() as conn:
                yield conn
        except (
            OSError,
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            # 57xxx: the server is shutting down, restarting or not accepting connections yet
            asyncpg.exceptions.OperatorInterventionError,
        ) as exc:
            raise ServiceUnavailable(f"PostgreSQL: {exc}") from exc

    async def check_schema(self) -> int:
        async with self._conn() as conn:
            return await schema.check(conn)

    # ------------------------------------------------------------------ results
    async def is_applied(self, result_id: str) -> bool:
        async with self._conn() as conn:
            found = await conn.fetchval(
                "SELECT 1 FROM applied_results WHERE result_id = $1", result_id
            )
            return found is not None

    async def current_revisions(
        self, proposal: int, run: int, names: Sequence[str]
    ) -> dict[str, int]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT name, revision FROM run_values "
                "WHERE proposal = $1 AND run = $2 AND name = ANY($3::text[])",
                proposal,
                run,
                list(names),
            )
        return {r["name"]: r["revision"] for r in rows}

    async def apply_results(
        self, message: ResultsReady, values: dict[str, StoredValue], winners: set[str]
    ) -> RunRow | None:
        """Record one ResultsReady in one transaction.

        Every value goes into the history; those in ``winners`` also become current
        unless a newer revision is there already. Returns the run, or None when
        ``result_id`` had been applied before (then nothing changed).
        """
        p, r = message.proposal, message.run
        async with self._conn() as conn, conn.transaction():
            fresh = await conn.fetchval(
                "INSERT INTO applied_results (result_id, proposal, run, revision) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true",
                message.result_id,
                p,
                r,
                message.revision,
            )
            if not fresh:
                return None
            await _ensure_proposal(conn, p, message.context_dir)
            run = await _ensure_run(conn, p, r, start_time=message.start_time)
            if values:
                await conn.execute(_APPLY_BATCH, p, r, *_batch_args(values, winners))
                if winners:
                    await conn.execute(_REFRESH_CELLS, p, r)
            return run

    async def current_values(
        self, proposal: int, run: int, names: Iterable[str] | None = None
    ) -> dict[str, StoredValue]:
        async with self._conn() as conn:
            if names is None:
                rows = await conn.fetch(
                    _SELECT_VALUES + " WHERE proposal = $1 AND run = $2", proposal, run
                )
            else:
                rows = await conn.fetch(
                    _SELECT_VALUES + " WHERE proposal = $1 AND run = $2 AND name = ANY($3::text[])",
                    proposal,
                    run,
                    list(names),
                )
        return {r["name"]: StoredValue.from_record(r) for r in rows}

    async def history(self, proposal: int, run: int, name: str) -> list[tuple[StoredValue, bool]]:
        """Every recorded value of one variable of one run, oldest first, with its superseded flag."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT name, {_COLS}, superseded FROM run_value_history "
                "WHERE proposal = $1 AND run = $2 AND name = $3 ORDER BY id",
                proposal,
                run,
                name,
            )
        return [(StoredValue.from_record(r), r["superseded"]) for r in rows]

    # ------------------------------------------------------------------ runs
    async def record_run_known(self, message: RunKnown, added_at: float) -> RunRow:
        async with self._conn() as conn, conn.transaction():
            await _ensure_proposal(conn, message.proposal, None)
            row = await conn.fetchrow(
                """INSERT INTO runs (proposal, run, added_at, raw_seen, proc_seen, source)
                   VALUES ($1, $2, $3, $4, $5, $6)
                   ON CONFLICT (proposal, run) DO UPDATE SET
                       raw_seen = runs.raw_seen OR EXCLUDED.raw_seen,
                       proc_seen = runs.proc_seen OR EXCLUDED.proc_seen,
                       source = runs.source || EXCLUDED.source
                   RETURNING proposal, run, start_time, added_at, announced""",
                message.proposal,
                message.run,
                added_at,
                message.raw_seen,
                message.proc_seen,
                dict(message.source),
            )
        return _run_row(row)

    async def mark_announced(self, proposal: int, run: int) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "UPDATE runs SET announced = true WHERE proposal = $1 AND run = $2", proposal, run
            )

    async def get_run(self, proposal: int, run: int) -> RunRow | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT proposal, run, start_time, added_at, announced FROM runs "
                "WHERE proposal = $1 AND run = $2",
                proposal,
                run,
            )
        return _run_row(row) if row is not None else None

    async def runs(self, proposal: int) -> list[RunRow]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT proposal, run, start_time, added_at, announced FROM runs "
                "WHERE proposal = $1 ORDER BY run",
                proposal,
            )
        return [_run_row(r) for r in rows]

    async def register_context_dir(self, proposal: int, context_dir: str) -> None:
        """The registered context folder (``runstream proposal add``) of a proposal."""
        async with self._conn() as conn:
            await _ensure_proposal(conn, proposal, context_dir)

    async def context_dir(self, proposal: int) -> str | None:
        async with self._conn() as conn:
            value = await conn.fetchval(
                "SELECT context_dir FROM proposals WHERE proposal = $1", proposal
            )
        return str(value) if value is not None else None

    # ------------------------------------------------------------------ variables
    async def define_variables(
        self,
        proposal: int,
        context_hash: str,
        revision: int,
        variables: Sequence[VariableDefinition],
    ) -> list[VariableDefinition]:
        """Upsert context variables (unless a newer revision defined them). Returns those applied."""
        applied: list[VariableDefinition] = []
        async with self._conn() as conn, conn.transaction():
            await _ensure_proposal(conn, proposal, None)
            for var in variables:
                done = await conn.fetchval(
                    """INSERT INTO variables (proposal, name, title, description, units,
                                              user_type, data, cluster, context_hash, revision)
                       VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, $8, $9)
                       ON CONFLICT (proposal, name) DO UPDATE SET
                           title = EXCLUDED.title, description = EXCLUDED.description,
                           units = EXCLUDED.units, user_type = NULL, data = EXCLUDED.data,
                           cluster = EXCLUDED.cluster, context_hash = EXCLUDED.context_hash,
                           revision = EXCLUDED.revision, updated_at = now()
                       WHERE variables.revision IS NULL OR variables.revision <= EXCLUDED.revision
                       RETURNING true""",
                    proposal,
                    var.name,
                    var.title,
                    var.description,
                    var.units,
                    var.data,
                    var.cluster,
                    context_hash,
                    revision,
                )
                if not done:
                    continue
                await conn.execute(
                    "DELETE FROM variable_tags WHERE proposal = $1 AND variable = $2 "
                    "AND source = 'context'",
                    proposal,
                    var.name,
                )
                await _add_tags(conn, proposal, var.name, var.tags, "context")
                applied.append(var)
            await _drop_orphan_tags(conn, proposal)
        return applied

    async def define_user_variable(
        self,
        proposal: int,
        name: str,
        title: str,
        variable_type: str,
        description: str | None,
    ) -> VariableRow:
        async with self._conn() as conn, conn.transaction():
            await _ensure_proposal(conn, proposal, None)
            existing = await conn.fetchrow(
                "SELECT user_type FROM variables WHERE proposal = $1 AND name = $2", proposal, name
            )
            if existing is not None and existing["user_type"] is None:
                raise InvalidCommand(
                    f"{name!r} is a variable of the context file, not a user variable"
                )
            clash = await conn.fetchval(
                "SELECT name FROM variables WHERE proposal = $1 AND title = $2 AND name <> $3",
                proposal,
                title,
                name,
            )
            if clash is not None:
                raise InvalidCommand(f"the title {title!r} is already used by {clash!r}")
            await conn.execute(
                """INSERT INTO variables (proposal, name, title, description, user_type)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (proposal, name) DO UPDATE SET title = EXCLUDED.title,
                       description = EXCLUDED.description, user_type = EXCLUDED.user_type,
                       updated_at = now()""",
                proposal,
                name,
                title,
                description,
                variable_type,
            )
            row = await _variable(conn, proposal, name)
        assert row is not None
        return row

    async def variable(self, proposal: int, name: str) -> VariableRow | None:
        async with self._conn() as conn:
            return await _variable(conn, proposal, name)

    async def variables(self, proposal: int) -> list[VariableRow]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                _VARIABLES_SQL
                + " WHERE v.proposal = $1 GROUP BY v.proposal, v.name ORDER BY v.name",
                proposal,
            )
        return [_variable_row(r) for r in rows]

    async def set_tags(
        self, proposal: int, variable: str, add: Sequence[str], remove: Sequence[str]
    ) -> VariableRow:
        async with self._conn() as conn, conn.transaction():
            found = await conn.fetchval(
                "SELECT 1 FROM variables WHERE proposal = $1 AND name = $2", proposal, variable
            )
            if not found:
                raise InvalidCommand(f"proposal {proposal} has no variable {variable!r}")
            if remove:
                await conn.execute(
                    "DELETE FROM variable_tags WHERE proposal = $1 AND variable = $2 "
                    "AND tag = ANY($3::text[])",
                    proposal,
                    variable,
                    list(remove),
                )
            await _add_tags(conn, proposal, variable, add, "user")
            await _drop_orphan_tags(conn, proposal)
            row = await _variable(conn, proposal, variable)
        assert row is not None
        return row

    # ------------------------------------------------------------------ manual values
    async def set_manual_value(
        self, proposal: int, run: int, name: str, value: StoredValue
    ) -> bool:
        """A comment or user-variable value: becomes current regardless of revisions.

        ``value.result_id`` identifies the command; a second delivery of the same command
        changes nothing (returns False).
        """
        async with self._conn() as conn, conn.transaction():
            exists = await conn.fetchval(
                "SELECT 1 FROM runs WHERE proposal = $1 AND run = $2 FOR UPDATE", proposal, run
            )
            if not exists:
                raise InvalidCommand(f"run {run} of proposal {proposal} is not known")
            if value.result_id is not None:
                seen = await conn.fetchval(
                    "SELECT 1 FROM run_value_history WHERE proposal = $1 AND run = $2 "
                    "AND name = $3 AND result_id = $4",
                    proposal,
                    run,
                    name,
                    value.result_id,
                )
                if seen:
                    return False
            await conn.execute(_INSERT_HISTORY, proposal, run, name, *_row(value), False)
            await conn.execute(_SET_CURRENT, proposal, run, name, *_row(value))
            await conn.execute(_REFRESH_CELLS, proposal, run)
            return True

    # ------------------------------------------------------------------ settings
    async def set_setting(self, proposal: int, key: str, value: Any | None) -> dict[str, Any]:
        """Set (or with None delete) one setting. Returns every setting of the proposal."""
        async with self._conn() as conn, conn.transaction():
            await _ensure_proposal(conn, proposal, None)
            if value is None:
                await conn.execute(
                    "DELETE FROM proposal_settings WHERE proposal = $1 AND key = $2", proposal, key
                )
            else:
                await conn.execute(
                    """INSERT INTO proposal_settings (proposal, key, value) VALUES ($1, $2, $3)
                       ON CONFLICT (proposal, key) DO UPDATE SET value = EXCLUDED.value,
                           updated_at = now()""",
                    proposal,
                    key,
                    value,
                )
            return await _settings(conn, proposal)

    async def settings(self, proposal: int) -> dict[str, Any]:
        async with self._conn() as conn:
            return await _settings(conn, proposal)

    # ------------------------------------------------------------------ processing and jobs
    async def record_processing(self, message: ProcessingStateChanged) -> bool:
        """Keep the latest state per processing pass. False when ``message`` is older."""
        async with self._conn() as conn:
            done = await conn.fetchval(
                """INSERT INTO processing_state (processing_id, request_id, proposal, run, trigger,
                       status, variable, reason, hostname, slurm_job_id, counts, event_time)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                   ON CONFLICT (processing_id) DO UPDATE SET status = EXCLUDED.status,
                       variable = EXCLUDED.variable, reason = EXCLUDED.reason,
                       hostname = EXCLUDED.hostname, slurm_job_id = EXCLUDED.slurm_job_id,
                       counts = EXCLUDED.counts, event_time = EXCLUDED.event_time,
                       updated_at = now()
                   WHERE processing_state.event_time <= EXCLUDED.event_time
                   RETURNING true""",
                message.processing_id,
                message.request_id,
                message.proposal,
                message.run,
                str(message.trigger),
                str(message.status),
                message.variable,
                message.reason,
                message.hostname,
                message.slurm_job_id,
                dict(message.counts),
                message.time,
            )
        return bool(done)

    async def record_job(self, message: JobStateChanged) -> bool:
        """Keep the latest state per job request. False when ``message`` is older."""
        async with self._conn() as conn:
            done = await conn.fetchval(
                """INSERT INTO slurm_jobs (job_request_id, proposal, run, state, backend, job_id,
                       exit_status, signal, log_path, reason, event_time)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                   ON CONFLICT (job_request_id) DO UPDATE SET state = EXCLUDED.state,
                       backend = EXCLUDED.backend, job_id = EXCLUDED.job_id,
                       exit_status = EXCLUDED.exit_status, signal = EXCLUDED.signal,
                       log_path = EXCLUDED.log_path, reason = EXCLUDED.reason,
                       event_time = EXCLUDED.event_time, updated_at = now()
                   WHERE slurm_jobs.event_time <= EXCLUDED.event_time
                   RETURNING true""",
                message.job_request_id,
                message.proposal,
                message.run,
                str(message.state),
                message.backend,
                message.job_id,
                message.exit_status,
                message.signal,
                message.log_path,
                message.reason,
                message.time,
            )
        return bool(done)

    async def processing_states(self, proposal: int, run: int) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT processing_id, status, variable, reason, event_time FROM processing_state "
                "WHERE proposal = $1 AND run = $2 ORDER BY event_time",
                proposal,
                run,
            )
        return [dict(r) for r in rows]

    async def jobs(self, proposal: int, run: int) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT job_request_id, state, job_id, reason, event_time FROM slurm_jobs "
                "WHERE proposal = $1 AND run = $2 ORDER BY event_time",
                proposal,
                run,
            )
        return [dict(r) for r in rows]


# ---------------------------------------------------------------------- helpers
_VARIABLES_SQL = """
SELECT v.name, v.title, v.description, v.units, v.user_type, v.data, v.cluster,
       coalesce(array_agg(DISTINCT t.tag) FILTER (WHERE t.tag IS NOT NULL), '{}') AS tags
FROM variables v
LEFT JOIN variable_tags t ON t.proposal = v.proposal AND t.variable = v.name
"""


def _variable_row(row: Any) -> VariableRow:
    return VariableRow(
        name=row["name"],
        title=row["title"],
        description=row["description"],
        units=row["units"],
        user_type=row["user_type"],
        data=row["data"],
        cluster=row["cluster"],
        tags=tuple(sorted(row["tags"])),
    )


async def _variable(conn: asyncpg.Connection, proposal: int, name: str) -> VariableRow | None:
    row = await conn.fetchrow(
        _VARIABLES_SQL + " WHERE v.proposal = $1 AND v.name = $2 GROUP BY v.proposal, v.name",
        proposal,
        name,
    )
    return _variable_row(row) if row is not None else None


def _run_row(row: Any) -> RunRow:
    return RunRow(
        proposal=row["proposal"],
        run=row["run"],
        start_time=row["start_time"],
        added_at=row["added_at"],
        announced=row["announced"],
    )


async def _ensure_proposal(
    conn: asyncpg.Connection, proposal: int, context_dir: str | None
) -> None:
    await conn.execute(
        """INSERT INTO proposals (proposal, context_dir) VALUES ($1, $2)
           ON CONFLICT (proposal) DO UPDATE SET
               context_dir = coalesce(EXCLUDED.context_dir, proposals.context_dir)
           WHERE EXCLUDED.context_dir IS NOT NULL
             AND proposals.context_dir IS DISTINCT FROM EXCLUDED.context_dir""",
        proposal,
        context_dir,
    )


async def _ensure_run(
    conn: asyncpg.Connection, proposal: int, run: int, *, start_time: float | None
) -> RunRow:
    row = await conn.fetchrow(
        """INSERT INTO runs (proposal, run, start_time, added_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (proposal, run) DO UPDATE SET
               start_time = coalesce(EXCLUDED.start_time, runs.start_time),
               changed_seq = CASE WHEN EXCLUDED.start_time IS DISTINCT FROM runs.start_time
                                   AND EXCLUDED.start_time IS NOT NULL
                             THEN nextval('runstream_change_seq') ELSE runs.changed_seq END
           RETURNING proposal, run, start_time, added_at, announced""",
        proposal,
        run,
        start_time,
        time.time(),
    )
    return _run_row(row)


async def _add_tags(
    conn: asyncpg.Connection, proposal: int, variable: str, tags: Sequence[str], source: str
) -> None:
    tags = [t for t in dict.fromkeys(tags) if t]
    if not tags:
        return
    await conn.executemany(
        "INSERT INTO tags (proposal, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        [(proposal, t) for t in tags],
    )
    await conn.executemany(
        "INSERT INTO variable_tags (proposal, variable, tag, source) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT DO NOTHING",
        [(proposal, variable, t, source) for t in tags],
    )


async def _drop_orphan_tags(conn: asyncpg.Connection, proposal: int) -> None:
    await conn.execute(
        "DELETE FROM tags t WHERE t.proposal = $1 AND NOT EXISTS "
        "(SELECT 1 FROM variable_tags vt WHERE vt.proposal = t.proposal AND vt.tag = t.name)",
        proposal,
    )


async def _settings(conn: asyncpg.Connection, proposal: int) -> dict[str, Any]:
    rows = await conn.fetch(
        "SELECT key, value FROM proposal_settings WHERE proposal = $1 ORDER BY key", proposal
    )
    return {r["key"]: r["value"] for r in rows}


def epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None
