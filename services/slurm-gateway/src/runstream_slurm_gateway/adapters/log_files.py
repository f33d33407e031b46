"""The run's log under the proposal's ``slurm_logs/``: created for the job user, appended to."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

from runstream_common.errors import ServiceUnavailable


def _ensure(path: str) -> None:
    folder = Path(path).parent
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        # Jobs run as another (unprivileged) user and append to the run's log here.
        os.chmod(folder, 0o1777)


async def ensure_log_dir(log_path: str) -> None:
    try:
        await asyncio.to_thread(_ensure, log_path)
    except OSError as exc:
        raise ServiceUnavailable(f"cannot create {Path(log_path).parent}: {exc}") from exc


def _append(path: str, line: str) -> None:
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(f"[{stamp}] {line}\n")
        fh.flush()
        os.fsync(fh.fileno())


async def append_line(path: str, line: str) -> None:
    """Append one timestamped line (e.g. 'Cancelled ...') to a run's log."""
    await asyncio.to_thread(_append, path, line)
