"""A large value a dependent needs stays in the worker that computed it (#13).

With ``parallel`` > 1, values wanted by dependents travel back as pickles so a
dependent could run beside the pass's own worker; a large array would then cross
the pipe twice (to the service and back with the dependent's request). Such a
value stays at home instead, and its dependent runs there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from runstream_executor.engine import PICKLE_BESIDE_MAX_BYTES, Pass, load_context, select
from runstream_executor.pool import WorkerPool

from .helpers import target, write_context

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="session")]

CONTEXT = """
from damnit_ctx import Variable
import numpy as np

@Variable(title="Image")
def image(run):
    return np.ones((256, 256))  # 512 KiB

@Variable(title="Peak")
def peak(run, image: "var#image"):
    return float(image.max())

@Variable(title="Count")
def count(run):
    return 3

@Variable(title="Twice")
def twice(run, count: "var#count"):
    return 2 * count
"""


async def test_a_large_value_stays_at_home_and_a_small_one_travels(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    source = write_context(tmp_path / "ctx", CONTEXT)
    ctx = await load_context(pool, source)
    async with Pass(pool, ctx, target(mock_proposal, tmp_path / "ctx"), parallel=2) as run_pass:
        outcomes = await run_pass.run(select(ctx, "all", (), ()))
        home = run_pass.home
    assert PICKLE_BESIDE_MAX_BYTES < 256 * 256 * 8
    assert outcomes["image"].value is None  # not pickled to the service
    assert outcomes["image"].pinned_to is home
    assert outcomes["peak"].status == "ok"
    assert outcomes["peak"].prepared is not None
    assert outcomes["peak"].prepared["summary"] == 1.0
    assert outcomes["count"].value is not None  # small: pickled, a dependent may run anywhere
    assert outcomes["twice"].prepared is not None
    assert outcomes["twice"].prepared["summary"] == 6
