"""A test database brought to the current schema the way operators do it."""

from __future__ import annotations

import asyncio
import subprocess
import sys


def upgrade(dsn: str) -> None:
    """``runstream db upgrade --dsn DSN`` in a fresh interpreter; fails the test if it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "db", "upgrade", "--dsn", dsn],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


async def upgrade_async(dsn: str) -> None:
    await asyncio.to_thread(upgrade, dsn)
