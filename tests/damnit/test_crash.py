"""kill -9 of the store in the middle of a burst, and inside the SQLite transaction
itself: afterwards runs.sqlite opens cleanly (integrity check, DAMNIT's own API) and
holds exactly what PostgreSQL holds."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

import pytest

from .conftest import DamnitStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CONTEXT = """
from damnit_ctx import Variable
import numpy as np

@Variable(title="Trains")
def n_trains(run):
    return len(run.train_ids)

@Variable(title="Number")
def number(run, n: "meta#run_number"):
    return n

@Variable(title="Square")
def square(run, n: "var#number"):
    return n * n

@Variable(title="Label")
def label(run, n: "meta#run_number"):
    return f"run {n}"

@Variable(title="Mean")
def mean(run, n: "meta#run_number"):
    return float(np.mean(np.arange(n + 1)))
"""
NAMES = ("n_trains", "number", "square", "label", "mean")
RUNS = list(range(1, 9))


def _file_rows(stack: DamnitStack) -> tuple[dict[tuple[int, str], Any], dict[int, Any]]:
    conn = sqlite3.connect(f"file:{stack.sqlite}?mode=ro", uri=True, timeout=10)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        values = {
            (r, n): v for r, n, v in conn.execute("SELECT run, name, value FROM run_variables")
        }
        starts = dict(conn.execute("SELECT run, start_time FROM run_info").fetchall())
        return values, starts
    finally:
        conn.close()


def _pg_value(row: Any) -> Any:
    kind = row["kind"]
    if kind == "int":
        return row["value_int"]
    if kind == "float":
        return row["value_float"]
    if kind == "str":
        return row["value_text"]
    return None


async def _equal(stack: DamnitStack) -> bool:
    import asyncpg

    pg = await stack.values()
    conn = await asyncpg.connect(stack.dsn)
    try:
        runs = {
            r["run"]: r["start_time"]
            for r in await conn.fetch(
                "SELECT run, start_time FROM runs WHERE proposal = $1", stack.proposal
            )
        }
    finally:
        await conn.close()
    try:
        values, starts = _file_rows(stack)
    except sqlite3.OperationalError:  # locked by the store's write this instant
        return False
    return values == {k: _pg_value(v) for k, v in pg.items()} and starts == runs


async def test_store_killed_mid_burst_and_mid_transaction(make_stack: Any) -> None:
    stack: DamnitStack = await make_stack(CONTEXT)
    stack.make_runs(RUNS)
    stack.send_events(RUNS[:3])

    async def some_projected() -> bool:
        return len(stack.sqlite_runs()) >= 1

    await stack.wait_for(some_projected, "the first runs in runs.sqlite")
    stack.send_events(RUNS[3:])  # the rest of the burst is on its way ...
    stack.system.kill("store")  # ... when the store is killed (kill -9)
    pg_runs = {r for r, _ in await stack.values()}
    assert len(pg_runs) < len(RUNS), "the burst was over before the kill; nothing was tested"

    # While it is down, a user comments; the next store dies inside the SQLite transaction
    # that would write it (fault injection: os._exit between the inserts and COMMIT).
    comment = stack.runstream(
        "comment", str(stack.proposal), "2", "before the crash", "--wait", "0"
    )
    assert comment.returncode == 0, comment.stdout + comment.stderr
    crashing = stack.system.spawn_store_with_fault("during_projection")
    assert crashing.process is not None
    assert await asyncio.to_thread(crashing.process.wait, 120) == 137
    assert (stack.context_dir / "runs.sqlite-journal").exists()  # died mid-write

    # The file as the crash left it: a valid database (SQLite rolls the journal back).
    _file_rows(stack)
    assert stack.damnit("api_dump.py", str(stack.context_dir))["proposal"] == stack.proposal

    await stack.system.restart("store")

    async def all_stored() -> bool:
        values = await stack.values()
        return all((r, n) in values for r in RUNS for n in NAMES) and (2, "comment") in values

    await stack.wait_for(all_stored, "every value in PostgreSQL", timeout=300)
    await stack.wait_for(lambda: _equal(stack), "runs.sqlite equal to PostgreSQL", timeout=120)

    values, _ = _file_rows(stack)
    assert values[(2, "comment")] == "before the crash"
    assert values[(7, "square")] == 49
    status = stack.runstream("damnit", "status", str(stack.proposal), "--json", "--dsn", stack.dsn)
    assert status.returncode == 0, status.stdout + status.stderr
    info = json.loads(status.stdout)
    assert info["runs_behind"] == 0
    assert info["variables_behind"] is False
    dump = stack.damnit("api_dump.py", str(stack.context_dir))
    assert dump["runs"] == RUNS
    assert {r: dump["table"][str(r)]["square"] for r in RUNS} == {r: r * r for r in RUNS}
