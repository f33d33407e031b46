"""A pass's time limit: variables still running at the deadline end as TimeLimitExceeded.

The executor's consumer stays in its group only while every record it holds can
finish before its max poll interval (a rebalance waits for running passes that long);
the deadline guarantees it, and a fragment's name is unique per attempt.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from runstream_executor.app import max_poll_interval_ms
from runstream_executor.engine import PASS_TIME_LIMIT, Pass, load_context, select
from runstream_executor.pool import WorkerPool
from runstream_executor.results import fragment_path
from runstream_executor.settings import Settings

from .conftest import TEST_TIME_LIMIT_S
from .helpers import target, write_context

pytestmark = pytest.mark.unit

SLOW = """
from damnit_ctx import Variable
import time

@Variable(title="Quick")
def quick(run):
    return 1

@Variable(title="Slow")
def slow(run):
    time.sleep(600)  # far beyond the pool's own per-variable limit
    return 2

@Variable(title="After")
def after(run):
    return 3
"""


@pytest.mark.asyncio(loop_scope="session")
async def test_variables_running_at_the_deadline_end_as_time_limit_exceeded(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    source = write_context(tmp_path / "ctx", SLOW)
    ctx = await load_context(pool, source)
    names = select(ctx, "all", (), ())
    async with Pass(
        pool,
        ctx,
        target(mock_proposal, tmp_path / "ctx"),
        parallel=1,
        deadline=time.monotonic() + 3.0,  # well inside the pool's limit of TEST_TIME_LIMIT_S
    ) as run_pass:
        outcomes = await run_pass.run(names)
    assert TEST_TIME_LIMIT_S > 3.0
    assert outcomes["quick"].status == "ok"
    for name in ("slow", "after"):  # the one running, and the one never started
        assert outcomes[name].status == "error"
        assert outcomes[name].error_cls == "TimeLimitExceeded"
        assert outcomes[name].error == PASS_TIME_LIMIT
    # the pool is usable again (the worker running "slow" was replaced)
    async with Pass(pool, ctx, target(mock_proposal, tmp_path / "ctx"), parallel=1) as again:
        assert (await again.run(["quick"]))["quick"].status == "ok"


def test_the_pass_deadline_is_inside_the_poll_interval() -> None:
    settings = Settings(pass_timeout_s=900, context_load_timeout_s=60)
    assert max_poll_interval_ms(settings) / 1000 > settings.pass_timeout_s + 60


def test_fragment_names_are_unique_per_attempt() -> None:
    one = fragment_path("/ctx", "extracted_data", 1, 2, "rid", attempt="a" * 32)
    two = fragment_path("/ctx", "extracted_data", 1, 2, "rid", attempt="b" * 32)
    assert one != two
    assert one.parent == two.parent == Path("/ctx/extracted_data")
