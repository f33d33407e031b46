"""The run table of a proposal: runs as rows, variables as columns (read-only).

Two queries: the variables, and one row per run with its current summaries as a
JSON object (``runs.cells``, kept in step with ``run_values`` by every write; see
migration 002 for the encoding), decoded in C by ``json.loads``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from .names import COMMENT, PLACEHOLDERS

if TYPE_CHECKING:  # pandas is imported by to_dataframe only (the CLI's table does without)
    import pandas as pd

START_TIME = "start_time"
FIXED_TITLES = {"proposal": "Proposal", "run": "Run", START_TIME: "Timestamp", COMMENT: "Comment"}


def _decode_special(obj: dict[str, Any]) -> Any:
    """``json.loads`` hook for the cells that JSON cannot hold directly."""
    if len(obj) == 1:
        ((key, value),) = obj.items()
        if key == "$c":  # non-finite parts arrive as the strings "NaN", "Infinity", ...
            return complex(float(value[0]), float(value[1]))
        if key == "$b":
            return PLACEHOLDERS.get(value, "<blob>")
        if key == "$f":
            return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[value]
        if key == "$i":
            return int(value)
    return obj


def decode_cells(text: str) -> dict[str, Any]:
    """One run's cells: variable name -> table value."""
    cells: dict[str, Any] = orjson.loads(text)
    if '"$' in text:  # only runs with special values need the Python pass
        for name, value in cells.items():
            if type(value) is dict:
                cells[name] = _decode_special(value)
    return cells


@dataclass(frozen=True)
class Column:
    name: str
    title: str
    units: str | None = None
    user_type: str | None = None
    tags: tuple[str, ...] = ()


@dataclass
class RunTable:
    """The table's parts as read from the database."""

    proposal: int
    runs: list[tuple[int, float | None, float]]  # run, start_time, added_at
    columns: list[Column]
    cells: dict[int, dict[str, Any]] = field(default_factory=dict)  # run -> name -> value

    def titles(self) -> dict[str, str]:
        return {c.name: c.title for c in self.columns}

    def to_dataframe(
        self, *, with_titles: bool = False, timezone: str = "Europe/Berlin"
    ) -> pd.DataFrame:
        """A DataFrame like DAMNIT's ``Damnit.table()``.

        Columns: proposal, run, start_time (a timezone-aware datetime), comment, then
        every variable. A run without a value for a variable has ``pd.NA``; a value
        that is an error or was cleared is ``None``; binary summaries are
        ``<sparkline>`` / ``<thumbnail>`` / ``<ndarray>``.
        """
        import pandas as pd

        names = [c.name for c in self.columns]
        run_numbers = [r[0] for r in self.runs]
        data: dict[str, Any] = {
            "proposal": [self.proposal] * len(self.runs),
            "run": run_numbers,
            START_TIME: pd.to_datetime(
                pd.Series([r[1] for r in self.runs], dtype="float64"), unit="s", utc=True
            ).dt.tz_convert(timezone),
        }
        rows = [self.cells.get(run, {}) for run in run_numbers]
        for name in [COMMENT, *names]:
            # As DAMNIT: a missing value is pd.NA, but a column no run has a value in
            # (a variable not computed yet, no comments at all) is None throughout.
            na = pd.NA if any(name in row for row in rows) else None
            data[name] = pd.Series([row.get(name, na) for row in rows], dtype=object)
        frame = pd.DataFrame(data)
        if with_titles:
            frame = frame.rename(columns={**FIXED_TITLES, **self.titles()})
        return frame


async def read_table(conn: asyncpg.Connection | asyncpg.Pool, proposal: int) -> RunTable:
    """Read the whole table of ``proposal`` (in one repeatable-read snapshot)."""
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as c:
            return await read_table(c, proposal)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        runs = await conn.fetch(
            "SELECT run, start_time, added_at, cells FROM runs WHERE proposal = $1 ORDER BY run",
            proposal,
        )
        variables = await conn.fetch(
            """SELECT v.name, v.title, v.units, v.user_type,
                      coalesce(array_agg(DISTINCT t.tag) FILTER (WHERE t.tag IS NOT NULL), '{}')
                          AS tags
               FROM variables v LEFT JOIN variable_tags t
                    ON t.proposal = v.proposal AND t.variable = v.name
               WHERE v.proposal = $1 GROUP BY v.name, v.title, v.units, v.user_type
               ORDER BY v.name""",
            proposal,
        )
    table = RunTable(
        proposal=proposal,
        runs=[(r["run"], r["start_time"], r["added_at"]) for r in runs],
        columns=[
            Column(v["name"], v["title"], v["units"], v["user_type"], tuple(sorted(v["tags"])))
            for v in variables
        ],
        cells={r["run"]: decode_cells(r["cells"]) for r in runs},
    )
    # values of variables without a definition (e.g. from an older context) still show
    known = {c.name for c in table.columns} | {COMMENT, START_TIME}
    extra = set().union(*table.cells.values()) - known if table.cells else set()
    table.columns.extend(Column(n, n) for n in sorted(extra))
    return table
