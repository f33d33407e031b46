"""Fixtures of the store's tests: a migrated database and handlers over real adapters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from runstream_store.adapters.postgres import Repository, create_pool
from runstream_store.adapters.run_files import RunFiles
from runstream_store.handlers import Handlers
from runstream_store.schema import upgrade

from .helpers import RecordingFeed


@pytest.fixture
async def repo(pg_dsn: str) -> AsyncIterator[Repository]:
    """A Repository over a fresh, migrated database."""
    pool = await create_pool(pg_dsn, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await upgrade(conn)
    try:
        yield Repository(pool)
    finally:
        await pool.close()


@pytest.fixture
def feed() -> RecordingFeed:
    return RecordingFeed()


@pytest.fixture
def files() -> RunFiles:
    return RunFiles(compress_min_bytes=256)


@pytest.fixture
def handlers(repo: Repository, files: RunFiles, feed: RecordingFeed) -> Handlers:
    return Handlers(repo, files, feed, fragment_wait_s=0.3, compress_min_bytes=256)


@pytest.fixture
def context_dir(tmp_path: Path) -> Path:
    path = tmp_path / "usr" / "Shared" / "runstream"
    path.mkdir(parents=True)
    return path
