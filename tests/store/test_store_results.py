"""Results through the handlers into real PostgreSQL and the run file, read back by the API."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from runstream_common import parsers
from runstream_common.errors import PermanentError
from runstream_common.messages import RunKnown, SetComment, VariableResult
from runstream_store.adapters.hdf5_merge import run_file_path
from runstream_store.adapters.postgres import Repository
from runstream_store.api import Proposal
from runstream_store.handlers import Handlers

from .fragments import Fragment, every_type
from .helpers import DELIVERY, RecordingFeed

pytestmark = pytest.mark.integration

P, R = 2212, 7


def _assert_same(expected: Any, got: Any, name: str) -> None:
    if isinstance(expected, xr.DataArray | xr.Dataset):
        assert type(got) is type(expected), name
        same: bool = expected.identical(got)  # type: ignore[arg-type]  # coords and attrs too
        assert same, f"{name}: {expected} != {got}"
    else:
        assert np.array_equal(np.asarray(got), np.asarray(expected)), name
        assert np.asarray(got).dtype == np.asarray(expected).dtype, name


async def test_every_return_type_round_trips_fragment_to_api(
    handlers: Handlers, repo: Repository, feed: RecordingFeed, context_dir: Path, pg_dsn: str
) -> None:
    frag = every_type(context_dir, P, R)
    message = frag.message(revision=10)
    await handlers.results_ready(message)

    assert frag.path is not None
    assert not frag.path.exists(), "fragment deleted after the merge"
    run_file = run_file_path(context_dir, P, R)
    assert run_file.exists()

    def read_all() -> None:
        with Proposal(P, dsn=pg_dsn) as prop:
            run = prop[R]
            for name, expected in frag.expected.items():
                _assert_same(expected, run[name].read(), name)
            assert run["an_int"].units == "counts"
            assert run["line"].units == "mJ"
            assert run["an_int"].summary() == 42
            assert run["a_complex"].summary() == complex(1.5, -2.0)
            assert run["a_bool"].summary() is True
            assert run["a_string"].summary() == "hello runstream"
            assert run["cube"].summary() == "float64: (2, 3, 4, 5)"
            assert run["ds"].summary().startswith("Dataset (")
            trend = run["line"].summary()
            assert trend.shape[0] == 2
            assert trend.dtype == np.float64
            np.testing.assert_array_equal(trend, frag.expected_summary["line"])
            thumb = run["image2d"].summary()
            assert thumb.ndim == 3
            assert thumb.shape[2] == 4
            assert max(thumb.shape[:2]) <= 300
            assert run["broken"].error == ("division by zero", "ZeroDivisionError")
            with pytest.raises(KeyError, match="ZeroDivisionError"):
                run["broken"].read()
            assert "nothing" not in run
            assert "broken" not in run
            assert run["start_time"].read() == pytest.approx(1_700_000_000.0)

    await asyncio.to_thread(read_all)

    # the file is readable the way DAMNIT reads it
    da = xr.load_dataarray(run_file, group="xgm", engine="h5netcdf")
    assert da.identical(frag.expected["xgm"])
    with h5py.File(run_file, "r") as f:
        assert f.attrs["provenance"] == "context.py"
        assert f[".errors/broken"].attrs["type"] == "ZeroDivisionError"
        assert f["line/data"].compression == "gzip"
        assert f["figure"].attrs["_damnit_objtype"] == "image"
        assert f["xgm"].attrs["_damnit_objtype"] == "dataarray"
        assert f[".reduced/line"].attrs["summary_type"] == "trendline"
        assert float(f["start_time/data"][()]) == pytest.approx(1_700_000_000.0)

    updated = feed.of_type("values_updated")
    assert len(updated) == 1
    values = updated[0].values
    assert values["an_int"].summary == 42
    assert values["an_int"].units == "counts"
    assert values["a_complex"].summary == (1.5, -2.0)
    assert values["a_complex"].summary_type == "complex"
    assert values["line"].summary_type == "trendline"
    assert values["line"].summary is None
    assert values["broken"].error_cls == "ZeroDivisionError"
    assert values["nothing"].cleared is True
    assert values["start_time"].summary == pytest.approx(1_700_000_000.0)
    assert [m.run for m in feed.of_type("run_added")] == [R]
    order = [m.type for _, _, m in feed.sent]
    assert order.index("run_added") < order.index("values_updated")  # the row before its values


async def test_redelivery_leaves_one_current_value_and_one_history_entry(
    handlers: Handlers, repo: Repository, feed: RecordingFeed, context_dir: Path
) -> None:
    frag = Fragment(context_dir, P, R)
    frag.scalar("energy", 1.5)
    frag.array("trace", np.arange(20.0))
    message = frag.message(revision=5)
    await handlers.results_ready(message)
    await handlers.results_ready(message)  # redelivered
    await handlers.results_ready(message.model_copy())  # a duplicate publish

    current = await repo.current_values(P, R)
    assert set(current) == {"energy", "trace"}
    assert current["energy"].value_float == 1.5
    for name in ("energy", "trace"):
        history = await repo.history(P, R, name)
        assert len(history) == 1
        assert history[0][0].result_id == message.result_id
    # every delivery told the GUIs the same state (idempotent re-publish), one RunAdded
    views = [m.values["energy"] for m in feed.of_type("values_updated")]
    assert views
    assert all(v == views[0] for v in views)
    assert len(feed.of_type("run_added")) == 1


async def test_an_older_revision_never_overwrites_a_newer_one(
    handlers: Handlers, repo: Repository, feed: RecordingFeed, context_dir: Path
) -> None:
    new = Fragment(context_dir, P, R)
    new.scalar("energy", 2.0)
    new.array("trace", np.full(10, 2.0))
    await handlers.results_ready(new.message(revision=200, context_hash="new"))

    old = Fragment(context_dir, P, R)
    old.scalar("energy", 1.0)
    old.array("trace", np.full(10, 1.0))
    old.scalar("only_old", 9)
    old_message = old.message(revision=100, context_hash="old")
    feed.clear()
    await handlers.results_ready(old_message)

    current = await repo.current_values(P, R)
    assert current["energy"].value_float == 2.0
    assert current["energy"].context_hash == "new"
    assert current["only_old"].value_int == 9  # nothing newer existed for it
    history = await repo.history(P, R, "energy")
    assert [(v.value_float, superseded) for v, superseded in history] == [
        (2.0, False),
        (1.0, True),
    ]
    run_file = run_file_path(context_dir, P, R)
    with h5py.File(run_file, "r") as f:
        np.testing.assert_array_equal(f["trace/data"][()], np.full(10, 2.0))
        assert float(f["energy/data"][()]) == 2.0
        assert int(f["only_old/data"][()]) == 9
    (update,) = feed.of_type("values_updated")
    assert set(update.values) == {"only_old", "start_time"}
    assert old.path is not None
    assert not old.path.exists()

    # the same revision again (e.g. the proc pass of the same context) does replace
    same = Fragment(context_dir, P, R)
    same.scalar("energy", 3.0)
    await handlers.results_ready(same.message(revision=200, context_hash="new"))
    assert (await repo.current_values(P, R, ["energy"]))["energy"].value_float == 3.0


async def test_error_removes_old_data_and_none_clears_the_value(
    handlers: Handlers, repo: Repository, context_dir: Path, pg_dsn: str
) -> None:
    first = Fragment(context_dir, P, R)
    first.array("trace", np.arange(50.0))
    first.dataarray("da", xr.DataArray(np.arange(4.0), dims="x", coords={"x": np.arange(4)}))
    first.scalar("scalar", 5)
    await handlers.results_ready(first.message(revision=1))

    second = Fragment(context_dir, P, R)
    second.error("trace", "no data", "SourceNameError")
    second.none("scalar")
    # a reprocessed DataArray without its coordinates loses the old ones
    second.dataarray("da", xr.DataArray(np.arange(3.0), dims="y"))
    await handlers.results_ready(second.message(revision=2))

    run_file = run_file_path(context_dir, P, R)
    with h5py.File(run_file, "r") as f:
        assert "trace" not in f
        assert "trace" not in f[".reduced"]
        assert f[".errors/trace"][()].decode() == "no data"
        assert "scalar" not in f
        assert "scalar" not in f[".reduced"]
        assert "x" not in f["da"]
    da = xr.load_dataarray(run_file, group="da", engine="h5netcdf")
    assert da.dims == ("y",)
    assert "x" not in da.coords

    current = await repo.current_values(P, R)
    assert current["trace"].error == "no data"
    assert current["trace"].kind == "none"
    assert current["trace"].summary_type is None
    assert current["scalar"].cleared
    assert current["scalar"].value_int is None

    third = Fragment(context_dir, P, R)
    third.array("trace", np.arange(5.0))
    await handlers.results_ready(third.message(revision=3))
    with h5py.File(run_file, "r") as f:
        assert "trace" not in f[".errors"]
    current = await repo.current_values(P, R, ["trace"])
    assert current["trace"].error is None
    assert current["trace"].summary_type == "trendline"

    def table() -> pd.DataFrame:
        with Proposal(P, dsn=pg_dsn) as prop:
            return prop.table()

    frame = await asyncio.to_thread(table)
    row = frame.set_index("run").loc[R]
    assert row["scalar"] is None  # cleared: a NULL value, not a missing one
    assert row["trace"] == "<sparkline>"


async def test_fragment_problems_are_permanent_and_change_nothing(
    handlers: Handlers, repo: Repository, context_dir: Path, tmp_path: Path
) -> None:
    frag = Fragment(context_dir, P, R)
    frag.array("trace", np.arange(5.0))
    message = frag.message()
    assert frag.path is not None
    frag.path.unlink()
    with pytest.raises(PermanentError, match="did not appear"):
        await handlers.results_ready(message)

    outside = tmp_path / "elsewhere.h5"
    outside.write_bytes(b"")
    with pytest.raises(PermanentError, match="not under"):
        await handlers.results_ready(message.model_copy(update={"fragment": str(outside)}))
    assert outside.exists()

    garbage = context_dir / "extracted_data" / "fragments" / "garbage.h5"
    garbage.write_bytes(b"not hdf5")
    with pytest.raises(PermanentError, match="cannot read fragment"):
        await handlers.results_ready(message.model_copy(update={"fragment": str(garbage)}))

    assert await repo.current_values(P, R) == {}
    assert not await repo.is_applied(message.result_id)
    assert not run_file_path(context_dir, P, R).exists()


async def test_a_variable_that_cannot_be_merged_becomes_an_error_not_a_lost_job(
    handlers: Handlers, repo: Repository, context_dir: Path
) -> None:
    frag = Fragment(context_dir, P, R)
    frag.scalar("good", 1)
    frag.write()
    # claims fragment data that the fragment does not have
    frag.results.append(VariableResult(name="ghost", summary_type="thumbnail", in_fragment=True))
    await handlers.results_ready(frag.message())
    current = await repo.current_values(P, R)
    assert current["good"].value_int == 1
    assert current["ghost"].error_cls == "StoreWriteError"
    assert "no objects" in (current["ghost"].error or "")


async def test_results_without_fragment_are_written_inline(
    handlers: Handlers, repo: Repository, context_dir: Path
) -> None:
    frag = Fragment(context_dir, P, R)
    frag.scalar("n", 3, in_fragment=False)
    frag.scalar("s", "text", in_fragment=False)
    frag.scalar("c", complex(0, 1), in_fragment=False)
    frag.scalar("big", 2**70, in_fragment=False)
    await handlers.results_ready(frag.message(with_fragment=False))
    with h5py.File(run_file_path(context_dir, P, R), "r") as f:
        assert int(f["n/data"][()]) == 3
        assert f[".reduced/s"][()].decode() == "text"
        assert complex(f["c/data"][()]) == complex(0, 1)
    current = await repo.current_values(P, R)
    assert current["big"].inline_summary == 2**70
    assert current["c"].inline_summary == (0.0, 1.0)


async def test_concurrent_results_and_commands_for_one_run_all_land(
    handlers: Handlers, repo: Repository, context_dir: Path, pg_dsn: str
) -> None:
    await handlers.on_run_known(RunKnown(proposal=P, run=R), DELIVERY)
    messages = []
    for i in range(8):
        frag = Fragment(context_dir, P, R)
        frag.scalar(f"v{i}", i, in_fragment=i % 2 == 0)
        frag.array(f"a{i}", np.full(5, float(i)))
        messages.append(frag.message(revision=1))
    comments = [SetComment(proposal=P, run=R, text=f"c{i}") for i in range(4)]
    await asyncio.gather(
        *(handlers.results_ready(m) for m in messages),
        *(handlers.on_command(c, DELIVERY) for c in comments),
    )
    with h5py.File(run_file_path(context_dir, P, R), "r") as f:
        for i in range(8):
            assert int(f[f"v{i}/data"][()]) == i
            np.testing.assert_array_equal(f[f"a{i}/data"][()], np.full(5, float(i)))

    def table() -> pd.DataFrame:
        with Proposal(P, dsn=pg_dsn) as prop:
            return prop.table()

    row = (await asyncio.to_thread(table)).set_index("run").loc[R]
    assert [row[f"v{i}"] for i in range(8)] == list(range(8))  # the per-run cells saw every write
    assert row["comment"] in {c.text for c in comments}
    current = await repo.current_values(P, R, ["comment"])
    assert row["comment"] == current["comment"].value_text


async def test_non_finite_summaries_come_from_the_fragment(
    handlers: Handlers, repo: Repository, feed: RecordingFeed, context_dir: Path, pg_dsn: str
) -> None:
    frag = Fragment(context_dir, P, R)
    frag.scalar("nan_value", float("nan"))
    frag.scalar("inf_complex", complex(float("inf"), 1.0))
    # JSON cannot carry them: the executor sends no inline summary, the value is in the fragment
    frag.results = [
        r.model_copy(update={"summary": None, "summary_type": None})
        if r.name == "nan_value"
        else r.model_copy(update={"summary": None})
        for r in frag.results
    ]
    await handlers.results_ready(frag.message())
    current = await repo.current_values(P, R)
    assert current["nan_value"].kind == "float"
    assert math.isnan(current["nan_value"].value_float or 0.0)
    assert current["inf_complex"].kind == "complex"
    assert current["inf_complex"].value_float == math.inf
    (update,) = feed.of_type("values_updated")
    # the feed stays valid JSON for every consumer
    parsed = parsers.UPDATES.parse(update.model_dump_json())
    assert parsed.values["nan_value"].summary is None
    assert parsed.values["inf_complex"].summary is None

    def row() -> pd.Series:
        with Proposal(P, dsn=pg_dsn) as prop:
            return prop.table().set_index("run").loc[R]

    cells = await asyncio.to_thread(row)
    assert math.isnan(cells["nan_value"])
    assert cells["inf_complex"] == complex(math.inf, 1.0)
