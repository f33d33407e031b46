"""The Python read API and the table DataFrame, against real PostgreSQL."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from runstream_common.messages import (
    DefineUserVariable,
    RunKnown,
    SetComment,
    SetUserVariable,
    VariableDefinition,
    VariablesDefined,
)
from runstream_store.api import Proposal
from runstream_store.handlers import Handlers

from .fragments import Fragment
from .helpers import DELIVERY

pytestmark = pytest.mark.integration

P = 7300


async def _fill(handlers: Handlers, context_dir: Path) -> None:
    await handlers.on_results(
        VariablesDefined(
            proposal=P,
            context_hash="h",
            revision=1,
            variables=(
                VariableDefinition(name="energy", title="Pulse energy", units="mJ"),
                VariableDefinition(name="trace", title="Trace"),
                VariableDefinition(name="failing", title="Failing"),
            ),
        ),
        DELIVERY,
    )
    one = Fragment(context_dir, P, 1)
    one.scalar("energy", 1.25, units="mJ")
    one.array("trace", np.arange(10.0))
    one.error("failing", "boom", "RuntimeError")
    one.scalar("nan_value", float("nan"), in_fragment=False)
    one.scalar("huge", 2**64, in_fragment=False)
    await handlers.results_ready(one.message(start_time=1_700_000_000.0))
    two = Fragment(context_dir, P, 2)
    two.scalar("energy", 2.5, units="mJ")
    await handlers.results_ready(two.message(start_time=1_700_000_100.0))
    await handlers.on_run_known(RunKnown(proposal=P, run=3), DELIVERY)
    await handlers.on_command(
        DefineUserVariable(proposal=P, name="sample", title="Sample", variable_type="string"),
        DELIVERY,
    )
    await handlers.on_command(
        SetUserVariable(proposal=P, run=2, name="sample", value="Au"), DELIVERY
    )
    await handlers.on_command(SetComment(proposal=P, run=1, text="first"), DELIVERY)


async def test_table_has_damnit_semantics(
    handlers: Handlers, context_dir: Path, pg_dsn: str
) -> None:
    await _fill(handlers, context_dir)

    def read() -> tuple[pd.DataFrame, pd.DataFrame]:
        with Proposal(P, dsn=pg_dsn) as prop:
            return prop.table(), prop.table(with_titles=True)

    frame, titled = await asyncio.to_thread(read)
    assert list(frame["run"]) == [1, 2, 3]
    assert list(frame.columns[:4]) == ["proposal", "run", "start_time", "comment"]
    assert {"energy", "trace", "failing", "sample", "nan_value", "huge"} <= set(frame.columns)
    rows = frame.set_index("run")
    assert rows.loc[1, "energy"] == 1.25
    assert rows.loc[1, "trace"] == "<sparkline>"
    assert rows.loc[1, "failing"] is None  # an error: a NULL value
    assert rows.loc[2, "trace"] is pd.NA  # never computed for run 2: missing
    assert rows.loc[3, "energy"] is pd.NA
    assert rows.loc[2, "sample"] == "Au"
    assert rows.loc[1, "comment"] == "first"
    assert math.isnan(rows.loc[1, "nan_value"])
    assert rows.loc[1, "huge"] == 2**64
    assert rows.loc[1, "start_time"] == pd.Timestamp(1_700_000_000, unit="s", tz="UTC")
    assert str(rows.loc[1, "start_time"].tz) == "Europe/Berlin"
    assert pd.isna(rows.loc[3, "start_time"])
    assert {"Proposal", "Run", "Timestamp", "Comment", "Pulse energy", "Sample"} <= set(
        titled.columns
    )


async def test_indexing_by_name_title_and_errors(
    handlers: Handlers, context_dir: Path, pg_dsn: str
) -> None:
    await _fill(handlers, context_dir)

    def check() -> None:
        with Proposal(P, dsn=pg_dsn) as prop:
            assert prop.runs() == [1, 2]  # run 3 has no start time yet
            assert prop.variables()["energy"] == "Pulse energy"
            run = prop[1]
            assert run["Pulse energy"].name == "energy"
            assert prop[1, "energy"].read() == 1.25
            assert prop[1, "energy"].units == "mJ"
            assert "Pulse energy" in run
            assert "failing" not in run  # errors are not keys ...
            assert run["failing"].error == ("boom", "RuntimeError")  # ... but can be inspected
            assert run["comment"].read() == "first"
            assert run["Timestamp"].read() == 1_700_000_000.0
            assert prop[2]["sample"].read() == "Au"
            assert prop[2]["sample"].provenance == "manual-input"
            history = run["energy"].history()
            assert [(v.value_float, superseded) for v, superseded in history] == [(1.25, False)]
            np.testing.assert_array_equal(run["trace"].preview_data(), np.arange(10.0))
            with pytest.raises(KeyError):
                prop[99]
            with pytest.raises(KeyError):
                run["nope"]
            with pytest.raises(TypeError):
                prop["1"]  # type: ignore[index]
            with pytest.raises(TypeError):
                run[3]

    await asyncio.to_thread(check)


async def test_an_unknown_proposal_is_reported(pg_dsn: str, repo: object) -> None:
    def open_missing() -> None:
        Proposal(123456, dsn=pg_dsn)

    with pytest.raises(FileNotFoundError, match="123456"):
        await asyncio.to_thread(open_missing)
