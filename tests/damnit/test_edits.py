"""Edits made with DAMNIT's own DamnitDB and announced with its GUI's UpdateAgent reach
runstream: ``runstream table``, the history and the feed; nothing loops, nothing is
applied twice, and an edit that cannot be parsed is rejected on the feed."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

import asyncpg
import h5py
import pytest
from aiokafka import AIOKafkaConsumer
from runstream_common import parsers
from runstream_common.messages import CommandRejected

from .conftest import DamnitStack

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(600),
    pytest.mark.asyncio(loop_scope="session"),
]

CONTEXT = """
from damnit_ctx import Variable

@Variable(title="Trains")
def n_trains(run):
    return len(run.train_ids)
"""


async def _history(dsn: str, proposal: int, run: int, name: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT * FROM run_value_history WHERE proposal = $1 AND run = $2 AND name = $3 "
            "ORDER BY id",
            proposal,
            run,
            name,
        )
    finally:
        await conn.close()


async def _feed(stack: DamnitStack, into: list[Any]) -> None:
    consumer = AIOKafkaConsumer(
        stack.kafka.topics.updates,
        bootstrap_servers=stack.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    update = parsers.UPDATES.parse(record.value)
                    if getattr(update, "proposal", None) == stack.proposal:
                        into.append(update)
    finally:
        await consumer.stop()


def _sqlite_value(stack: DamnitStack, run: int, name: str) -> Any:
    conn = sqlite3.connect(f"file:{stack.sqlite}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT value FROM run_variables WHERE run = ? AND name = ?", (run, name)
        ).fetchone()
        return None if row is None else row[0]
    finally:
        conn.close()


async def test_gui_edits_reach_runstream(shared_stack: Any) -> None:
    stack: DamnitStack = await shared_stack(CONTEXT, 3103)
    stack.make_runs([1, 2])
    await stack.process([1, 2])
    await stack.wait_projected([1, 2], ("n_trains",))
    feed: list[Any] = []
    follower = asyncio.create_task(_feed(stack, feed))
    steps = [
        {"define": ["thickness", "Sample thickness", "number"]},
        {"set": [1, "thickness", "1.5"]},
        {"comment": [1, "sample changed"]},
        {"define": ["shots", "Shots", "integer"]},
        {"set": [2, "shots", "12"]},
        {"raw": [1, "shots", "thick"]},  # written behind the GUI's back: not an integer
        # never announced (DAMNIT offline): found by the store's periodic look at the file
        {"quiet_comment": [2, "offline note"]},
    ]
    assert stack.damnit("gui_edit.py", str(stack.context_dir), json.dumps(steps))["done"] == 7

    async def applied() -> bool:
        values = await stack.values()
        return (
            (1, "comment") in values
            and (1, "thickness") in values
            and (2, "shots") in values
            and any(isinstance(m, CommandRejected) for m in feed)
        )

    await stack.wait_for(applied, "the GUI's edits in PostgreSQL", timeout=60)
    values = await stack.values()
    assert values[(1, "comment")]["value_text"] == "sample changed"
    assert values[(1, "thickness")]["value_float"] == 1.5
    assert values[(1, "thickness")]["provenance"] == "manual-input"
    assert values[(2, "shots")]["value_int"] == 12
    assert (1, "shots") not in values
    rejected = [m for m in feed if isinstance(m, CommandRejected)]
    assert len(rejected) == 1
    assert "'thick' is not a valid integer" in rejected[0].reason

    # runstream's own table shows them, with the user variables' titles as DAMNIT's GUI does.
    table = stack.runstream("table", str(stack.proposal), "--json", "--dsn", stack.dsn)
    assert table.returncode == 0, table.stderr
    rows = {r["run"]: r for r in json.loads(table.stdout)["runs"]}
    assert rows[1]["comment"] == "sample changed"
    assert rows[1]["thickness"] == 1.5
    assert rows[2]["shots"] == 12
    assert rows[1]["n_trains"] == 400
    # ... and the run files (DAMNIT's layout: /{name}/data and .reduced/{name}).
    with h5py.File(stack.context_dir / "extracted_data" / f"p{stack.proposal}_r1.h5", "r") as f:
        assert f["comment/data"][()].decode() == "sample changed"
        assert f[".reduced/thickness"][()] == 1.5

    # Each edit is in the history once, and stays once: the store's own messages about
    # it (and the periodic check of the file) do not apply it again.
    await asyncio.sleep(3.5)  # longer than the store's periodic check (3 s in tests)
    follower.cancel()
    assert [h["value_text"] for h in await _history(stack.dsn, stack.proposal, 1, "comment")] == [
        "sample changed"
    ]
    assert len(await _history(stack.dsn, stack.proposal, 1, "thickness")) == 1
    assert len(await _history(stack.dsn, stack.proposal, 2, "shots")) == 1
    # The file keeps the edits (the projection wrote PostgreSQL's identical values back).
    assert _sqlite_value(stack, 1, "comment") == "sample changed"
    assert _sqlite_value(stack, 1, "thickness") == 1.5
    values_updated = [
        m for m in feed if m.type == "values_updated" and "comment" in m.values and m.run == 1
    ]
    assert len(values_updated) == 1  # the feed told runstream's GUIs once

    async def found() -> bool:
        row = (await stack.values()).get((2, "comment"))
        return row is not None and row["value_text"] == "offline note"

    await stack.wait_for(found, "the unannounced edit in PostgreSQL", timeout=60)

    # The other way: a comment set with runstream's CLI reaches the file.
    done = stack.runstream("comment", str(stack.proposal), "2", "dark run")
    assert done.returncode == 0, done.stdout + done.stderr

    async def in_file() -> bool:
        return _sqlite_value(stack, 2, "comment") == "dark run"

    await stack.wait_for(in_file, "runstream's comment in runs.sqlite", timeout=30)
