"""One warm pool per interpreter: ours, plus proposals' ``context_python`` ones."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from .admission import Admission
from .memory import MemoryGuard
from .pool import WorkerPool
from .settings import Settings

log = logging.getLogger("runstream.executor.pools")


class PoolSet:
    """Pools keyed by interpreter path, started on first use; foreign ones are LRU-bounded."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pools: OrderedDict[str, WorkerPool] = OrderedDict()
        self._lock = asyncio.Lock()
        # One guard for every pool: the memory budget is the whole executor's.
        self.guard = MemoryGuard(settings.effective_memory_budget_mb)
        self.guard.admission = Admission(settings.effective_admission_memory_mb)

    async def get(self, python: str | None = None) -> WorkerPool:
        key = python or self.settings.python
        async with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return pool
            pool = WorkerPool(self.settings.pool_config(key), self.guard)
            await pool.start()
            self._pools[key] = pool
            foreign = [k for k in self._pools if k != self.settings.python]
            while len(foreign) > self.settings.max_foreign_interpreters:
                old = foreign.pop(0)
                log.info("closing idle worker pool for %s", old)
                await self._pools.pop(old).close()
            return pool

    async def close(self) -> None:
        async with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        await asyncio.gather(*(p.close() for p in pools), return_exceptions=True)
        await self.guard.close()
