"""Types and storage (damnit.md §7 "Types and storage", §1.6, §4.1)."""

from __future__ import annotations

import io
from pathlib import Path

import h5py
import numpy as np
import pytest
import pytest_asyncio
import xarray as xr
from PIL import Image
from runstream_executor.pool import WorkerPool
from runstream_executor.results import build_results, variable_result

from .helpers import Evaluated, run_context

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="session")]

TYPES_CONTEXT = """
from damnit_ctx import Variable, Cell
import numpy as np
import xarray as xr
import matplotlib.pyplot as plt

@Variable(summary="mean")
def da_mean(run):
    return xr.DataArray(np.arange(10.0), dims=["trainId"])

@Variable(summary="size")
def da_size(run):
    return xr.DataArray(np.arange(10.0), dims=["trainId"])

@Variable
def named(run):
    return xr.DataArray(
        np.arange(6.0).reshape(2, 3),
        dims=["x", "y"],
        coords={"x": [10, 20], "y": [1, 2, 3], "aux": ("x", ["a", "b"])},
        attrs={"units": "mJ", "long_name": "Foo", "note": "kept"},
        name="foo/manchu",
    )

@Variable
def dataset(run):
    return xr.Dataset(
        {"bar/baz": ("t", np.arange(4.0)), "cplx": ("t", np.arange(4) * (1 + 2j))},
        coords={"t": [0, 1, 2, 3]},
    )

@Variable
def cplx(run):
    return 1 + 2j

@Variable
def flag(run):
    return True

@Variable
def figure(run):
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([1, 3, 2])
    return fig

@Variable
def axes(run):
    fig, ax = plt.subplots()
    ax.plot([1, 2])
    return ax

@Variable
def image(run):
    return np.random.default_rng(1).random((64, 50))

@Variable
def row(run):
    return xr.DataArray(np.arange(20.0).reshape(1, 20))

@Variable
def line(run):
    return np.sin(np.arange(15000) / 100.0)

@Variable
def cube(run):
    return np.zeros((2, 2, 2, 2))

@Variable
def summed(run):
    return Cell(np.arange(10), summary="sum", bold=True, background="#bbdddd")

@Variable
def explicit(run):
    return Cell(np.arange(10), summary="sum", summary_value=7)

@Variable
def text(run):
    return "hello"

@Variable
def previewed(run):
    return Cell(np.zeros((3, 3, 3)), preview=np.arange(5.0))

@Variable
def bool_preview(run):
    return Cell(np.arange(4), preview=np.array([[True, False], [False, True]]))

@Variable
def fig_preview(run):
    fig, ax = plt.subplots()
    ax.plot([1, 2])
    return Cell(np.arange(3), preview=fig)

@Variable(units="uJ")
def var_units(run):
    return 1.5

@Variable(units="uJ")
def cell_units(run):
    return Cell(1.5, units="mJ")

@Variable(units="uJ")
def da_units(run):
    return xr.DataArray(np.arange(3.0), dims=["t"], attrs={"units": "mJ"})

@Variable(units="uJ")
def failing_with_units(run):
    raise ValueError("no")

@Variable
def bad_attr(run):
    return xr.DataArray(np.arange(3.0), dims=["t"], attrs={"nested": {"a": 1}})
"""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def types_eval(
    pool: WorkerPool, tmp_path_factory: pytest.TempPathFactory, mock_proposal: Path
) -> Evaluated:
    """The types context evaluated once for the module."""
    return await run_context(pool, TYPES_CONTEXT, tmp_path_factory.mktemp("ctx"), mock_proposal)


def png(data: np.ndarray) -> Image.Image:
    return Image.open(io.BytesIO(np.asarray(data, dtype=np.uint8).tobytes()))


async def test_summaries_by_type(types_eval: Evaluated, tmp_path: Path) -> None:
    ev = types_eval
    assert ev.summary("da_mean") == 4.5
    size = ev.summary("da_size")
    assert size == 10
    assert type(size) is int
    prepared = ev.outcomes["dataset"].prepared
    assert prepared is not None
    assert str(prepared["summary"]).startswith("Dataset (")
    assert ev.summary("cplx") == 1 + 2j
    assert ev.outcomes["cplx"].prepared["summary_type"] == "complex"  # type: ignore[index]
    assert ev.summary("flag") is True
    for name in ("figure", "axes"):
        thumb = png(ev.summary(name))  # type: ignore[arg-type]
        assert max(thumb.size) == 300
        assert ev.outcomes[name].prepared["kind"] == "image"  # type: ignore[index]
    figure_data = ev.outcomes["figure"].prepared["data"]  # type: ignore[index]
    assert figure_data.dtype == np.uint8
    assert figure_data.shape[2] == 4
    for name in ("image", "row", "named"):  # 2-D ndarray, (1, n) and 2-D DataArrays
        thumb = png(ev.summary(name))  # type: ignore[arg-type]
        assert thumb.size == (300, 300)
        assert thumb.mode == "RGBA"
    trend = ev.summary("line")
    assert isinstance(trend, np.ndarray)
    assert trend.shape[0] == 2
    assert trend.shape[1] <= 150
    assert ev.outcomes["line"].prepared["summary_type"] == "trendline"  # type: ignore[index]
    assert np.isclose(trend[1].max(), 1.0, atol=1e-3)
    assert np.isclose(trend[1].min(), -1.0, atol=1e-3)
    assert ev.summary("cube") == "float64: (2, 2, 2, 2)"
    assert ev.summary("summed") == 45
    assert ev.summary("explicit") == 7
    assert ev.summary("text") == "hello"
    assert ev.outcomes["text"].prepared["max_diff"] is None  # type: ignore[index]
    assert ev.outcomes["summed"].prepared["max_diff"] == 9.0  # type: ignore[index]


async def test_previews_drive_the_summary(types_eval: Evaluated, tmp_path: Path) -> None:
    ev = types_eval
    # The preview wins even for >=3-D data (appendix quirk 1).
    assert ev.outcomes["previewed"].prepared["summary_type"] == "trendline"  # type: ignore[index]
    bool_prev = ev.outcomes["bool_preview"].prepared["preview"]  # type: ignore[index]
    assert bool_prev["data"].dtype == np.bool_
    assert ev.outcomes["bool_preview"].prepared["summary_type"] == "thumbnail"  # type: ignore[index]
    fig_prev = ev.outcomes["fig_preview"].prepared["preview"]  # type: ignore[index]
    assert fig_prev["kind"] == "image"
    assert fig_prev["data"].shape[2] == 4


async def test_units(types_eval: Evaluated, tmp_path: Path) -> None:
    ev = types_eval
    units = {
        n: variable_result(ev.outcomes[n], in_fragment=False).units
        for n in ("var_units", "cell_units", "da_units", "failing_with_units")
    }
    # DataArray units beat Variable units (quirk 2); errors have no units (quirk 8).
    assert units == {
        "var_units": "uJ",
        "cell_units": "mJ",
        "da_units": "mJ",
        "failing_with_units": None,
    }


async def test_fragment_layout_and_round_trips(types_eval: Evaluated, tmp_path: Path) -> None:
    ev = types_eval
    path = tmp_path / "frag" / "p1234_r1.abc.h5"
    written = build_results(
        ev.outcomes,
        ev.names,
        fragment=path,
        start_time=1700000000.5,
        include_errors_in_file=True,
    )
    assert written.fragment == str(path)
    assert not list(path.parent.glob("*.writing"))
    results = {r.name: r for r in written.results}
    # Saving failed for bad_attr only: it is reported, every other variable is kept.
    assert results["bad_attr"].error_cls is not None
    assert results["bad_attr"].in_fragment is False
    assert results["da_mean"].in_fragment
    assert results["da_mean"].error is None
    assert results["cplx"].summary == (1.0, 2.0)
    assert results["cplx"].summary_type == "complex"
    assert results["image"].summary is None
    assert results["image"].summary_type == "thumbnail"
    assert results["summed"].bold is True
    assert results["summed"].background == (0xBB, 0xDD, 0xDD)
    with h5py.File(path, "r") as f:
        # the store's run-file settings (persistent free-space tracking): a new run's
        # fragment can become its run file as it is
        strategy = f.id.get_create_plist().get_file_space_strategy()
        assert strategy == (h5py.h5f.FSPACE_STRATEGY_FSM_AGGR, True, 1)
        assert f.attrs["provenance"] == "context.py"
        assert f["start_time/data"][()] == 1700000000.5
        assert "bad_attr" not in f
        assert "bad_attr" in f[".errors"]
        assert f[".errors/failing_with_units"].attrs["type"] == "ValueError"
        assert f[".errors/failing_with_units"][()].decode() == "no"
        assert f["flag/data"].dtype == np.bool_
        assert f[".reduced/flag"][()] is np.True_
        assert f["named"].attrs["_damnit_objtype"] == "dataarray"
        assert f["dataset"].attrs["_damnit_objtype"] == "dataset"
        assert f["figure"].attrs["_damnit_objtype"] == "image"
        assert f["line/data"].compression is None  # plain datasets: uncompressed, as DAMNIT 0.4
        reduced = f[".reduced/summed"]
        assert reduced[()] == 45
        assert bool(reduced.attrs["bold"]) is True
        assert list(reduced.attrs["background"]) == [0xBB, 0xDD, 0xDD]
        assert f[".reduced/explicit"][()] == 7
        assert f[".reduced/line"].attrs["summary_type"] == "trendline"
        assert f[".reduced/var_units"].attrs["units"] == "uJ"
        assert f[".reduced/text"][()].decode() == "hello"
        assert "max_diff" not in f[".reduced/text"].attrs
        assert f[".reduced/cube"][()].decode() == "float64: (2, 2, 2, 2)"
        assert f[".preview/previewed"].shape == (5,)
        assert f[".preview/fig_preview"].attrs["_damnit_objtype"] == "image"
        assert f[".preview/bool_preview"].dtype == np.bool_
        assert f["figure/data"].shape[2] == 4
        assert f["figure/data"].dtype == np.uint8
        assert f[".reduced/cplx"][()] == 1 + 2j
    named = xr.load_dataset(path, group="named", engine="h5netcdf")["foo_manchu"]
    assert named.attrs["long_name"] == "Foo"
    assert named.attrs["units"] == "mJ"
    assert list(named.coords["aux"].values) == ["a", "b"]
    np.testing.assert_array_equal(named.values, np.arange(6.0).reshape(2, 3))
    assert named.dims == ("x", "y")
    assert list(named.coords["x"].values) == [10, 20]
    ds = xr.load_dataset(path, group="dataset", engine="h5netcdf")
    assert set(ds.data_vars) == {"bar_baz", "cplx"}
    np.testing.assert_array_equal(ds["cplx"].values, np.arange(4) * (1 + 2j))


async def test_eval_output_is_complete_per_run_file(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    ev = await run_context(
        pool,
        """
        from damnit_ctx import Variable

        @Variable
        def failing(run):
            return 1 / 0

        @Variable
        def nothing(run):
            return None
        """,
        tmp_path / "ctx",
        mock_proposal,
    )
    path = tmp_path / "out.h5"
    build_results(
        ev.outcomes,
        ev.names,
        fragment=path,
        start_time=None,
        include_errors_in_file=True,
        always_write=True,
    )
    with h5py.File(path, "r") as f:
        assert set(f) == {".errors"}
        assert f[".errors/failing"].attrs["type"] == "ZeroDivisionError"
