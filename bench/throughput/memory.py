"""Peak resident (RSS) and proportional (PSS) memory of each service's process tree.

RSS counts a page in every process that maps it, so the RSS of a forked
worker includes the libraries it shares with its parent; PSS divides each
shared page among the processes sharing it, so the PSS of a tree is what the
tree really costs. Both come from ``/proc/<pid>/smaps_rollup``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil


def rss_pss_mib(pid: int) -> tuple[float, float]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss / 1024, pss / 1024


def tree(pid: int) -> list[int]:
    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.Error:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (its reaped children included)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system + times.children_user + times.children_system)


@dataclass
class Peaks:
    """Per phase: each service's peak (RSS, PSS) and the peak of all services together,
    and the CPU seconds each service used (first to last sample of the phase)."""

    services: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    total: dict[str, tuple[float, float]] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, dict[str, dict[int, tuple[float, float]]]] = field(default_factory=dict)
    per_process: dict[str, dict[int, tuple[float, float]]] = field(default_factory=dict)
    # phase -> service -> RSS MiB of each of its processes (tree order) when the total peaked
    at_peak: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def cpu_used(self, phase: str) -> dict[str, tuple[float, float]]:
        """Service -> (CPU seconds of its main process, of its other processes)."""
        used = {}
        for service, pids in self.cpu.get(phase, {}).items():
            main, *others = pids  # the main process is sampled first
            used[service] = (
                pids[main][1] - pids[main][0],
                sum(pids[p][1] - pids[p][0] for p in others),
            )
        return used


class Sampler:
    """Samples the trees of ``roots()`` (service name -> pid) every ``interval`` seconds."""

    def __init__(self, roots: Callable[[], dict[str, int]], interval: float = 0.2) -> None:
        self.roots = roots
        self.interval = interval
        self.phase = "start-up"
        self.peaks = Peaks()
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        total_rss = total_pss = 0.0
        services = self.peaks.services.setdefault(self.phase, {})
        snapshot: dict[str, list[float]] = {}
        for name, pid in self.roots().items():
            pids = tree(pid)
            figures = [rss_pss_mib(p) for p in pids]
            snapshot[name] = [r for r, _ in figures]
            cpu = self.peaks.cpu.setdefault(self.phase, {}).setdefault(name, {})
            for p in pids:
                used = cpu_seconds(p)
                cpu[p] = (cpu.get(p, (used, used))[0], used)
            rss, pss = sum(f[0] for f in figures), sum(f[1] for f in figures)
            each = self.peaks.per_process.setdefault(self.phase, {})
            for p, (r, q) in zip(pids, figures, strict=True):
                old_each = each.get(p, (0.0, 0.0))
                each[p] = (max(old_each[0], r), max(old_each[1], q))
            old = services.get(name, (0.0, 0.0))
            services[name] = (max(old[0], rss), max(old[1], pss))
            self.peaks.processes[name] = max(self.peaks.processes.get(name, 0), len(pids))
            total_rss += rss
            total_pss += pss
        old_total = self.peaks.total.get(self.phase, (0.0, 0.0))
        if total_rss > old_total[0]:
            self.peaks.at_peak[self.phase] = snapshot
        self.peaks.total[self.phase] = (max(old_total[0], total_rss), max(old_total[1], total_pss))

    async def _loop(self) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
