"""The run files and fragments on the shared file system, off the event loop.

Writes to one run file are serialised (one merge at a time per file); h5py work
runs in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from runstream_common.errors import PermanentError, ServiceUnavailable

from . import hdf5_merge

log = logging.getLogger("runstream.store.files")


class RunLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)


class RunFiles:
    """Merges into run files and handles fragments."""

    def __init__(
        self,
        *,
        compress_min_bytes: int = 0,
        before_replace: Callable[[Path], None] | None = None,
    ) -> None:
        self.compress_min_bytes = compress_min_bytes
        self.locks = RunLocks()
        self._before_replace = before_replace

    def run_file(self, context_dir: str, proposal: int, run: int) -> Path:
        return hdf5_merge.run_file_path(context_dir, proposal, run)

    async def merge(self, request: hdf5_merge.MergeRequest) -> hdf5_merge.MergeOutcome:
        try:
            return await asyncio.to_thread(
                hdf5_merge.merge, request, before_replace=self._before_replace
            )
        except hdf5_merge.FragmentUnreadable as exc:
            raise PermanentError(str(exc)) from exc
        except OSError as exc:
            raise ServiceUnavailable(f"could not write {request.target}: {exc}") from exc

    async def wait_for(self, path: Path, timeout_s: float) -> bool:
        """True once ``path`` exists; False if it has not appeared within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            if await asyncio.to_thread(path.exists):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(min(0.5, max(0.01, deadline - time.monotonic())))

    async def delete(self, path: Path) -> bool:
        """Remove a merged fragment. True if it was there."""

        def unlink() -> bool:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            with contextlib.suppress(OSError):
                hdf5_merge.fsync_path(path.parent, directory=True)
            return True

        try:
            return await asyncio.to_thread(unlink)
        except OSError as exc:
            log.warning("could not delete fragment %s: %s", path, exc)
            return False

    def hold(self, key: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Serialise work on one run file (key: its path)."""
        return self.locks.hold(key)
