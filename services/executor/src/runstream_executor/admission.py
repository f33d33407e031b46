"""Admission by memory: large variables of different runs do not compute at the same time.

Each worker reports how much its resident memory grew while it evaluated a
variable (its peak over its size when the variable began, ``peak_mb``). The
executor remembers the last figure per context revision and variable; a
variable that grew at least ``min_mb`` last time is *large*, and starts only
while the large variables running (of every pass in flight) and it, counted at
what they used last time, fit in ``limit_mb``. One large variable always runs,
whatever its size, so nothing waits for ever; small variables never wait.

A pass whose large variable has to wait runs its other ready variables first
(:class:`~runstream_executor.engine.Pass`), so its worker computes meanwhile.

With several runs in flight, two runs reading a whole detector source at once
each hold it in memory: the executor's peak is the sum. With ``limit_mb`` below
two such variables, their reads follow each other and the peak is one of them.
``limit_mb`` 0 turns admission off; the service's default is its memory budget
(``admission_memory_mb``), so large variables that together would exceed the budget
wait for each other instead of one being stopped by the budget.

The first run of a context file knows nothing: its variables start whatever they
use, and are known from then on. A new revision of the file starts from what the
same variable of the same file used last time (``fallback``), until it ran itself.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

Key = tuple[str, str]  # (context hash, variable name)

KEEP_KEYS = 4096  # figures remembered (least recently used dropped beyond)


class Admission:
    """Shared by every pass of one executor; see the module docstring."""

    def __init__(self, limit_mb: int = 0, min_mb: float = 64.0) -> None:
        self.limit_mb = limit_mb
        self.min_mb = min_mb
        self.expected: OrderedDict[Key, float] = OrderedDict()
        self.running_mb = 0.0
        self.running = 0
        self.waited = 0  # how often a large variable was held back (for tests and logs)
        self.version = 0  # counts the ends of large variables: see :meth:`changed`
        self._changed = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return self.limit_mb > 0

    def need(self, key: Key, fallback: Key | None = None) -> float:
        """What ``key`` used last time if it is large, else 0 (it never waits).

        ``fallback``: where to look when ``key`` never ran, e.g. the same variable in the
        context file's previous revision (see :meth:`learn`).
        """
        if not self.enabled:
            return 0.0
        used = self.expected.get(key)
        if used is None and fallback is not None:
            used = self.expected.get(fallback)
        return used if used is not None and used >= self.min_mb else 0.0

    def try_take(self, mb: float) -> bool:
        """Admit a variable needing ``mb`` now, or say no (it may try again later)."""
        if mb <= 0:
            return True
        if self.running and self.running_mb + mb > self.limit_mb:
            self.waited += 1
            return False
        self.running_mb += mb
        self.running += 1
        return True

    def give(self, mb: float) -> None:
        """A variable admitted with ``mb`` ended."""
        if mb <= 0:
            return
        self.running = max(0, self.running - 1)
        self.running_mb = max(0.0, self.running_mb - mb) if self.running else 0.0
        self.version += 1
        self._changed.set()

    def learn(self, key: Key, peak_mb: float | None, also: Key | None = None) -> None:
        """Remember what ``key`` (and ``also``) used (a worker's ``peak_mb``; None: not
        measured)."""
        if peak_mb is None:
            return
        for k in (key, also) if also is not None else (key,):
            self.expected[k] = float(peak_mb)
            self.expected.move_to_end(k)
        while len(self.expected) > KEEP_KEYS:
            self.expected.popitem(last=False)

    async def changed(self, since: int) -> None:
        """Wait until a large variable ended after :attr:`version` was ``since``."""
        while self.version == since:
            self._changed.clear()
            await self._changed.wait()


__all__ = ["Admission"]
