"""``Cell`` rejects bad arguments with DAMNIT 0.4's exception types and messages.

Scripts and users grep for these texts (damnit_ctx.Cell in the damnit 0.4.0 wheel).
One deliberate difference: for an object ``summary_value`` DAMNIT names the type
of its ``summary`` argument (a slip); runstream names the value's type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from runstream_executor.pool import WorkerPool

from runstream.context import Cell

from .helpers import run_context

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"background": "red"}, ValueError, "Colour string should be hex code (like '#ffcc00')"),
        ({"background": "bbdddd"}, ValueError, "Colour string should be hex code (like '#ffcc00')"),
        ({"background": (1, 2)}, TypeError, "Wrong number of values (2) for R,G,B"),
        ({"background": [0, 300, 0]}, ValueError, "Colour values must be 0 - 255"),
        ({"background": 5}, TypeError, "Don't understand colour as <class 'int'>"),
        (
            {"preview": np.zeros((2, 2, 2))},
            TypeError,
            "preview should be a 1D or 2D array (shape is (2, 2, 2))",
        ),
        (
            {"preview": xr.DataArray(np.zeros((1, 2, 3)))},
            TypeError,
            "preview should be a 1D or 2D array (shape is (1, 2, 3))",
        ),
        ({"preview": np.array(["a", "b"])}, TypeError, "preview array should be numeric"),
        (
            {"preview": [1, 2, 3]},
            TypeError,
            "preview must be an array or a figure object (got <class 'list'>)",
        ),
        (
            {"summary_value": np.datetime64("2024-01-01")},
            TypeError,
            "Summary value <class 'numpy.ndarray'> whose native array type datetime64[D] "
            "cannot be saved",
        ),
        (
            {"summary_value": object()},
            TypeError,
            "summary_value should be number or string, not <class 'object'>",
        ),
        ({"units": 5}, TypeError, "units should be a string, not <class 'int'>"),
    ],
)
def test_invalid_cell_arguments(kwargs: dict[str, Any], exc: type, message: str) -> None:
    with pytest.raises(exc) as info:
        Cell(np.arange(3), **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (object(), "Returned data type <class 'numpy.ndarray'> cannot be saved"),
        ({"a": 1}, "Returned data type <class 'numpy.ndarray'> cannot be saved"),
        (
            np.datetime64("2024-01-01"),
            "Returned data type <class 'numpy.ndarray'> whose native array type datetime64[D] "
            "cannot be saved",
        ),
    ],
)
def test_unsavable_data(data: Any, message: str) -> None:
    with pytest.raises(TypeError) as info:
        Cell(data)
    assert str(info.value) == message


def test_valid_arguments_are_normalised() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert Cell(1, background="#bbdddd").background == (0xBB, 0xDD, 0xDD)
    assert Cell(1, background=[1, 2, 3]).background == (1, 2, 3)
    assert Cell(1, background=None).background is None
    bool_preview = np.ones(5, dtype=bool)
    assert Cell("x", preview=bool_preview).preview is bool_preview
    fig, ax = plt.subplots()
    try:
        assert Cell(1, preview=ax).preview is fig  # an Axes becomes its figure
    finally:
        plt.close(fig)
    assert Cell(1, summary_value="A").summary_value == "A"
    assert Cell(xr.DataArray(np.ones(2), attrs={"units": "mJ"})).units == "mJ"


@pytest.mark.asyncio(loop_scope="session")
async def test_a_bad_cell_is_that_variables_error_in_the_service(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    ev = await run_context(
        pool,
        """
        from damnit_ctx import Variable, Cell

        @Variable(title="Bad colour")
        def bad(run):
            return Cell(1.0, background="red")

        @Variable(title="Bad preview")
        def bad_preview(run):
            return Cell(1.0, preview=[1, 2])

        @Variable(title="Fine")
        def fine(run):
            return Cell(2.0, background=(10, 20, 30))
        """,
        tmp_path,
        mock_proposal,
    )
    assert ev.error("bad") == ("Colour string should be hex code (like '#ffcc00')", "ValueError")
    assert ev.error("bad_preview") == (
        "preview must be an array or a figure object (got <class 'list'>)",
        "TypeError",
    )
    assert ev.outcomes["fine"].prepared is not None
    assert ev.outcomes["fine"].prepared["background"] == (10, 20, 30)
