"""Warm worker processes and their watchdog.

Workers are forked from a zygote, ``<python> -m rs_ctxrunner.zygote``, that has
the context runtime on its ``PYTHONPATH`` and the scientific stack imported, so
a new worker is ready in milliseconds (``fork=False``: each worker is its own
``<python> -m rs_ctxrunner.worker``, slower to start).
The pool hands out idle workers, enforces a time limit and a resident-memory
limit per request (kill on breach), notices crashes (the pipe closes) and
starts a replacement in the background. The service never dies with a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import memory
from .ctxsupport.rs_ctxrunner import protocol
from .memory import MemoryGuard

log = logging.getLogger("runstream.executor.pool")

CTXSUPPORT = Path(__file__).parent / "ctxsupport"
DEFAULT_PRELOAD = "numpy,h5py,extra_data,matplotlib,PIL.Image"
# Preloaded by the zygote once a context turns out to use them (fork-safe at import).
DEFAULT_SHARE = "xarray,pandas,scipy,matplotlib.pyplot,plotly,skimage"


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
    share: str = DEFAULT_SHARE
    start_timeout_s: float = 120.0
    poll_interval_s: float = 0.05
    recycle_rss_mb: int | None = None  # None: 75 % of memory_limit_mb; 0: never
    memory_budget_mb: int = 0  # the whole executor's (PSS); 0: none
    idle_s: float = 0.0  # retire workers idle this long, down to min_size (0: never)
    min_size: int = 1
    fork: bool = True  # fork workers from a warm zygote (else: one interpreter each)
    rest_zygote: bool = False  # once the pool is full the zygote becomes a light reaper
    # Limits for user code (0: none); see rs_ctxrunner.limits and docs/security.md.
    max_result_mb: int = 1024  # one variable's result
    max_output_mb: float = 10.0  # printed output per pass (and worker)
    file_size_mb: int = 0  # RLIMIT_FSIZE of workers
    nproc: int = 0  # RLIMIT_NPROC of workers (per UID!)
    env_allow: tuple[str, ...] = ()  # more environment variables workers may see
    protect_service: bool = True  # make the service non-dumpable (see protect_service())

    @property
    def recycle_threshold_mb(self) -> int:
        if self.recycle_rss_mb is None:
            return int(self.memory_limit_mb * 0.75)
        return self.recycle_rss_mb

    def limits_json(self) -> str:
        mib = 1024 * 1024
        return json.dumps(
            {
                "max_result_bytes": self.max_result_mb * mib,
                "max_output_bytes": int(self.max_output_mb * mib),
                "file_size_bytes": self.file_size_mb * mib,
                "nproc": self.nproc,
            }
        )


# What workers see of the service's environment: user code must not get its secrets
# (database DSN, Kafka password, tokens). Names, and prefixes ending in ``*``.
ENV_ALLOW = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TMPDIR",
    "TERM",
    "SHELL",
    "PYTHONPATH",
    "PYTHONHASHSEED",
    "PYTHONWARNINGS",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "LD_LIBRARY_PATH",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "MPLBACKEND",
    "MPLCONFIGDIR",
    "HDF5_*",
    "EXTRA_DATA_*",
    "OMP_*",
    "OPENBLAS_*",
    "MKL_*",
    "NUMEXPR_*",
    "CUDA_VISIBLE_DEVICES",
    "SLURM_JOB_ID",
    "SLURM_CPUS_ON_NODE",
)


def _allowed(name: str, patterns: tuple[str, ...], extra: tuple[str, ...]) -> bool:
    if name in extra:  # named exactly by the operator
        return True
    if name.startswith("RUNSTREAM_"):
        return False
    return any(
        name == p or (p.endswith("*") and name.startswith(p[:-1])) for p in (*patterns, *extra)
    )


def worker_env(config: PoolConfig | None = None) -> dict[str, str]:
    """The environment of workers: only :data:`ENV_ALLOW` and ``config.env_allow`` names."""
    extra = tuple(config.env_allow) if config is not None else ()
    env = {k: v for k, v in os.environ.items() if _allowed(k, ENV_ALLOW, extra)}
    env["PYTHONPATH"] = os.pathsep.join([str(CTXSUPPORT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("MPLBACKEND", "Agg")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def protect_service() -> None:
    """Make this process non-dumpable (``PR_SET_DUMPABLE`` 0).

    Workers run as the same user; without this, their code could read the
    service's environment (``/proc/<pid>/environ``: DSN, Kafka password) and
    memory (``/proc/<pid>/mem``, ptrace). Non-dumpable, its ``/proc`` files belong
    to root and ptrace is refused; it writes no core dumps either. Root (or
    CAP_SYS_PTRACE) is not stopped by it.
    """
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE


async def read_frame(reader: asyncio.StreamReader) -> Any:
    try:
        header = await reader.readexactly(protocol.HEADER.size)
        (size,) = protocol.HEADER.unpack(header)
        body = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise EOFError("worker pipe closed") from exc
    return protocol.safe_loads(body)  # workers run user code: plain data only


ExitWaiter = Callable[[], Awaitable[int | None]]


class Worker:
    """One worker process: its pid, its request channel, and how to learn its exit code."""

    def __init__(
        self,
        pid: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        config: PoolConfig,
        wait_exit: ExitWaiter,
        guard: MemoryGuard | None = None,
    ) -> None:
        self.pid = pid
        self.reader = reader
        self.writer = writer
        self.config = config
        self.wait_exit = wait_exit
        self.guard = guard or MemoryGuard(poll_s=config.poll_interval_s)
        self.dead = False
        self.info: dict[str, Any] = {}
        self.pinned: set[str] = set()  # passes whose values or data this worker keeps
        self.idle_since = time.monotonic()
        self.imported: set[str] = set()  # shareable modules it imported itself

    @classmethod
    async def start(cls, config: PoolConfig, guard: MemoryGuard | None = None) -> Worker:
        """A worker as its own interpreter (slow start: imports everything)."""
        args = ["-m", "rs_ctxrunner.worker", "--preload", config.preload]
        args += ["--limits", config.limits_json()]
        if config.address_space_mb:
            args += ["--address-space-mb", str(config.address_space_mb)]
        try:
            proc = await asyncio.create_subprocess_exec(
                config.python,
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=worker_env(config),
                limit=1 << 20,
            )
        except OSError as exc:
            raise WorkerLost(f"cannot start {config.python}: {exc}", "WorkerStartFailed") from exc
        assert proc.stdout is not None
        assert proc.stdin is not None
        worker = cls(proc.pid, proc.stdout, proc.stdin, config, proc.wait, guard)
        try:
            worker.info = await asyncio.wait_for(worker._read(), config.start_timeout_s)
        except Exception as exc:
            worker.kill()
            raise WorkerLost(
                f"worker {config.python} did not start: {exc}", "WorkerStartFailed"
            ) from exc
        return worker

    async def _read(self) -> Any:
        return await read_frame(self.reader)

    async def _write(self, message: Any) -> None:
        self.writer.write(protocol.dumps(message))
        await self.writer.drain()

    def _rss_mb(self, *, children: bool = True) -> float:
        """Resident memory of the worker (and its children)."""
        return memory.tree_rss_mb(self.pid) if children else memory.rss_mb(self.pid)

    async def request(
        self,
        message: dict[str, Any],
        *,
        time_limit_s: float | None = None,
        memory_limit_mb: int | None = None,
    ) -> dict[str, Any]:
        """Send one request and wait for its reply, within the limits.

        Cancelled while waiting, the worker is killed (it would answer a request
        nobody waits for) and replaced when released.
        """
        if self.dead:
            raise WorkerLost("worker is dead", "WorkerCrashed")
        limit_s = time_limit_s if time_limit_s is not None else self.config.time_limit_s
        limit_mb = memory_limit_mb if memory_limit_mb is not None else self.config.memory_limit_mb
        reply_task: asyncio.Future[Any] | None = None
        try:
            try:
                await self._write(message)
            except (ConnectionError, RuntimeError) as exc:
                await self._reap()
                raise WorkerLost(f"worker pipe broken: {exc}", "WorkerCrashed") from exc
            reply_task = asyncio.ensure_future(self._read())
            breach = self.guard.watch(self.pid, limit_mb)
            try:
                done, _ = await asyncio.wait(
                    {reply_task, breach}, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                self.guard.unwatch(self.pid)
        except asyncio.CancelledError:
            if reply_task is not None:
                reply_task.cancel()
            self.kill()
            raise
        if reply_task in done:
            try:
                reply: dict[str, Any] = reply_task.result()
            except protocol.RefusedFrame as exc:
                log.error("worker %d killed: %s", self.pid, exc)
                self.kill()
                await self._reap()
                raise WorkerLost(str(exc), "ProtocolViolation") from None
            except EOFError:
                code = await self._reap()
                raise WorkerLost(_describe_exit(code), "WorkerCrashed") from None
            self.imported.update(reply.get("imported") or ())
            return reply
        reply_task.cancel()
        if breach in done and not breach.cancelled():
            reason = breach.result()
            self.kill()
            await self._reap()
            raise WorkerLost(f"Memory limit exceeded: {reason}", "MemoryLimitExceeded")
        self.kill()
        await self._reap()
        raise WorkerLost(f"Time limit of {limit_s:g} s exceeded", "TimeLimitExceeded")

    def running(self) -> bool:
        """Whether the process still exists (a cheap check, no round trip)."""
        if self.dead:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        return state not in (b"Z", b"X")

    def kill(self) -> None:
        self.dead = True
        for pid in reversed(list(memory.tree(self.pid))):  # children first, the worker last
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    async def _reap(self) -> int | None:
        self.dead = True
        try:
            return await asyncio.wait_for(self.wait_exit(), 10)
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
            await asyncio.wait_for(self.wait_exit(), 5)
        except TimeoutError:
            self.kill()
        with contextlib.suppress(Exception):
            self.writer.close()


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


class Zygote:
    """A preloaded process that forks workers on request (``rs_ctxrunner.zygote``).

    Forked workers connect back over a Unix socket; the zygote reports their
    pids and exit codes on its control pipe.
    """

    def __init__(self, config: PoolConfig, preload: str | None = None) -> None:
        self.config = config
        self._preload = config.preload if preload is None else preload
        self.resting = False  # turned into the light parent of its workers: forks no more
        self._dir = tempfile.mkdtemp(prefix="rs-zygote-")
        self.path = os.path.join(self._dir, "s")
        self._proc: asyncio.subprocess.Process | None = None
        self._server: asyncio.Server | None = None
        self._control: asyncio.Task[None] | None = None
        self._token = 0
        self._forked: dict[int, asyncio.Future[int]] = {}
        self._conns: dict[
            int, asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        ] = {}
        self._exits: dict[int, asyncio.Future[int | None]] = {}
        self.alive = False
        self.preloaded: set[str] = set(filter(None, self._preload.split(",")))

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._on_connect, path=self.path)
        args = [
            "-m",
            "rs_ctxrunner.zygote",
            "--socket",
            self.path,
            "--preload",
            self._preload,
            "--limits",
            self.config.limits_json(),
        ]
        if self.config.address_space_mb:
            args += ["--address-space-mb", str(self.config.address_space_mb)]
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self.config.python,
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=worker_env(self.config),
            )
        except OSError as exc:
            await self.close()
            raise WorkerLost(
                f"cannot start {self.config.python}: {exc}", "WorkerStartFailed"
            ) from exc
        assert self._proc.stdout is not None
        try:
            await asyncio.wait_for(read_frame(self._proc.stdout), self.config.start_timeout_s)
        except Exception as exc:
            await self.close()
            raise WorkerLost(
                f"workers for {self.config.python} did not start: {exc}", "WorkerStartFailed"
            ) from exc
        self.alive = True
        self._control = asyncio.ensure_future(self._control_loop())

    async def _control_loop(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        try:
            while True:
                msg = await read_frame(self._proc.stdout)
                if msg.get("op") == "forked":
                    fut = self._forked.pop(msg["token"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg["pid"])
                elif msg.get("op") == "exited":
                    done = self._exit_future(msg["pid"])
                    if not done.done():
                        done.set_result(msg["code"])
        except EOFError:
            pass
        finally:
            self.alive = False
            lost = WorkerLost("the zygote process ended", "WorkerStartFailed")
            pendings: list[asyncio.Future[Any]] = [*self._forked.values(), *self._conns.values()]
            for pending in pendings:
                if not pending.done():
                    pending.set_exception(lost)
            for ended in self._exits.values():
                if not ended.done():
                    ended.set_result(None)

    def _exit_future(self, pid: int) -> asyncio.Future[int | None]:
        fut = self._exits.get(pid)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._exits[pid] = fut
        return fut

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello = await asyncio.wait_for(read_frame(reader), 30)
        except (EOFError, TimeoutError):
            writer.close()
            return
        fut = self._conns.pop(hello.get("token"), None)
        if fut is None or fut.done():
            writer.close()
            return
        fut.set_result((reader, writer))

    async def preload(self, modules: set[str]) -> None:
        """Have the zygote import ``modules``: workers forked from now on share them."""
        if not self.alive or self._proc is None or self._proc.stdin is None:
            return
        self._proc.stdin.write(protocol.dumps({"op": "preload", "modules": sorted(modules)}))
        await self._proc.stdin.drain()
        self.preloaded |= modules

    async def rest(self) -> None:
        """Become the workers' light parent (``rs_ctxrunner.reaper``): no more forks, but
        their exits are still reported; it ends by itself after the last of them."""
        if not self.alive or self.resting or self._proc is None or self._proc.stdin is None:
            return
        self.resting = True
        self._proc.stdin.write(protocol.dumps({"op": "rest"}))
        await self._proc.stdin.drain()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and self.alive

    async def fork(self, guard: MemoryGuard | None = None) -> Worker:
        if self.resting:
            raise WorkerLost("the zygote is resting", "WorkerStartFailed")
        if not self.alive or self._proc is None or self._proc.stdin is None:
            raise WorkerLost("the zygote process is not running", "WorkerStartFailed")
        loop = asyncio.get_running_loop()
        self._token += 1
        token = self._token
        forked: asyncio.Future[int] = loop.create_future()
        conn: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            loop.create_future()
        )
        self._forked[token] = forked
        self._conns[token] = conn
        try:
            self._proc.stdin.write(protocol.dumps({"op": "fork", "token": token}))
            await self._proc.stdin.drain()
            pid = await asyncio.wait_for(forked, 30)
            reader, writer = await asyncio.wait_for(conn, 30)
        except (ConnectionError, TimeoutError) as exc:
            self._forked.pop(token, None)
            self._conns.pop(token, None)
            raise WorkerLost(f"could not fork a worker: {exc!r}", "WorkerStartFailed") from exc
        exit_future = self._exit_future(pid)

        async def wait_exit() -> int | None:
            return await asyncio.shield(exit_future)

        return Worker(pid, reader, writer, self.config, wait_exit, guard)

    async def close(self) -> None:
        self.alive = False
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(Exception):
                assert self._proc.stdin is not None
                self._proc.stdin.write(protocol.dumps({"op": "exit"}))
                await self._proc.stdin.drain()
            try:
                await asyncio.wait_for(self._proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                await self._proc.wait()
        if self._control is not None:
            self._control.cancel()
        if self._server is not None:
            self._server.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class WorkerPool:
    """Up to ``size`` warm workers for one interpreter.

    All of them are started at once; workers idle for ``idle_s`` are retired down
    to ``min_size`` and forked again (milliseconds) when work comes back.
    """

    def __init__(self, config: PoolConfig, guard: MemoryGuard | None = None) -> None:
        self.config = config
        self.guard = guard or MemoryGuard(config.memory_budget_mb, config.poll_interval_s)
        self._idle: list[Worker] = []
        self._all: set[Worker] = set()
        self._cond = asyncio.Condition()
        self._starting = 0
        self._closed = False
        self._start_error: WorkerLost | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.recycled = 0
        self.retired = 0
        self._waiting = 0  # acquire() calls waiting for a worker
        self._wanted: dict[Worker, int] = {}  # idle workers acquire(prefer=...) waits for
        self._zygote: Zygote | None = None
        self._zygote_lock = asyncio.Lock()
        self._forking = 0  # forks asked of the zygote and not answered yet
        self._resting: list[Zygote] = []  # former zygotes, parents of workers still alive
        # what a zygote imports: the preload setting, plus shared modules contexts used
        self._preloaded: set[str] = set(filter(None, config.preload.split(",")))

    async def _new_worker(self) -> Worker:
        if not self.config.fork:
            return await Worker.start(self.config, self.guard)
        async with self._zygote_lock:
            if self._zygote is None or not self._zygote.alive or self._zygote.resting:
                if self._zygote is not None and not self._zygote.resting:
                    await self._zygote.close()
                self._zygote = None
                extra = sorted(self._preloaded - set(self.config.preload.split(",")))
                zygote = Zygote(self.config, ",".join([self.config.preload, *extra]))
                await zygote.start()
                self._zygote = zygote
            zygote = self._zygote
            self._forking += 1
        try:
            return await zygote.fork(self.guard)
        finally:
            self._forking -= 1

    async def _rest_zygote_if_full(self) -> None:
        """With every worker up, the zygote turns into their light parent (``rest_zygote``):
        the preloaded stack it keeps only for forking is no longer resident."""
        if not self.config.rest_zygote:
            return
        async with self._zygote_lock:
            zygote = self._zygote
            if zygote is None or not zygote.alive or self._forking or self._starting:
                return
            if self._alive() < self.config.size or self._closed:
                return
            self._resting = [z for z in self._resting if z.running]
            self._resting.append(zygote)
            self._zygote = None
            await zygote.rest()

    async def start(self) -> None:
        """Start every worker and wait until they are warm."""
        if self.config.protect_service:
            protect_service()
        workers = await asyncio.gather(
            *(self._new_worker() for _ in range(self.config.size)), return_exceptions=True
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
        await self._rest_zygote_if_full()
        if self.config.idle_s > 0:
            task = asyncio.ensure_future(self._retire_idle())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _alive(self) -> int:
        return sum(1 for w in self._all if not w.dead)

    async def _retire_idle(self) -> None:
        """Close workers nobody needed for ``idle_s`` (their memory goes back to the system)."""
        every = max(1.0, min(30.0, self.config.idle_s / 4))
        while not self._closed:
            await asyncio.sleep(every)
            cutoff = time.monotonic() - self.config.idle_s
            async with self._cond:
                spare = self._alive() - max(1, self.config.min_size)
                old = [w for w in self._idle if w.idle_since < cutoff and not w.pinned]
                old = old[: max(0, spare)]
                for worker in old:
                    self._idle.remove(worker)
                    self._all.discard(worker)
            for worker in old:
                log.info("retiring worker %d: idle for %g s", worker.pid, self.config.idle_s)
                self.retired += 1
                await worker.close()

    async def settle(self, timeout_s: float | None = None) -> None:
        """Wait until no replacement worker is still starting."""

        async def wait() -> None:
            async with self._cond:
                while self._starting:
                    await self._cond.wait()

        await asyncio.wait_for(wait(), timeout_s or self.config.start_timeout_s)

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def is_idle(self, worker: Worker) -> bool:
        return worker in self._idle

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
            worker = await self._new_worker()
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
        await self._rest_zygote_if_full()

    async def acquire(self, prefer: Worker | None = None) -> Worker:
        """An idle worker; ``prefer`` (if alive) is waited for instead of any other."""
        async with self._cond:
            self._waiting += 1
            if prefer is not None:
                self._wanted[prefer] = self._wanted.get(prefer, 0) + 1
            try:
                return await self._acquire(prefer)
            finally:
                self._waiting -= 1
                if prefer is not None:
                    self._wanted[prefer] -= 1
                    if not self._wanted[prefer]:
                        del self._wanted[prefer]

    async def _acquire(self, prefer: Worker | None) -> Worker:
        """The body of :meth:`acquire`, with the condition held."""
        while True:
            for idle in [w for w in self._idle if not w.running()]:  # died while idle
                log.warning("worker %d died while idle; replacing it", idle.pid)
                idle.dead = True
                self._idle.remove(idle)
                self._all.discard(idle)
                self._spawn_replacement()
            if self._closed:
                raise WorkerLost("pool is closed", "WorkerCrashed")
            if prefer is not None and prefer.dead:
                raise WorkerLost("the worker holding a dependency died", "WorkerCrashed")
            if prefer is not None:
                if prefer in self._idle:
                    self._idle.remove(prefer)
                    return prefer
            elif free := [w for w in self._idle if w not in self._wanted]:
                self._idle.remove(free[0])  # a worker someone waits for is theirs
                return free[0]
            elif self._alive() + self._starting < self.config.size:
                self._spawn_replacement()  # idle ones were retired: grow again
            if not self._idle and not self._starting and not any(not w.dead for w in self._all):
                err = self._start_error or WorkerLost("no workers", "WorkerStartFailed")
                raise err
            await self._cond.wait()

    def try_acquire(self) -> Worker | None:
        """An idle, living worker if there is one now and nobody waits for one; never waits."""
        while self._idle and not self._waiting:
            worker = self._idle.pop(0)
            if worker.running():
                return worker
            log.warning("worker %d died while idle; replacing it", worker.pid)
            worker.dead = True
            self._all.discard(worker)
            self._spawn_replacement()
        return None

    async def release(self, worker: Worker) -> None:
        """Return a worker. A dead one is replaced; one that grew too big (a leak) is recycled,
        and one that imported libraries of its own is re-forked once the zygote has them."""
        await self._share_imports(worker)
        threshold = self.config.recycle_threshold_mb
        if (
            not worker.dead
            and not worker.pinned
            and threshold
            and worker._rss_mb(children=False) > threshold
        ):
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
                worker.idle_since = time.monotonic()
                self._idle.append(worker)
            self._cond.notify_all()

    async def _share_imports(self, worker: Worker) -> None:
        if worker.dead or worker.pinned or not self.config.fork:
            return
        new = worker.imported - self._preloaded
        if not new:
            return
        log.info(
            "zygote preloads %s; worker %d is forked again to share them", sorted(new), worker.pid
        )
        self._preloaded |= new
        zygote = self._zygote
        if zygote is not None and zygote.alive and not zygote.resting:
            await zygote.preload(new)
        # else the next zygote (started for the replacement) imports them at start
        worker.dead = True  # replaced below by a fork that shares them
        task = asyncio.ensure_future(worker.close(force=True))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def request(self, message: dict[str, Any], **limits: Any) -> dict[str, Any]:
        """Run one request on any idle worker."""
        worker = await self.acquire()
        try:
            return await worker.request(message, **limits)
        finally:
            await self.release(worker)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(w.close() for w in list(self._all)), return_exceptions=True)
        self._all.clear()
        self._idle.clear()
        if self._zygote is not None:
            await self._zygote.close()
            self._zygote = None
        resting, self._resting = self._resting, []
        await asyncio.gather(*(z.close() for z in resting), return_exceptions=True)
