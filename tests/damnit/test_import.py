"""A folder made by DAMNIT 0.4 itself (``damnit reprocess --direct`` on mock runs, then
its combiner) imported into runstream: ``runstream table`` equals DAMNIT's table, the
import is idempotent, and new runs then appear in the same folder's runs.sqlite."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from typing import Any

import asyncpg
import pytest

from .conftest import DamnitStack, make_run_files

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(900),
    pytest.mark.asyncio(loop_scope="session"),
]

P = 3200
CONTEXT = """
from damnit_ctx import Variable
import numpy as np

@Variable(title="Trains", tags="counts")
def n_trains(run):
    return len(run.train_ids)

@Variable(title="Label")
def label(run, n: "meta#run_number"):
    return f"run {n}"

@Variable(title="Image")
def image(run, n: "meta#run_number"):
    return np.outer(np.arange(20.0), np.arange(10.0)) * n

@Variable(title="Broken")
def broken(run):
    raise ValueError("always fails")
"""


def _json_table(stack: DamnitStack) -> dict[int, dict[str, Any]]:
    done = stack.runstream("table", str(P), "--json", "--dsn", stack.dsn)
    assert done.returncode == 0, done.stdout + done.stderr
    return {r["run"]: r for r in json.loads(done.stdout)["runs"]}


def _plain(value: Any) -> Any:
    if isinstance(value, dict) and "time" in value:
        return value["time"]
    if isinstance(value, dict) and "complex" in value:
        return value["complex"]
    if isinstance(value, dict) and ("na" in value or value.get("float") == "nan"):
        return None  # a missing cell (DAMNIT's table has NaN or pd.NA; --json says null)
    return value


async def _history_size(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM run_value_history"))
    finally:
        await conn.close()


async def test_import_a_folder_damnit_made(shared_stack: Any) -> None:
    stack: DamnitStack = await shared_stack("", P)
    data_root = stack.root / "exp"
    proposal_dir = data_root / "FXE" / "202401" / f"p{P:06d}"
    make_run_files(stack.root, proposal_dir, [1])
    folder = stack.root / "damnit-folder"
    context = stack.root / "damnit-context.py"
    context.write_text(textwrap.dedent(CONTEXT))
    made = stack.damnit(
        "make_folder.py", str(folder), str(P), str(context), "1",
        XFEL_DATA_ROOT=str(data_root), EXTRA_DATA_DATA_ROOT=str(data_root), timeout=300,
    )  # fmt: skip
    before = stack.damnit("api_dump.py", str(folder))
    assert before["runs"] == [1]
    assert before["table"]["1"]["n_trains"] == 400
    assert before["table"]["1"]["comment"] == "first light"

    done = stack.runstream(
        "damnit", "import", str(folder), "--data-root", str(proposal_dir), timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "imported" in done.stdout

    # runstream's table equals DAMNIT's, value for value.
    ours = _json_table(stack)
    assert sorted(ours) == [1]
    for run in (1,):
        theirs = {k: _plain(v) for k, v in before["table"][str(run)].items() if k != "proposal"}
        mine = ours[run]
        assert set(theirs) == set(mine) - {"errors"}, (sorted(theirs), sorted(mine))
        for name, value in theirs.items():
            if name == "start_time":
                assert mine[name] == value, (run, name)
            else:
                assert mine[name] == value, (run, name, value, mine[name])
        assert mine["errors"]["broken"] == {"error_cls": "ValueError", "error": "always fails"}
    # the settings DAMNIT kept, the user variable, the tags and the db_id came along
    config = stack.runstream("config", str(P), "--json", "--dsn", stack.dsn)
    assert json.loads(config.stdout)["concurrent_jobs"] == 7
    conn = sqlite3.connect(folder / "runs.sqlite")
    try:
        assert (
            conn.execute("SELECT value FROM metameta WHERE key='db_id'").fetchone()[0]
            == made["db_id"]
        )
    finally:
        conn.close()
    pg = await asyncpg.connect(stack.dsn)
    try:
        assert (
            await pg.fetchval(
                "SELECT user_type FROM variables WHERE proposal=$1 AND name='sample'", P
            )
            == "string"
        )
        assert (
            await pg.fetchval(
                "SELECT tag FROM variable_tags WHERE proposal=$1 AND variable='n_trains'", P
            )
            == "counts"
        )
    finally:
        await pg.close()

    # Importing twice changes nothing.
    size = await _history_size(stack.dsn)
    again = stack.runstream("damnit", "import", str(folder), "--no-register", timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 runs, 0 values, 0 variables, 0 settings" in again.stdout
    assert await _history_size(stack.dsn) == size
    assert _json_table(stack) == ours

    # runstream processes the proposal from now on, into the same runs.sqlite.
    stack.context_dir = folder
    make_run_files(stack.root, proposal_dir, [2])
    await stack.process([2])
    await stack.wait_projected([2], ("n_trains", "label", "image", "broken"))
    after = stack.damnit("api_dump.py", str(folder))
    assert after["runs"] == [1, 2]
    assert after["table"]["2"]["n_trains"] == 400
    assert after["table"]["2"]["label"] == "run 2"
    assert after["table"]["2"]["image"] == "<thumbnail>"
    assert after["table"]["1"]["comment"] == "first light"  # kept
    assert after["values"]["1"]["sample"]["read"] == "Au foil"
    assert (folder / "extracted_data" / f"p{P}_r2.h5").exists()
