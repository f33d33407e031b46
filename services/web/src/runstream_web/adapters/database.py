"""Read-only queries of the store's database (the store is its only writer).

Connections are opened with ``default_transaction_read_only``, so not even a
bug here could write. The run table is assembled as JSON text: each run's
``cells`` column (a JSON object the store keeps in step with ``run_values``)
goes into the response as it is, without being decoded and encoded again, and
only the few values with formatting or an error are read from ``run_values``.

Cell and summary encoding (the store's, see its migration 002): numbers,
strings, booleans and null as themselves; ``{"$f": "NaN"}`` non-finite floats,
``{"$i": "123..."}`` integers beyond 64 bits, ``{"$c": [re, im]}`` complex,
``{"$b": "thumbnail"|"trendline"|"numpy"}`` a binary summary in the run file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from runstream_common.errors import ServiceUnavailable

_VARIABLES = """
SELECT v.name, v.title, v.description, v.units, v.user_type, v.data, v.cluster,
       coalesce(array_agg(DISTINCT t.tag) FILTER (WHERE t.tag IS NOT NULL), '{}') AS tags
FROM variables v LEFT JOIN variable_tags t ON t.proposal = v.proposal AND t.variable = v.name
WHERE v.proposal = $1
GROUP BY v.name, v.title, v.description, v.units, v.user_type, v.data, v.cluster
ORDER BY v.name
"""
# Values that need more than their summary: errors, formatting, their own units.
_DECOR = """
SELECT r.run, r.name, r.error, r.error_cls, r.bold, r.background,
       CASE WHEN r.units IS DISTINCT FROM v.units THEN r.units END AS units
FROM run_values r LEFT JOIN variables v ON v.proposal = r.proposal AND v.name = r.name
WHERE r.proposal = $1 AND r.run >= $2 AND r.run < $3
  AND (r.error IS NOT NULL OR r.bold OR r.background IS NOT NULL
       OR (r.units IS NOT NULL AND r.units IS DISTINCT FROM v.units))
"""
_PROCESSING = """
SELECT DISTINCT ON (run) run, status, trigger, variable, reason, counts::text AS counts,
       request_id, extract(epoch FROM event_time) AS at
FROM processing_state WHERE proposal = $1 AND run >= $2 AND run < $3
ORDER BY run, event_time DESC
"""
_JOBS = """
SELECT DISTINCT ON (run) run, state, backend, job_id, exit_status, reason,
       extract(epoch FROM event_time) AS at
FROM slurm_jobs WHERE proposal = $1 AND run >= $2 AND run < $3
ORDER BY run, event_time DESC
"""
_RUNS = "SELECT run, start_time, added_at, cells FROM runs WHERE proposal = $1"
NO_RUN = 2**31 - 1  # above every run number (runs are PostgreSQL integers)
_VALUE_COLUMNS = """kind, value_int, value_float, value_imag, value_bool, value_text, summary_type,
       units, max_diff, bold, background, error, error_cls, cleared, provenance, context_hash,
       revision"""


def _num(value: float | None) -> bytes:
    if value is None or not math.isfinite(value):
        return b"null"
    return orjson.dumps(value)


def summary_of(row: Any) -> Any:
    """A value's summary in the cell encoding (see the module docstring)."""
    kind = row["kind"]
    if kind == "int":
        return row["value_int"]
    if kind == "float":
        value = row["value_float"]
        return value if value is None or math.isfinite(value) else {"$f": _special(value)}
    if kind == "bool":
        return row["value_bool"]
    if kind == "str":
        return row["value_text"]
    if kind == "bigint":
        return {"$i": row["value_text"]}
    if kind == "complex":
        return {"$c": [_finite(row["value_float"]), _finite(row["value_imag"])]}
    if kind == "blob":
        return {"$b": row["summary_type"] or ""}
    return None


def _special(value: float) -> str:
    """PostgreSQL's (and JavaScript's) names of the non-finite floats."""
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _finite(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return _special(value)


def _background(value: Any) -> list[int] | None:
    return [int(c) for c in value] if value is not None else None


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    title: str
    user_type: str | None
    units: str | None
    cluster: bool


class Database:
    """The queries of the web service over one read-only asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 1, max_size: int = 5) -> Database:
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                timeout=10,
                server_settings={
                    "default_transaction_read_only": "on",
                    "application_name": "runstream-web",
                },
            )
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise ServiceUnavailable(f"PostgreSQL is not answering: {exc}") from exc
        assert pool is not None
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    async def ping(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    # ------------------------------------------------------------------ lists
    async def proposals(self) -> list[dict[str, Any]]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT p.proposal, p.context_dir, count(r.run) AS runs,
                          max(r.run) AS last_run, max(r.added_at) AS last_added
                   FROM proposals p LEFT JOIN runs r ON r.proposal = p.proposal
                   GROUP BY p.proposal, p.context_dir ORDER BY p.proposal DESC"""
            )
        return [dict(r) for r in rows]

    async def context_dir(self, proposal: int) -> str | None:
        async with self.pool.acquire() as conn:
            value = await conn.fetchval(
                "SELECT context_dir FROM proposals WHERE proposal = $1", proposal
            )
        return str(value) if value is not None else None

    async def variable(self, proposal: int, name: str) -> Variable | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT name, title, user_type, units, cluster FROM variables "
                "WHERE proposal = $1 AND name = $2",
                proposal,
                name,
            )
        if row is None:
            return None
        return Variable(row["name"], row["title"], row["user_type"], row["units"], row["cluster"])

    async def variable_names(self, proposal: int) -> set[str]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT name FROM variables WHERE proposal = $1", proposal)
        return {r["name"] for r in rows}

    async def computed_variable_names(self, proposal: int) -> set[str]:
        """Variables of the context file (user-editable ones are not computed)."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT name FROM variables WHERE proposal = $1 AND user_type IS NULL", proposal
            )
        return {r["name"] for r in rows}

    async def run_numbers(self, proposal: int) -> list[int]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT run FROM runs WHERE proposal = $1 ORDER BY run", proposal
            )
        return [r["run"] for r in rows]

    async def run_exists(self, proposal: int, run: int) -> bool:
        async with self.pool.acquire() as conn:
            found = await conn.fetchval(
                "SELECT 1 FROM runs WHERE proposal = $1 AND run = $2", proposal, run
            )
        return found is not None

    # ------------------------------------------------------------------ the table
    async def table_json(
        self, proposal: int, cursor: str, *, newest: int | None = None, before: int | None = None
    ) -> bytes | None:
        """The run table of ``proposal`` as JSON bytes (None: unknown proposal).

        All runs, or the ``newest`` N (a page paints them at once, then asks for
        the runs ``before`` the oldest of them). ``complete`` says whether runs
        older than those sent exist; ``oldest`` is the oldest run sent.
        """
        hi = NO_RUN if before is None else before
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            context_dir = await conn.fetchval(
                "SELECT context_dir FROM proposals WHERE proposal = $1", proposal
            )
            if newest is None:
                runs = await conn.fetch(_RUNS + " AND run < $2 ORDER BY run DESC", proposal, hi)
            else:
                runs = await conn.fetch(
                    _RUNS + " AND run < $2 ORDER BY run DESC LIMIT $3", proposal, hi, newest
                )
            if context_dir is None and not runs:
                known = await conn.fetchval("SELECT 1 FROM proposals WHERE proposal = $1", proposal)
                if known is None:
                    return None
            lo = runs[-1]["run"] if runs else hi
            older = await conn.fetchval(
                "SELECT 1 FROM runs WHERE proposal = $1 AND run < $2 LIMIT 1", proposal, lo
            )
            variables = await conn.fetch(_VARIABLES, proposal)
            decor = await conn.fetch(_DECOR, proposal, lo, hi)
            processing = await conn.fetch(_PROCESSING, proposal, lo, hi)
            jobs = await conn.fetch(_JOBS, proposal, lo, hi)
        head = {
            "proposal": proposal,
            "cursor": cursor,
            "complete": older is None,
            "oldest": lo if runs else None,
            "context_dir": context_dir,
            "variables": [{**dict(v), "tags": sorted(v["tags"])} for v in variables],
            "decor": [[*tuple(d)[:5], _background(d["background"]), d["units"]] for d in decor],
            "processing": [
                [*tuple(p)[:5], orjson.loads(p["counts"]), p["request_id"], float(p["at"])]
                for p in processing
            ],
            "jobs": [[*tuple(j)[:6], float(j["at"])] for j in jobs],
        }
        rows = b",".join(
            b"[%d,%s,%s,%s]"
            % (r["run"], _num(r["start_time"]), _num(r["added_at"]), r["cells"].encode())
            for r in runs
        )
        return orjson.dumps(head)[:-1] + b',"runs":[' + rows + b"]}"

    # ------------------------------------------------------------------ one value
    async def value(self, proposal: int, run: int, name: str) -> dict[str, Any] | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT {_VALUE_COLUMNS}, extract(epoch FROM updated_at) AS at "
                "FROM run_values WHERE proposal = $1 AND run = $2 AND name = $3",
                proposal,
                run,
                name,
            )
        return _value_dict(row) if row is not None else None

    async def history(
        self, proposal: int, run: int, name: str, limit: int = 500
    ) -> list[dict[str, Any]]:
        """Every recorded value of one variable of one run, newest first."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {_VALUE_COLUMNS}, superseded, extract(epoch FROM recorded_at) AS at "
                "FROM run_value_history WHERE proposal = $1 AND run = $2 AND name = $3 "
                "ORDER BY id DESC LIMIT $4",
                proposal,
                run,
                name,
                limit,
            )
        return [{**_value_dict(r), "superseded": r["superseded"]} for r in rows]

    async def trend(self, proposal: int, name: str) -> list[list[Any]]:
        """``[run, start_time, value]`` of every run with a numeric value of ``name``."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT v.run, r.start_time, v.kind, v.value_int, v.value_float, v.value_bool,
                          v.value_text
                   FROM run_values v JOIN runs r ON r.proposal = v.proposal AND r.run = v.run
                   WHERE v.proposal = $1 AND v.name = $2
                     AND v.kind IN ('int', 'bigint', 'float', 'bool') ORDER BY v.run""",
                proposal,
                name,
            )
        out: list[list[Any]] = []
        for r in rows:
            kind = r["kind"]
            value: Any
            if kind == "int":
                value = r["value_int"]
            elif kind == "bigint":
                value = float(r["value_text"])
            elif kind == "bool":
                value = int(r["value_bool"])
            else:
                value = r["value_float"]
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            start = r["start_time"]
            out.append([r["run"], start if start is not None and math.isfinite(start) else None,
                        value])  # fmt: skip
        return out


def _value_dict(row: Any) -> dict[str, Any]:
    return {
        "summary": summary_of(row),
        "kind": row["kind"],
        "summary_type": row["summary_type"],
        "units": row["units"],
        "max_diff": row["max_diff"]
        if row["max_diff"] is None or math.isfinite(row["max_diff"])
        else None,
        "bold": row["bold"],
        "background": _background(row["background"]),
        "error": row["error"],
        "error_cls": row["error_cls"],
        "cleared": row["cleared"],
        "provenance": row["provenance"],
        "context_hash": row["context_hash"],
        "revision": row["revision"],
        "at": float(row["at"]) if row["at"] is not None else None,
    }
