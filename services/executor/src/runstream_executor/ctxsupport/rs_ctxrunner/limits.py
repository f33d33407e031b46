"""Limits on what a variable's code may do inside a worker.

- results: :func:`result_size` measures a value without touching its data (a
  ``np.zeros`` of 5 GB has never-touched pages); a bigger value than the limit
  is an error value (:class:`ResultTooLarge`) before anything copies it;
- printed output: :func:`capped_output` sends fd 1 and 2 through a pipe whose
  reader copies at most a budget per pass into the process log, then one
  truncation marker, and drops the rest;
- processes: the worker is a child subreaper, so whatever a variable starts
  (even detached with ``&``) stays its descendant; :func:`end_children` kills
  and reaps all of them when the variable ends; RLIMIT_FSIZE and RLIMIT_NPROC
  come from :func:`apply_process_limits`.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import fcntl
import os
import resource
import select
import signal
import sys
import termios
import threading
import time
from collections.abc import Iterator
from typing import Any

PR_SET_CHILD_SUBREAPER = 36
_SCAN_LIMIT = 100_000  # container items looked at before the size is taken as known enough


class ResultTooLarge(Exception):
    """A variable returned more data than the executor accepts for one variable."""


def human(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def result_size(value: Any, limit: int | None = None) -> int:
    """Bytes ``value`` holds (arrays by ``nbytes``, containers summed), never reading its data.

    Stops counting once ``limit`` is passed. Unknown objects count their shallow size.
    """
    seen: set[int] = set()
    total = 0
    stack: list[Any] = [value]
    looked = 0
    while stack and looked < _SCAN_LIMIT:
        item = stack.pop()
        looked += 1
        if id(item) in seen:
            continue
        seen.add(id(item))
        size, parts = _own_size(item)
        total += size
        if limit is not None and total > limit:
            return total
        stack.extend(parts)
    return total


def _own_size(item: Any) -> tuple[int, list[Any]]:
    """(bytes of ``item`` itself, the objects inside it still to count)."""
    if item is None or isinstance(item, bool | int | float | complex):
        return 0, []
    if isinstance(item, bytes | bytearray | memoryview):
        return len(item), []
    if isinstance(item, str):
        return sys.getsizeof(item), []
    if isinstance(item, dict):
        return sys.getsizeof(item), [*item.keys(), *item.values()]
    if isinstance(item, list | tuple | set | frozenset):
        return sys.getsizeof(item), list(item)
    variable = getattr(item, "variable", None)
    coords = getattr(item, "coords", None)
    if variable is not None and coords is not None:  # xarray.DataArray: data and coordinates
        return _nbytes(variable), [c.variable for c in coords.values()]
    if hasattr(item, "data_vars") and hasattr(item, "nbytes"):  # xarray.Dataset
        return _nbytes(item), []
    if hasattr(item, "memory_usage") and hasattr(item, "columns"):  # pandas.DataFrame
        with contextlib.suppress(Exception):
            return int(item.memory_usage(index=True, deep=False).sum()), []
    nbytes = _nbytes(item)
    if nbytes:
        dtype = getattr(item, "dtype", None)
        if getattr(dtype, "hasobject", False):  # object arrays: their elements too
            with contextlib.suppress(Exception):
                return nbytes, list(item.ravel()[:_SCAN_LIMIT])
        return nbytes, []
    if hasattr(item, "data") and hasattr(item, "summary_value"):  # a Cell
        return sys.getsizeof(item), [item.data, item.summary_value, getattr(item, "preview", None)]
    try:
        return sys.getsizeof(item), []
    except TypeError:
        return 0, []


def _nbytes(item: Any) -> int:
    try:
        nbytes = item.nbytes
    except Exception:
        return 0
    return int(nbytes) if isinstance(nbytes, int) or hasattr(nbytes, "__index__") else 0


def check_result(name: str, value: Any, limit: int) -> None:
    """Raise :class:`ResultTooLarge` if ``value`` is bigger than ``limit`` bytes (0: no limit)."""
    if not limit:
        return
    size = result_size(value, limit)
    if size > limit:
        raise ResultTooLarge(
            f"{name} returned {human(size)}{' or more' if size else ''}, more than the limit of "
            f"{human(limit)} per variable (executor setting max_result_mb); reduce or "
            "summarise the data in the variable"
        )


# ----------------------------------------------------------------------- processes


def become_subreaper() -> None:
    """Orphans of this process's descendants become its children (Linux), not init's."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def apply_process_limits(file_size_bytes: int = 0, nproc: int = 0) -> None:
    """RLIMIT_FSIZE (a write past it fails with EFBIG instead of killing the worker)
    and RLIMIT_NPROC (per UID: counts every process and thread of the user); 0: unset."""
    if file_size_bytes:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        _lower(resource.RLIMIT_FSIZE, file_size_bytes)
    if nproc:
        _lower(resource.RLIMIT_NPROC, nproc)


def _lower(which: int, value: int) -> None:
    """Set soft and hard limit to ``value``, or to the hard limit if that is lower."""
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


_HELPERS: dict[int, bytes] = {}  # pid -> start time: the worker's own helper processes
_OWN_OUTPUT: list[tuple[int, int]] = []  # the worker's fd 1 and 2 while a variable's are captured


def _started(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19]
    except (OSError, IndexError):
        return b""


def _is_helper(pid: int) -> bool:
    started = _HELPERS.get(pid)
    return started is not None and started == _started(pid)


def descendants(pid: int, *, helpers: bool = False) -> list[int]:
    """Every descendant of ``pid`` (from /proc, children of all its threads); without
    ``helpers``, not the worker's helper processes nor theirs."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            tids = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{current}/task/{tid}/children", "rb") as f:
                    kids = [int(c) for c in f.read().split()]
            except (OSError, ValueError):
                continue
            if not helpers:
                kids = [k for k in kids if not _is_helper(k)]
            found.extend(kids)
            todo.extend(kids)
    return found


@contextlib.contextmanager
def worker_helpers() -> Iterator[None]:
    """Processes started in the block are the worker's, not the variable's (kaleido's
    browser, kept for the next thumbnails): they survive :func:`end_children` and
    write to the worker's own stderr, not into a variable's capped output."""
    me = os.getpid()
    before = set(descendants(me, helpers=True))
    swapped: tuple[int, int] | None = None
    if _OWN_OUTPUT:
        sys.stdout.flush()
        sys.stderr.flush()
        swapped = os.dup(1), os.dup(2)
        os.dup2(_OWN_OUTPUT[-1][0], 1)
        os.dup2(_OWN_OUTPUT[-1][1], 2)
    try:
        yield
    finally:
        if swapped is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(swapped[0], 1)
            os.dup2(swapped[1], 2)
            os.close(swapped[0])
            os.close(swapped[1])
        for pid in set(descendants(me, helpers=True)) - before:
            _HELPERS[pid] = _started(pid)


def end_children(timeout_s: float = 5.0) -> int:
    """Kill every process this one started (directly or not), but its helpers, and reap
    them. Returns how many."""
    me = os.getpid()
    killed: set[int] = set()
    for pid in [p for p in _HELPERS if not _is_helper(p)]:
        del _HELPERS[pid]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in descendants(me):
            killed.add(pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for pid in killed:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        if not descendants(me):
            return len(killed)
        time.sleep(0.01)
    return len(killed)


# ----------------------------------------------------------------------- printed output


class OutputBudget:
    """Bytes of output each pass (session) may still write, in this worker."""

    def __init__(self) -> None:
        self.used: dict[str, int] = {}
        self.cut: set[str] = set()
        self.lock = threading.Lock()

    def forget(self, session: str) -> None:
        with self.lock:
            self.used.pop(session, None)
            self.cut.discard(session)


BUDGET = OutputBudget()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Copier:
    """One pipe and one thread per worker, copying what variables print to their log.

    The thread reads and handles each chunk under ``lock``, so with the lock held
    and the pipe empty, everything written so far has reached its destination.
    """

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        self.lock = threading.Lock()
        self.dest_fd = -1  # -1: nobody's output is being copied (dropped)
        self.session = ""
        self.cap = 0
        self.dropped = 0
        threading.Thread(target=self._run, daemon=True, name="rs-output").start()

    def _run(self) -> None:
        while True:
            select.select([self.read_end], [], [])
            with self.lock:
                chunk = os.read(self.read_end, 1 << 16)
                if not chunk:
                    return
                if self.dest_fd >= 0:
                    self._handle(chunk)

    def _handle(self, chunk: bytes) -> None:
        session, cap = self.session, self.cap
        with BUDGET.lock:
            used = BUDGET.used.get(session, 0)
            room = max(0, cap - used) if cap else len(chunk)
            room = min(room, len(chunk))
            BUDGET.used[session] = used + room
            first_cut = room < len(chunk) and session not in BUDGET.cut
            if first_cut:
                BUDGET.cut.add(session)
        self.dropped += len(chunk) - room
        try:  # a write can fail: EFBIG past RLIMIT_FSIZE, a full disk
            if room:
                _write_all(self.dest_fd, chunk[:room])
            if first_cut:
                _write_all(
                    self.dest_fd,
                    f"\n[runstream: output truncated: this pass printed more than {human(cap)} "
                    "(executor setting max_output_mb); the rest is dropped]\n".encode(),
                )
        except OSError:
            pass

    def drain(self, timeout_s: float = 5.0) -> None:
        """Wait until what is in the pipe now was handled (a process outside the worker's
        tree could keep writing: then give up after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        buffered = array.array("i", [0])
        while time.monotonic() < deadline:
            with self.lock:
                fcntl.ioctl(self.read_end, termios.FIONREAD, buffered)
                if not buffered[0]:
                    return
            time.sleep(0.0002)


_COPIER: list[_Copier] = []


def _copier() -> _Copier | None:
    if not _COPIER:
        try:
            _COPIER.append(_Copier())
        except (RuntimeError, OSError):  # no thread to be had (RLIMIT_NPROC)
            return None
    return _COPIER[0]


@contextlib.contextmanager
def capped_output(dest_fd: int, session: str, name: str, cap: int) -> Iterator[None]:
    """While the block runs, fd 1 and 2 (the worker's and its children's) go to ``dest_fd``,
    at most ``cap`` bytes per ``session``; then a marker, and the rest is counted and dropped.
    ``dest_fd`` is closed afterwards."""
    copier = _copier()
    if copier is not None:
        with copier.lock:
            copier.dest_fd, copier.session, copier.cap, copier.dropped = dest_fd, session, cap, 0
        sink = copier.write_end
    else:  # the output is not kept
        sink = os.open(os.devnull, os.O_WRONLY)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(sink, 1)
    os.dup2(sink, 2)
    _OWN_OUTPUT.append(saved)
    try:
        yield
    finally:
        _OWN_OUTPUT.pop()
        sys.stdout.flush()
        sys.stderr.flush()
        end_children()  # they hold the pipe too
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        _finish(copier, sink, dest_fd, name)


def _finish(copier: _Copier | None, sink: int, dest_fd: int, name: str) -> None:
    """Let the copier handle what was printed, note what was dropped, close ``dest_fd``."""
    dropped = 0
    if copier is None:
        os.close(sink)
    else:
        copier.drain()
        with copier.lock:
            copier.dest_fd = -1
            dropped = copier.dropped
    if dropped:
        with contextlib.suppress(OSError):
            _write_all(
                dest_fd, f"[runstream: {name} printed {dropped} more bytes, dropped]\n".encode()
            )
    with contextlib.suppress(OSError):
        os.close(dest_fd)
