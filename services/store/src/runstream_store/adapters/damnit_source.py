"""PostgreSQL reads (and bookkeeping writes) of the DAMNIT projection.

Snapshots are read in one repeatable-read transaction each, so a run's change number
always belongs to the values read with it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..damnit.rows import SETTING, MetaSnapshot, ProjectedValue, RunSnapshot, VariableSnapshot
from ..values import StoredValue
from .postgres import _INSERT_HISTORY, _REFRESH_CELLS, _SET_CURRENT, VALUE_COLUMNS, Repository, _row

_COLS = ", ".join(VALUE_COLUMNS)
# An imported value becomes current only where runstream has none, or an older import.
_SET_CURRENT_IF_NEWER = (
    _SET_CURRENT.strip()
    + " WHERE run_values.context_hash = 'damnit-import' AND run_values.revision <= 0"
)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a proposal's DAMNIT database is, and whether it is wanted."""

    proposal: int
    context_dir: str | None
    enabled: bool
    meta_seq: int
    db_id: str | None
    path: str | None


class ProjectionSource:
    """The projection's view of the store's database."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    async def target(self, proposal: int) -> Target | None:
        async with self.repo._conn() as conn:
            row = await conn.fetchrow(
                """SELECT p.context_dir, p.meta_seq, d.db_id, d.path,
                          (SELECT value::text FROM proposal_settings s
                           WHERE s.proposal = p.proposal AND s.key = $2) AS enabled
                   FROM proposals p LEFT JOIN damnit_projections d ON d.proposal = p.proposal
                   WHERE p.proposal = $1""",
                proposal,
                SETTING,
            )
        if row is None:
            return None
        enabled = json.loads(row["enabled"]) if row["enabled"] is not None else True
        return Target(
            proposal=proposal,
            context_dir=row["context_dir"],
            enabled=bool(enabled),
            meta_seq=row["meta_seq"],
            db_id=row["db_id"],
            path=row["path"],
        )

    async def proposals(self) -> list[int]:
        async with self.repo._conn() as conn:
            rows = await conn.fetch(
                "SELECT proposal FROM proposals WHERE context_dir IS NOT NULL ORDER BY proposal"
            )
        return [r["proposal"] for r in rows]

    async def db_ids(self) -> dict[str, int]:
        async with self.repo._conn() as conn:
            rows = await conn.fetch("SELECT proposal, db_id FROM damnit_projections")
        return {r["db_id"]: r["proposal"] for r in rows}

    async def run_seqs(self, proposal: int) -> dict[int, int]:
        async with self.repo._conn() as conn:
            rows = await conn.fetch(
                "SELECT run, changed_seq FROM runs WHERE proposal = $1", proposal
            )
        return {r["run"]: r["changed_seq"] for r in rows}

    async def runs(self, proposal: int, runs: Sequence[int]) -> list[RunSnapshot]:
        if not runs:
            return []
        async with (
            self.repo._conn() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            info = await conn.fetch(
                "SELECT run, start_time, added_at, changed_seq FROM runs "
                "WHERE proposal = $1 AND run = ANY($2::int[]) ORDER BY run",
                proposal,
                list(runs),
            )
            values = await conn.fetch(
                f"SELECT run, name, {_COLS}, extract(epoch FROM updated_at) AS updated "
                "FROM run_values WHERE proposal = $1 AND run = ANY($2::int[])",
                proposal,
                list(runs),
            )
        by_run: dict[int, list[ProjectedValue]] = {}
        for v in values:
            by_run.setdefault(v["run"], []).append(
                ProjectedValue(v["name"], StoredValue.from_record(v), float(v["updated"]))
            )
        return [
            RunSnapshot(
                proposal=proposal,
                run=r["run"],
                start_time=r["start_time"],
                added_at=r["added_at"],
                seq=r["changed_seq"],
                values=tuple(sorted(by_run.get(r["run"], []), key=lambda pv: pv.name)),
            )
            for r in info
        ]

    async def meta(self, proposal: int) -> MetaSnapshot:
        async with (
            self.repo._conn() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            seq = await conn.fetchval(
                "SELECT meta_seq FROM proposals WHERE proposal = $1", proposal
            )
            variables = await conn.fetch(
                """SELECT v.name, v.title, v.description, v.user_type,
                          coalesce(array_agg(DISTINCT t.tag) FILTER (WHERE t.tag IS NOT NULL),
                                   '{}') AS tags
                   FROM variables v LEFT JOIN variable_tags t
                        ON t.proposal = v.proposal AND t.variable = v.name
                   WHERE v.proposal = $1 GROUP BY v.name, v.title, v.description, v.user_type
                   ORDER BY v.name""",
                proposal,
            )
            settings = await conn.fetch(
                "SELECT key, value::text AS value FROM proposal_settings WHERE proposal = $1",
                proposal,
            )
        return MetaSnapshot(
            seq=int(seq or 0),
            variables=tuple(
                VariableSnapshot(
                    name=v["name"],
                    title=v["title"],
                    description=v["description"],
                    user_type=v["user_type"],
                    tags=tuple(sorted(v["tags"])),
                )
                for v in variables
            ),
            settings={s["key"]: json.loads(s["value"]) for s in settings},
        )

    async def manual_times(self, proposal: int) -> dict[tuple[int, str], float]:
        """When PostgreSQL last wrote each comment and user value of the proposal."""
        async with self.repo._conn() as conn:
            rows = await conn.fetch(
                "SELECT run, name, extract(epoch FROM updated_at) AS t FROM run_values "
                "WHERE proposal = $1 AND provenance = ANY($2::text[])",
                proposal,
                ["comment", "manual-input"],
            )
        return {(r["run"], r["name"]): float(r["t"]) for r in rows}

    async def record_db(self, proposal: int, db_id: str, path: str) -> None:
        async with self.repo._conn() as conn:
            await conn.execute(
                """INSERT INTO damnit_projections (proposal, db_id, path, synced_at)
                   VALUES ($1, $2, $3, now())
                   ON CONFLICT (proposal) DO UPDATE SET db_id = EXCLUDED.db_id,
                       path = EXCLUDED.path, last_error = NULL, last_error_at = NULL,
                       synced_at = now(), updated_at = now()""",
                proposal,
                db_id,
                path,
            )

    async def record_error(self, proposal: int, error: str) -> None:
        async with self.repo._conn() as conn:
            await conn.execute(
                "UPDATE damnit_projections SET last_error = $2, last_error_at = now(), "
                "updated_at = now() WHERE proposal = $1",
                proposal,
                error[:2000],
            )

    async def set_context_dir(self, proposal: int, context_dir: str) -> None:
        async with self.repo._conn() as conn:
            await conn.execute(
                """INSERT INTO proposals (proposal, context_dir) VALUES ($1, $2)
                   ON CONFLICT (proposal) DO UPDATE SET context_dir = EXCLUDED.context_dir""",
                proposal,
                context_dir,
            )

    async def status(self, proposal: int) -> dict[str, Any] | None:
        async with self.repo._conn() as conn:
            row = await conn.fetchrow(
                "SELECT db_id, path, last_error, last_error_at, synced_at "
                "FROM damnit_projections WHERE proposal = $1",
                proposal,
            )
        return dict(row) if row is not None else None


async def import_damnit(repo: Repository, proposal: int, folder: str, data: Any) -> dict[str, int]:
    """Write what a DAMNIT folder holds (``damnit.importer.Folder``) in one transaction.

    Existing runstream data wins: runs keep their start time if they have one, variables
    keep runstream's definition, settings already set stay, and a value goes in only if
    its import id is not in the history yet (so a second import changes nothing).
    """
    async with repo._conn() as conn, conn.transaction():
        await conn.execute(
            """INSERT INTO proposals (proposal, context_dir) VALUES ($1, $2)
               ON CONFLICT (proposal) DO UPDATE SET context_dir = EXCLUDED.context_dir""",
            proposal,
            folder,
        )
        runs = await _import_runs(conn, proposal, data.runs)
        variables = await _import_variables(conn, proposal, data.variables)
        counts = {  # in this order in the CLI's report
            "runs": runs,
            "values": await _import_values(conn, proposal, data.values),
            "variables": variables,
            "settings": await _import_settings(conn, proposal, data.settings),
        }
        if data.db_id:
            await conn.execute(
                """INSERT INTO damnit_projections (proposal, db_id, path) VALUES ($1, $2, $3)
                   ON CONFLICT (proposal) DO UPDATE SET db_id = EXCLUDED.db_id,
                       path = EXCLUDED.path, updated_at = now()""",
                proposal,
                data.db_id,
                str(Path(folder) / "runs.sqlite"),
            )
    return counts


async def _import_runs(conn: Any, proposal: int, runs: Any) -> int:
    """New runs; a known run only gains a start time it did not have."""
    added = 0
    for run, start_time, added_at in runs:
        fresh = await conn.fetchval(
            """INSERT INTO runs (proposal, run, start_time, added_at, announced)
               VALUES ($1, $2, $3, $4, true)
               ON CONFLICT (proposal, run) DO UPDATE
                   SET start_time = coalesce(runs.start_time, EXCLUDED.start_time)
                   WHERE runs.start_time IS NULL AND EXCLUDED.start_time IS NOT NULL
               RETURNING (xmax = 0)""",
            proposal,
            run,
            start_time,
            added_at if added_at is not None else start_time or 0.0,
        )
        added += int(bool(fresh))
    return added


async def _import_variables(conn: Any, proposal: int, variables: Any) -> int:
    """Variables runstream does not define yet, with their tags."""
    added = 0
    for name, title, description, user_type, tags in variables:
        done = await conn.fetchval(
            """INSERT INTO variables (proposal, name, title, description, user_type,
                                      context_hash, revision)
               VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $5::text IS NULL THEN 0 END)
               ON CONFLICT (proposal, name) DO NOTHING RETURNING true""",
            proposal,
            name,
            title,
            description,
            user_type,
            "damnit-import",
        )
        if not done:
            continue
        added += 1
        source = "user" if user_type else "context"
        for tag in tags:
            await conn.execute(
                "INSERT INTO tags (proposal, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                proposal,
                tag,
            )
            await conn.execute(
                "INSERT INTO variable_tags (proposal, variable, tag, source) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                proposal,
                name,
                tag,
                source,
            )
    return added


async def _import_values(conn: Any, proposal: int, values: Any) -> int:
    """Values whose import id is not in the history yet; current where they are newer."""
    seen = {
        r["result_id"]
        for r in await conn.fetch(
            "SELECT result_id FROM run_value_history WHERE proposal = $1 "
            "AND context_hash = 'damnit-import'",
            proposal,
        )
    }
    fresh = [(r, n, v) for r, n, v in values if v.result_id not in seen]
    rows = [(proposal, r, n, *_row(v)) for r, n, v in fresh]
    if rows:
        await conn.executemany(_INSERT_HISTORY, [(*row, False) for row in rows])
        await conn.executemany(_SET_CURRENT_IF_NEWER, rows)
    for run in sorted({r for r, _, _ in fresh}):
        await conn.execute(_REFRESH_CELLS, proposal, run)
    return len(fresh)


async def _import_settings(conn: Any, proposal: int, settings: dict[str, Any]) -> int:
    """Settings the proposal does not have yet."""
    added = 0
    for key, value in settings.items():
        done = await conn.fetchval(
            "INSERT INTO proposal_settings (proposal, key, value) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING RETURNING true",
            proposal,
            key,
            value,
        )
        added += int(bool(done))
    return added
