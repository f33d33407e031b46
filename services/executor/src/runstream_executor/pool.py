"""Warm worker processes and their watchdog.

Each worker is ``<python> -m rs_ctxrunner.worker`` with the context runtime on
its ``PYTHONPATH`` and the scientific stack imported before it says ready.
The pool hands out idle workers, enforces a time limit and a resident-memory
limit per request (kill on breach), notices crashes (the pipe closes) and
starts a replacement in the background. The service never dies with a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from .ctxsupport.rs_ctxrunner import protocol

log = logging.getLogger("runstream.executor.pool")

CTXSUPPORT = Path(__file__).parent / "ctxsupport"
DEFAULT_PRELOAD = "numpy,h5py,xarray,extra_data,matplotlib,PIL.Image"


class WorkerLost(Exception):
    """The worker died or was killed while handling a request."""

    def __init__(self, message: str, error_cls: str) -> None:
        super().__init__(message)
        self.error_cls = error_cls


@dataclass(frozen=True)
class PoolConfig:
    size: int = 2
    python: str = sys.executable
    time_limit_s: float = 600.0
    memory_limit_mb: int = 8192
    address_space_mb: int = 0
    preload: str = DEFAULT_PRELOAD
    start_timeout_s: float = 120.0
    poll_interval_s: float = 0.05
    recycle_rss_mb: int | None = None  # None: 75 % of memory_limit_mb; 0: never

    @property
    def recycle_threshold_mb(self) -> int:
        if self.recycle_rss_mb is None:
            return int(self.memory_limit_mb * 0.75)
        return self.recycle_rss_mb


class Worker:
    """One worker process and its pipes."""

    def __init__(self, proc: asyncio.subprocess.Process, config: PoolConfig) -> None:
        self.proc = proc
        self.config = config
        self.pid = proc.pid
        self.dead = False
        self.info: dict[str, Any] = {}

    @classmethod
    async def start(cls, config: PoolConfig) -> Worker:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(CTXSUPPORT), *filter(None, [env.get("PYTHONPATH")])]
        )
        env.setdefault("MPLBACKEND", "Agg")
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        args = ["-m", "rs_ctxrunner.worker", "--preload", config.preload]
        if config.address_space_mb:
            args += ["--address-space-mb", str(config.address_space_mb)]
        proc = await asyncio.create_subprocess_exec(
            config.python,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            limit=1 << 20,
        )
        worker = cls(proc, config)
        try:
            worker.info = await asyncio.wait_for(worker._read(), config.start_timeout_s)
        except Exception as exc:
            worker.kill()
            raise WorkerLost(
                f"worker {config.python} did not start: {exc}", "WorkerStartFailed"
            ) from exc
        return worker

    async def _read(self) -> Any:
        assert self.proc.stdout is not None
        try:
            header = await self.proc.stdout.readexactly(protocol.HEADER.size)
            (size,) = protocol.HEADER.unpack(header)
            body = await self.proc.stdout.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise EOFError("worker pipe closed") from exc
        return protocol.loads(body)

    async def _write(self, message: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(protocol.dumps(message))
        await self.proc.stdin.drain()

    def _rss_mb(self) -> float:
        try:
            proc = psutil.Process(self.pid)
            rss = proc.memory_info().rss
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    rss += child.memory_info().rss
        except psutil.Error:
            return 0.0
        return float(rss) / (1024 * 1024)

    async def _watch_memory(self, limit_mb: int) -> str:
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            rss = self._rss_mb()
            if rss > limit_mb:
                return f"used {rss:.0f} MiB, more than the limit of {limit_mb} MiB"

    async def request(
        self,
        message: dict[str, Any],
        *,
        time_limit_s: float | None = None,
        memory_limit_mb: int | None = None,
    ) -> dict[str, Any]:
        """Send one request and wait for its reply, within the limits."""
        if self.dead:
            raise WorkerLost("worker is dead", "WorkerCrashed")
        limit_s = time_limit_s if time_limit_s is not None else self.config.time_limit_s
        limit_mb = memory_limit_mb if memory_limit_mb is not None else self.config.memory_limit_mb
        try:
            await self._write(message)
        except (ConnectionError, RuntimeError) as exc:
            await self._reap()
            raise WorkerLost(f"worker pipe broken: {exc}", "WorkerCrashed") from exc
        reply_task = asyncio.ensure_future(self._read())
        memory_task = asyncio.ensure_future(self._watch_memory(limit_mb))
        try:
            done, _ = await asyncio.wait(
                {reply_task, memory_task}, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            memory_task.cancel()
        if reply_task in done:
            try:
                return reply_task.result()  # type: ignore[no-any-return]
            except EOFError:
                code = await self._reap()
                raise WorkerLost(_describe_exit(code), "WorkerCrashed") from None
        reply_task.cancel()
        if memory_task in done and not memory_task.cancelled():
            reason = memory_task.result()
            self.kill()
            await self._reap()
            raise WorkerLost(f"Memory limit exceeded: {reason}", "MemoryLimitExceeded")
        self.kill()
        await self._reap()
        raise WorkerLost(f"Time limit of {limit_s:g} s exceeded", "TimeLimitExceeded")

    def kill(self) -> None:
        self.dead = True
        with contextlib.suppress(ProcessLookupError):
            for child in _children(self.pid):
                with contextlib.suppress(psutil.Error):
                    child.kill()
            self.proc.send_signal(signal.SIGKILL)

    async def _reap(self) -> int | None:
        self.dead = True
        try:
            return await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.kill()
            return None

    async def close(self, *, force: bool = False) -> None:
        if self.dead and not force:
            return
        self.dead = True
        with contextlib.suppress(Exception):
            await self._write({"op": "exit"})
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.kill()
            await self.proc.wait()


def _children(pid: int) -> list[psutil.Process]:
    try:
        children: list[psutil.Process] = psutil.Process(pid).children(recursive=True)
        return children
    except psutil.Error:
        return []


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "worker process vanished"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"worker process died with signal {name}"
    return f"worker process exited with status {code}"


class WorkerPool:
    """A fixed number of warm workers for one interpreter."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self._idle: list[Worker] = []
        self._all: set[Worker] = set()
        self._cond = asyncio.Condition()
        self._starting = 0
        self._closed = False
        self._start_error: WorkerLost | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.recycled = 0

    async def start(self) -> None:
        """Start every worker and wait until they are warm."""
        workers = await asyncio.gather(
            *(Worker.start(self.config) for _ in range(self.config.size)), return_exceptions=True
        )
        errors = [w for w in workers if isinstance(w, BaseException)]
        for w in workers:
            if isinstance(w, Worker):
                self._all.add(w)
                self._idle.append(w)
        if errors and not self._idle:
            raise errors[0]
        for _ in errors:
            self._spawn_replacement()

    async def settle(self, timeout_s: float | None = None) -> None:
        """Wait until no replacement worker is still starting."""

        async def wait() -> None:
            async with self._cond:
                while self._starting:
                    await self._cond.wait()

        await asyncio.wait_for(wait(), timeout_s or self.config.start_timeout_s)

    @property
    def pids(self) -> list[int]:
        return sorted(w.pid for w in self._all if not w.dead)

    def _spawn_replacement(self) -> None:
        if self._closed:
            return
        self._starting += 1
        task = asyncio.ensure_future(self._replace())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self) -> None:
        try:
            worker = await Worker.start(self.config)
        except WorkerLost as exc:
            log.error("could not start a replacement worker: %s", exc)
            async with self._cond:
                self._starting -= 1
                self._start_error = exc
                self._cond.notify_all()
            return
        async with self._cond:
            self._starting -= 1
            if self._closed:
                await worker.close()
                return
            self._all.add(worker)
            self._idle.append(worker)
            self._cond.notify_all()

    async def acquire(self, prefer: Worker | None = None) -> Worker:
        """An idle worker; ``prefer`` (if alive) is waited for instead of any other."""
        async with self._cond:
            while True:
                if self._closed:
                    raise WorkerLost("pool is closed", "WorkerCrashed")
                if prefer is not None and prefer.dead:
                    raise WorkerLost("the worker holding a dependency died", "WorkerCrashed")
                if prefer is not None:
                    if prefer in self._idle:
                        self._idle.remove(prefer)
                        return prefer
                elif self._idle:
                    return self._idle.pop(0)
                if not self._idle and not self._starting and not any(not w.dead for w in self._all):
                    err = self._start_error or WorkerLost("no workers", "WorkerStartFailed")
                    raise err
                await self._cond.wait()

    async def release(self, worker: Worker) -> None:
        """Return a worker. A dead one is replaced; one that grew too big (a leak) is recycled."""
        threshold = self.config.recycle_threshold_mb
        if not worker.dead and threshold and worker._rss_mb() > threshold:
            log.info("recycling worker %d: resident memory above %d MiB", worker.pid, threshold)
            self.recycled += 1
            worker.dead = True
            task = asyncio.ensure_future(worker.close(force=True))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        async with self._cond:
            if worker.dead:
                self._all.discard(worker)
                self._spawn_replacement()
            elif not self._closed:
                self._idle.append(worker)
            self._cond.notify_all()

    async def request(self, message: dict[str, Any], **limits: Any) -> dict[str, Any]:
        """Run one request on any idle worker."""
        worker = await self.acquire()
        try:
            return await worker.request(message, **limits)
        finally:
            await self.release(worker)

    async def broadcast(self, message: dict[str, Any]) -> None:
        """Best effort: send ``message`` to every idle worker (e.g. ``forget``)."""
        async with self._cond:
            idle = list(self._idle)
            self._idle.clear()
        try:
            await asyncio.gather(
                *(w.request(message, time_limit_s=10) for w in idle), return_exceptions=True
            )
        finally:
            for w in idle:
                await self.release(w)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(w.close() for w in list(self._all)), return_exceptions=True)
        self._all.clear()
        self._idle.clear()
