"""``Pipeline.execute(...).save(...)`` writes DAMNIT's layout; annotations under
``from __future__ import annotations`` still link variables."""

import textwrap
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from runstream.context import Cell, Pipeline, Skip, Variable

pytestmark = pytest.mark.unit


def test_results_save_writes_the_per_run_layout(mock_run: Any, tmp_path: Path) -> None:
    @Variable(title="Trace", units="uJ")
    def trace(run):  # type: ignore[no-untyped-def]
        return np.arange(10.0)

    @Variable(title="Total")
    def total(run, t: "var#trace"):  # type: ignore[no-untyped-def]  # noqa: F821
        return Cell(float(t.sum()), bold=True)

    @Variable(title="Skipped")
    def skipped(run):  # type: ignore[no-untyped-def]
        raise Skip("no beam")

    @Variable(title="Nothing")
    def nothing(run):  # type: ignore[no-untyped-def]
        return None

    pipe = Pipeline(proposal=7, run_number=3, data=mock_run).add(trace, total, skipped, nothing)
    results = pipe.execute()
    assert results.cells["total"].data == 45.0
    assert results.cells["nothing"].data is None
    assert str(results.errors["skipped"]) == "no beam"
    path = results.save(tmp_path, 7, 3)
    assert path.parent == tmp_path / "extracted_data"
    assert path.name.startswith("p7_r3.")
    assert path.name.endswith(".ready.h5")
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["trace/data"][()], np.arange(10.0))
        assert f[".reduced/trace"].attrs["summary_type"] == "trendline"
        assert f[".reduced/trace"].attrs["units"] == "uJ"
        assert f[".reduced/total"][()] == 45.0
        assert bool(f[".reduced/total"].attrs["bold"]) is True
        assert f[".errors/skipped"][()].decode() == "no beam"
        assert f[".errors/skipped"].attrs["type"] == "Skip"
        assert "nothing" not in f
        assert "start_time" in f


def test_future_annotations_in_a_context_file(mock_run: Any) -> None:
    code = """
    from __future__ import annotations
    from damnit_ctx import Group, Variable

    @Variable
    def base(run):
        return 2

    @Variable
    def doubled(run, b: "var#base", n: "meta#run_number"):
        return 2 * b + n

    @Group
    class G:
        @Variable
        def plus(self, run, d: "var#doubled"):
            return d + 1

    g = G()
    """
    pipe = Pipeline.from_str(textwrap.dedent(code)).with_context(
        data=mock_run, proposal=1, run_number=10
    )
    assert pipe.vars["doubled"].arg_dependencies() == {"b": "base"}
    cells = pipe.execute().cells
    assert cells["doubled"].data == 14
    assert cells["g.plus"].data == 15
