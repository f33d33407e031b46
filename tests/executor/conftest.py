"""Executor fixtures: mock EXtra-data runs and one warm worker pool per session."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from runstream_executor.pool import PoolConfig, WorkerPool

TEST_TIME_LIMIT_S = 30.0


def make_mock_proposal(root: Path, runs: int = 3) -> Path:
    """A proposal folder: raw/r0001..rNNNN, proc/r0001 complete, proc/r0002 partial.

    Data files come from EXtra-data's own mock helpers (an FXE DA file: XGMs and
    a camera, 400 trains). The first file is generated once and copied.
    """
    from extra_data.tests.make_examples import make_fxe_da_file

    prop = root / "p001234"
    first = prop / "raw" / "r0001" / "RAW-R0001-DA01-S00000.h5"
    first.parent.mkdir(parents=True)
    make_fxe_da_file(str(first))
    for run in range(2, runs + 1):
        dest = prop / "raw" / f"r{run:04d}" / f"RAW-R{run:04d}-DA01-S00000.h5"
        dest.parent.mkdir(parents=True)
        shutil.copyfile(first, dest)
    proc = prop / "proc" / "r0001" / "CORR-R0001-DA01-S00000.h5"
    proc.parent.mkdir(parents=True)
    shutil.copyfile(first, proc)
    partial = prop / "proc" / "r0002"
    partial.mkdir(parents=True)
    (partial / "CORR-R0002-DA01-S00000.h5").write_bytes(b"\x89HDF\r\n\x1a\n still being written")
    return prop


@pytest.fixture(scope="session")
def mock_proposal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mock_proposal(tmp_path_factory.mktemp("data"))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pool() -> AsyncIterator[WorkerPool]:
    """Two warm workers shared by the session (they survive variables' failures)."""
    p = WorkerPool(PoolConfig(size=2, time_limit_s=TEST_TIME_LIMIT_S, memory_limit_mb=4096))
    await p.start()
    yield p
    await p.close()


@pytest.fixture
def mock_run() -> Any:
    """A stand-in run object like DAMNIT's tests use (10 trains, synthetic timestamps)."""
    from unittest.mock import MagicMock

    import numpy as np

    run = MagicMock()
    run.train_ids = np.arange(10)
    run.select_trains.side_effect = lambda train_slice: run
    run.train_timestamps.side_effect = lambda: np.array(
        run.train_ids + 1493892000000000000, dtype="datetime64[ns]"
    )
    run.files = [MagicMock(filename="/tmp/foo/bar.h5")]
    return run
