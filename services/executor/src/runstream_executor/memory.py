"""Memory of workers, read cheaply from /proc, and the guard that enforces the limits.

Two limits, both enforced by killing one worker (its variable gets
``MemoryLimitExceeded``, every other variable and run goes on):

- per worker (``variable_memory_mb``): the resident memory (RSS) of the worker
  and its children while it evaluates a variable;
- for the whole executor (``memory_budget_mb``): the proportional memory (PSS,
  shared pages divided among the processes sharing them) of the service, its
  zygotes and every worker. When it is exceeded, the busy worker holding the
  most memory is the one stopped: a runaway variable, not the runs beside it.

RSS comes from ``/proc/<pid>/statm`` and children from
``/proc/<pid>/task/<tid>/children`` (tens of microseconds each; a scan of every
process on the machine, as ``psutil.Process.children`` does, costs ~10 ms).
PSS needs ``smaps_rollup`` (milliseconds for a large process), so it is read
only when the cheap RSS sum, an upper bound of it, is over the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .admission import Admission

log = logging.getLogger("runstream.executor.memory")

PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024


def rss_mb(pid: int) -> float:
    """Resident memory of one process in MiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE / MIB
    except (OSError, IndexError, ValueError):
        return 0.0


def children(pid: int) -> list[int]:
    """Direct children of a process (of all its threads)."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return found


def tree(pid: int) -> Iterator[int]:
    """The process and all its descendants."""
    todo = [pid]
    while todo:
        current = todo.pop()
        yield current
        todo.extend(children(current))


def tree_rss_mb(pid: int) -> float:
    return sum(rss_mb(p) for p in tree(pid))


def pss_mb(pid: int) -> float:
    """Proportional set size in MiB (falls back to RSS where smaps_rollup is missing)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss_mb(pid)


def tree_pss_mb(pid: int) -> float:
    return sum(pss_mb(p) for p in tree(pid))


def physical_memory_mb() -> int:
    """RAM, or the cgroup's memory limit when it is lower (containers)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MIB
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            text = Path(limit_file).read_text().strip()
            if text != "max":
                total = min(total, int(text) // MIB)
    return int(total)


def default_budget_mb() -> int:
    """80 % of the memory this executor can have."""
    return int(physical_memory_mb() * 0.8)


@dataclass
class _Watch:
    limit_mb: int
    breached: asyncio.Future[str]
    rss_mb: float = 0.0


@dataclass
class MemoryGuard:
    """Watches busy workers: their own limit, and the executor's budget (0: none)."""

    budget_mb: int = 0
    poll_s: float = 0.05
    root_pid: int = field(default_factory=os.getpid)
    budget_every: int = 4  # check the budget on every 4th poll (it reads more files)
    # large variables take turns (executor-wide, as the budget); off unless given a limit
    admission: Admission = field(default_factory=Admission)
    _watched: dict[int, _Watch] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    stopped_by_budget: int = 0

    def watch(self, pid: int, limit_mb: int) -> asyncio.Future[str]:
        """A future that gets the reason when ``pid`` must be stopped; call :meth:`unwatch`."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._watched[pid] = _Watch(limit_mb, future)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._loop())
        return future

    def unwatch(self, pid: int) -> None:
        watch = self._watched.pop(pid, None)
        if watch is not None and not watch.breached.done():
            watch.breached.cancel()

    async def _loop(self) -> None:
        tick = 0
        while self._watched:
            await asyncio.sleep(self.poll_s)
            tick += 1
            self.check(budget=bool(self.budget_mb) and tick % self.budget_every == 0)

    def check(self, *, budget: bool = True) -> None:
        for pid, watch in list(self._watched.items()):
            watch.rss_mb = tree_rss_mb(pid)
            if watch.rss_mb > watch.limit_mb and not watch.breached.done():
                watch.breached.set_result(
                    f"used {watch.rss_mb:.0f} MiB, more than the limit of {watch.limit_mb} MiB"
                )
        if budget and self.budget_mb:
            self._check_budget()

    def _check_budget(self) -> None:
        if tree_rss_mb(self.root_pid) <= self.budget_mb:  # RSS >= PSS: surely within
            return
        total = tree_pss_mb(self.root_pid)
        if total <= self.budget_mb:
            return
        busy = {pid: tree_pss_mb(pid) for pid, w in self._watched.items() if not w.breached.done()}
        if not busy:
            return
        victim = max(busy, key=busy.__getitem__)
        self.stopped_by_budget += 1
        log.warning(
            "executor memory %.0f MiB over its budget of %d MiB: stopping worker %d (%.0f MiB)",
            total,
            self.budget_mb,
            victim,
            busy[victim],
        )
        self._watched[victim].breached.set_result(
            f"the executor used {total:.0f} MiB, more than its memory budget of "
            f"{self.budget_mb} MiB; this variable's worker held {busy[victim]:.0f} MiB"
        )

    async def close(self) -> None:
        for pid in list(self._watched):
            self.unwatch(pid)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
