"""Limits on what a variable's code may do inside a worker.

- results: :func:`result_size` measures a value without touching its data (a
  ``np.zeros`` of 5 GB has never-touched pages); a bigger value than the limit
  is an error value (:class:`ResultTooLarge`) before anything copies it;
- printed output: :class:`CappedOutput` sends fd 1 and 2 through a pipe whose
  reader copies at most a budget per pass into the process log, then one
  truncation marker, and drops the rest;
- processes: the worker is a child subreaper, so whatever a variable starts
  (even detached with ``&``) stays its descendant; :func:`end_children` kills
  and reaps all of them when the variable ends; RLIMIT_FSIZE and RLIMIT_NPROC
  come from :func:`apply_process_limits`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import sys
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


@contextlib.contextmanager
def capped_output(dest_fd: int, session: str, name: str, cap: int) -> Iterator[None]:
    """While the block runs, fd 1 and 2 (the worker's and its children's) go to ``dest_fd``,
    at most ``cap`` bytes per ``session``; then a marker, and the rest is counted and dropped.
    ``dest_fd`` is closed afterwards."""
    read_end, write_end = os.pipe()
    dropped = [0]
    thread = threading.Thread(
        target=_copy, args=(read_end, dest_fd, session, cap, dropped), daemon=True
    )
    copier: threading.Thread | None = thread
    try:
        thread.start()
    except RuntimeError:  # no thread to be had (RLIMIT_NPROC): the output is not kept
        copier = None
        os.close(read_end)
        os.close(write_end)
        write_end = os.open(os.devnull, os.O_WRONLY)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
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
        _finish(copier, dest_fd, name, dropped)


def _finish(copier: threading.Thread | None, dest_fd: int, name: str, dropped: list[int]) -> None:
    """Wait for the copier to drain the pipe, note what was dropped, close ``dest_fd``."""
    if copier is not None:
        copier.join(5.0)  # a process outside our tree may still hold the pipe: leave it
        if copier.is_alive():
            return
    if dropped[0]:
        with contextlib.suppress(OSError):
            note = f"[runstream: {name} printed {dropped[0]} more bytes, dropped]\n"
            _write_all(dest_fd, note.encode())
    with contextlib.suppress(OSError):
        os.close(dest_fd)


def _copy(read_end: int, dest_fd: int, session: str, cap: int, dropped: list[int]) -> None:
    try:
        while chunk := os.read(read_end, 1 << 16):
            with BUDGET.lock:
                used = BUDGET.used.get(session, 0)
                room = max(0, cap - used) if cap else len(chunk)
                BUDGET.used[session] = used + min(room, len(chunk))
                first_cut = room < len(chunk) and session not in BUDGET.cut
                if first_cut:
                    BUDGET.cut.add(session)
            try:
                if room:
                    _write_all(dest_fd, chunk[:room])
                if first_cut:
                    _write_all(
                        dest_fd,
                        f"\n[runstream: output truncated: this pass printed more than "
                        f"{human(cap)} (executor setting max_output_mb); the rest is "
                        "dropped]\n".encode(),
                    )
            except OSError:  # e.g. EFBIG past RLIMIT_FSIZE, or a full disk
                pass
            dropped[0] += len(chunk) - min(room, len(chunk))
    finally:
        os.close(read_end)
