"""plotly figures and pandas results (DAMNIT 0.4.0): stored as JSON / Parquet bytes, read back whole."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import pytest_asyncio
from runstream_executor.pool import WorkerPool
from runstream_executor.results import build_results
from runstream_store.adapters.hdf5_read import read_data

from .helpers import Evaluated, run_context

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="session")]

CONTEXT = """
from damnit_ctx import Variable, Cell
import numpy as np
import pandas as pd
import plotly.graph_objects as go

@Variable
def scatter(run):
    return go.Figure(go.Scatter(x=[1, 2, 3], y=[4, 1, 2], name="s"))

@Variable(summary="mean")
def series(run):
    return pd.Series(np.arange(5.0), name="energy")

@Variable
def unnamed_series(run):
    return pd.Series([1.0, 4.0, 9.0, 16.0])

@Variable
def frame(run):
    return pd.DataFrame({"pulse": [1, 2, 3], "label": ["a", "b", "c"], 7: [0.5, 1.5, 2.5]})

@Variable
def plotly_preview(run):
    return Cell(np.zeros((2, 2, 2)), preview=go.Figure(go.Bar(y=[3, 1])))
"""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def evaluated(
    pool: WorkerPool, tmp_path_factory: pytest.TempPathFactory, mock_proposal: Path
) -> Evaluated:
    return await run_context(pool, CONTEXT, tmp_path_factory.mktemp("ctx"), mock_proposal)


async def test_summaries(evaluated: Evaluated) -> None:
    ev = evaluated
    assert all(ev.outcomes[n].status == "ok" for n in ev.names), {
        n: ev.outcomes[n].error for n in ev.names
    }
    kinds = {n: ev.outcomes[n].prepared["kind"] for n in ev.names}  # type: ignore[index]
    assert kinds == {
        "scatter": "plotly",
        "series": "series",
        "unnamed_series": "series",
        "frame": "dataframe",
        "plotly_preview": "array",
    }
    # kaleido (a dependency of the executor) renders plotly figures with Debian's chromium.
    assert_png_thumbnail(ev.summary("scatter"))
    assert ev.outcomes["scatter"].prepared["summary_type"] == "thumbnail"  # type: ignore[index]
    assert ev.summary("series") == 2.0  # summary="mean" reduces the Series
    trend = ev.summary("unnamed_series")
    assert isinstance(trend, np.ndarray)
    assert trend.shape[0] == 2  # a numeric Series gets a trendline, as a 1-D array would
    assert str(ev.summary("frame")).startswith("DataFrame (")
    assert_png_thumbnail(ev.summary("plotly_preview"))  # from the preview, as DAMNIT does


def assert_png_thumbnail(summary: object) -> None:
    """A PNG of at most 300 px a side that shows something (not one flat colour)."""
    import io

    from PIL import Image

    assert isinstance(summary, np.ndarray)
    assert summary.dtype == np.uint8
    assert bytes(summary[:8]) == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(summary.tobytes())).convert("RGB")
    assert max(image.size) == 300
    assert len(image.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 10


async def test_fragment_round_trip(evaluated: Evaluated, tmp_path: Path) -> None:
    path = tmp_path / "p1234_r1.abc.h5"
    written = build_results(evaluated.outcomes, evaluated.names, fragment=path, start_time=None)
    results = {r.name: r for r in written.results}
    assert all(r.error is None and r.in_fragment for r in results.values()), results
    with h5py.File(path, "r") as f:
        assert f["scatter"].attrs["_damnit_objtype"] == "PlotlyFigure"
        assert f["scatter/data"].dtype == np.uint8
        assert f["series"].attrs["_damnit_objtype"] == "series"
        assert f["frame"].attrs["_damnit_objtype"] == "dataframe"
        assert f[".preview/plotly_preview"].attrs["_damnit_objtype"] == "PlotlyFigure"
        assert f[".reduced/series"][()] == 2.0
        assert f[".reduced/scatter"].attrs["summary_type"] == "thumbnail"
        assert_png_thumbnail(f[".reduced/scatter"][()])
    figure = read_data(path, "scatter")
    assert isinstance(figure, go.Figure)
    assert list(figure.data[0].y) == [4, 1, 2]
    series = read_data(path, "series")
    pd.testing.assert_series_equal(series, pd.Series(np.arange(5.0), name="energy"))
    unnamed = read_data(path, "unnamed_series")
    assert list(unnamed) == [1.0, 4.0, 9.0, 16.0]
    frame = read_data(path, "frame")
    assert list(frame.columns) == ["pulse", "label", "7"]  # Parquet wants string column names
    assert list(frame["label"]) == ["a", "b", "c"]
    assert list(frame["7"]) == [0.5, 1.5, 2.5]
