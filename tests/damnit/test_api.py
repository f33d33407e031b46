"""DAMNIT 0.4's Python API on a proposal processed by runstream: the same table, and
``read()``, ``summary()``, ``preview_data()`` for every stored type; DAMNIT's messages
on its topic for a group-less subscriber, as the GUI subscribes."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from .conftest import SCRIPTS, DamnitStack

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(600),
    pytest.mark.asyncio(loop_scope="session"),
]

sys.path.insert(0, str(SCRIPTS))
from describe import cell, describe  # noqa: E402

CONTEXT = """
from damnit_ctx import Variable, Cell
import numpy as np
import xarray as xr

@Variable(title="Trains", units="count")
def n_trains(run):
    return len(run.train_ids)

@Variable(title="Ratio")
def ratio(run, n: "var#n_trains"):
    return n / 3

@Variable(title="Flag")
def flag(run):
    return True

@Variable(title="Label")
def label(run, number: "meta#run_number"):
    return f"run {number}"

@Variable(title="Line")
def line(run):
    return np.sin(np.arange(500) / 10.0)

@Variable(title="Image")
def image(run, number: "meta#run_number"):
    return np.arange(40 * 30, dtype=float).reshape(40, 30) * number

@Variable(title="Cube")
def cube(run):
    return np.ones((2, 3, 4))

@Variable(title="Curve", summary="mean")
def curve(run):
    return xr.DataArray(np.arange(10.0), dims=["trainId"], coords={"trainId": np.arange(10)},
                        attrs={"units": "mJ"}, name="curve")

@Variable(title="Frame")
def frame(run):
    return xr.DataArray(np.arange(12.0).reshape(3, 4), dims=["y", "x"])

@Variable(title="Set")
def dataset(run):
    return xr.Dataset({"a": ("t", np.arange(4.0)), "b": ("t", np.arange(4) * 2.0)},
                      coords={"t": [0, 1, 2, 3]})

@Variable(title="Complex")
def cplx(run):
    return 1 + 2j

@Variable(title="Styled")
def styled(run):
    return Cell(np.arange(10), summary="sum", bold=True, background="#bbdddd", units="V")

@Variable(title="Previewed")
def previewed(run):
    return Cell(np.zeros((3, 3, 3)), preview=np.arange(5.0))

@Variable(title="Figure")
def figure(run):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([1, 3, 2])
    return fig

@Variable(title="Broken")
def broken(run):
    raise ValueError("always fails")

@Variable(title="Nothing")
def nothing(run):
    return None
"""
NAMES = ("n_trains", "ratio", "flag", "label", "line", "image", "cube", "curve", "frame",
         "dataset", "cplx", "styled", "previewed", "figure", "broken")  # fmt: skip
RUNS = [1, 2]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _failed(described: Any) -> bool:
    return isinstance(described, dict) and "error" in described


async def _collect(
    topic: str, bootstrap: str, into: list[dict[str, Any]], ready: asyncio.Event
) -> None:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,  # as DAMNIT's GUI: no group, only what comes from now on
        auto_offset_reset="latest",
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    try:
        while not consumer.assignment():  # the group-less consumer assigns itself
            await consumer.getmany(timeout_ms=50)
        for tp in consumer.assignment():
            await consumer.position(tp)  # "latest" is now
        ready.set()
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                into.extend(json.loads(r.value) for r in records)
    finally:
        await consumer.stop()


async def test_damnit_api_reads_what_runstream_stored(shared_stack: Any) -> None:
    stack: DamnitStack = await shared_stack(CONTEXT, 3101)

    async def created() -> bool:  # at registration, before any run: GUIs can open it
        return stack.sqlite.exists() and bool(stack.sqlite_runs() == {})

    await stack.wait_for(created, "runs.sqlite created at registration", timeout=60)
    # A group-less subscriber on DAMNIT's topic, as the GUI subscribes.
    seen: list[dict[str, Any]] = []
    ready = asyncio.Event()
    follower = asyncio.create_task(
        _collect(f"test.damnit.db-{stack.db_id()}", stack.kafka.bootstrap_servers, seen, ready)
    )
    await asyncio.wait_for(ready.wait(), 30)  # the consumer has its position before the runs
    stack.make_runs(RUNS)
    await stack.process(RUNS)

    async def stored() -> bool:
        values = await stack.values()
        return all((r, n) in values for r in RUNS for n in NAMES)

    await stack.wait_for(stored, "the runs in PostgreSQL")
    await stack.wait_projected(RUNS, NAMES)

    async def announced() -> bool:
        finished = {
            m["data"]["processing_id"] for m in seen if m["msg_kind"] == "processing_finished"
        }
        updated = {m["data"]["run"] for m in seen if m["msg_kind"] == "run_values_updated"}
        return len(finished) >= len(RUNS) and updated >= set(RUNS)

    await stack.wait_for(announced, "DAMNIT's messages for the runs", timeout=60)
    follower.cancel()
    kinds = [m["msg_kind"] for m in seen]
    defined = {m["data"]["name"]: m["data"] for m in seen if m["msg_kind"] == "variable_set"}
    assert set(NAMES) <= set(defined)  # announced as the context revision was loaded
    assert defined["n_trains"]["title"] == "Trains"
    assert defined["n_trains"]["type"] is None
    assert kinds.index("variable_set") < kinds.index("run_values_updated")
    for run in RUNS:
        updates = [m["data"] for m in seen if m["msg_kind"] == "run_values_updated"]
        names_announced = set().union(*(u["values"] for u in updates if u["run"] == run))
        assert set(NAMES) | {"start_time"} <= names_announced
        states = [m["data"] for m in seen if m["msg_kind"] == "processing_state_set"]
        running = next(s for s in states if s["run"] == run and s["status"] == "RUNNING")
        assert running["proposal"] == stack.proposal
        assert running["hostname"]
        finished = [
            i for i, m in enumerate(seen)
            if m["msg_kind"] == "processing_finished"
            and m["data"]["processing_id"] == running["processing_id"]
        ]  # fmt: skip
        assert finished
        assert seen.index(next(m for m in seen if m["data"] == running)) < finished[0]

    # DAMNIT's own API on the folder.
    dump = stack.damnit("api_dump.py", str(stack.context_dir))
    assert dump["proposal"] == stack.proposal
    assert dump["runs"] == RUNS

    from runstream_store.api import Proposal

    with Proposal(stack.proposal, dsn=stack.dsn) as ours:
        table = ours.table()
        for run in RUNS:
            theirs = dump["table"][str(run)]
            row = table[table["run"] == run].iloc[0]
            mine = {str(k): cell(v) for k, v in row.items()}
            assert set(theirs) == set(mine), (sorted(theirs), sorted(mine))
            for column, value in theirs.items():
                assert _same(value, mine[column]), (run, column, value, mine[column])
        assert theirs["broken"] is None  # an error is None in both
        assert theirs["nothing"] is None  # so is a cleared value
        assert theirs["line"] == "<sparkline>"
        assert theirs["image"] == "<thumbnail>"
        assert theirs["cplx"] == {"complex": [1.0, 2.0]}

        for run in RUNS:
            damnit_vars = dump["values"][str(run)]
            assert set(NAMES) - {"broken"} <= set(damnit_vars), sorted(damnit_vars)
            for name in NAMES:
                if name == "broken":
                    continue  # no data: checked below
                theirs_v = damnit_vars[name]
                mine_v = ours[run][name]
                for what, call in (("read", mine_v.read), ("preview", mine_v.preview_data)):
                    assert not _failed(theirs_v[what]), (run, name, what, theirs_v)
                    assert _same(theirs_v[what], describe(call())), (run, name, what)
                assert not _failed(theirs_v["summary"]), (run, name, theirs_v)
            assert damnit_vars["image"]["summary"]["png"] is True
            assert damnit_vars["line"]["summary"]["shape"][0] == 2  # the trendline
            assert damnit_vars["n_trains"]["summary"] == 400
            assert damnit_vars["n_trains"]["units"] == "count"
            assert damnit_vars["curve"]["units"] == "mJ"
            assert damnit_vars["styled"]["summary"] == 45
            assert damnit_vars["cplx"]["summary"] == {"complex": [1.0, 2.0]}
            assert damnit_vars["label"]["read"] == f"run {run}"
            assert damnit_vars["dataset"]["read"]["type"] == "Dataset"
            assert damnit_vars["curve"]["read"]["type"] == "DataArray"
            figure = damnit_vars["figure"]
            assert figure["read"]["dtype"] == "uint8"
            assert figure["read"]["shape"][2] == 4  # RGBA
            assert figure["summary"]["png"] is True
            assert figure["preview"]["shape"] == figure["read"]["shape"]
            # An error and a None result have no data: DAMNIT's API says so (KeyError), as
            # it does on its own folders; their cells are None; runstream keeps the error.
            assert damnit_vars["broken"] == {"indexable": "KeyError"}
            assert damnit_vars["nothing"] == {"indexable": "KeyError"}
            assert ours[run]["broken"].error == ("always fails", "ValueError")
