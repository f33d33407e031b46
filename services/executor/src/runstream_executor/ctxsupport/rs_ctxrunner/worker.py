"""A warm worker: ``python -m rs_ctxrunner.worker [--preload mod,...] [--address-space-mb N]``.

It imports the scientific stack once, then answers requests read from stdin
(length-prefixed pickles, see ``protocol``) on the original stdout. The user's
prints go to stderr, stdin is replaced by /dev/null. One request at a time.

Requests (dicts with ``op``): ``load`` (check a context file, return variable
definitions), ``eval`` (one variable of one run), ``start_time``, ``write``
(write the data held for a pass into its HDF5 fragment), ``forget`` (drop
what is kept for a processing pass), ``ping``.

A pass's values stay in the worker that computed them (``keep``: for the
variables that depend on them) and, with ``hold``, so does the data to store:
the reply carries only the summaries, and the fragment is written here, once,
by ``write``; nothing large crosses the pipe.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import pickle
import signal
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import h5write, limits, protocol
from .api import Cell, Skip
from .loader import ContextFile, ContextLoadError
from .prepare import prepare
from .runs import close_runs, open_run, start_time

log = logging.getLogger("rs_ctxrunner")

DEFAULT_PRELOAD = ("numpy", "h5py", "extra_data", "matplotlib", "PIL.Image")

_AT_START: set[str] = set()  # modules this worker had when it began serving
_REPORTED: set[str] = set()  # shareable modules it imported since and told the service about

_CONTEXTS: OrderedDict[str, ContextFile] = OrderedDict()
_KEPT: dict[tuple[str, str], Any] = {}  # (session, name) -> value, for dependents
_HELD: dict[tuple[str, str], dict[str, Any]] = {}  # (session, name) -> prepared, for the fragment
_PROVIDERS: dict[str, Any] = {}


_SEEN_FOLDERS: set[str] = set()
_ACTIVE_FOLDER: list[str] = []


def _activate(folder: str) -> None:
    """Make modules next to this context importable, and only this context's.

    A warm worker serves several proposals: a ``helpers.py`` imported for one
    context folder must not be what another folder's ``import helpers`` gets.
    """
    if _ACTIVE_FOLDER and _ACTIVE_FOLDER[0] == folder:
        return
    for other in _SEEN_FOLDERS - {folder}:
        while other in sys.path:
            sys.path.remove(other)
        prefix = other + os.sep
        for name, module in list(sys.modules.items()):
            if (getattr(module, "__file__", None) or "").startswith(prefix):
                del sys.modules[name]
    _SEEN_FOLDERS.add(folder)
    while folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    _ACTIVE_FOLDER[:] = [folder]


def _context(msg: dict[str, Any]) -> ContextFile:
    _activate(os.path.dirname(os.path.abspath(msg["path"])))
    key = msg["hash"]
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        ctx = ContextFile.from_source(msg["source"], msg["path"])
        _CONTEXTS[key] = ctx
        while len(_CONTEXTS) > 8:
            _CONTEXTS.popitem(last=False)
    else:
        _CONTEXTS.move_to_end(key)
    return ctx


def op_load(msg: dict[str, Any]) -> dict[str, Any]:
    """Load a context file: its module code runs with the same limits as a variable
    (output capped, into the worker's stderr; processes it starts ended)."""
    session = f"load:{msg['hash']}"
    cap = LIMITS.get("max_output_bytes", 0)
    try:
        with limits.capped_output(os.dup(2), session, "context.py", cap):
            ctx = _context(msg)
    except ContextLoadError as exc:
        return {"ok": False, "problems": exc.problems}
    finally:
        limits.BUDGET.forget(session)
    return {"ok": True, "definitions": ctx.definitions()}


def _mymdc(provider_spec: str | None, proposal: int, run: int, field: str) -> Any:
    if not provider_spec:
        raise RuntimeError(f"mymdc#{field}: no metadata provider is configured for this executor")
    provider = _PROVIDERS.get(provider_spec)
    if provider is None:
        module, _, attr = provider_spec.partition(":")
        provider = getattr(importlib.import_module(module), attr or "get")
        _PROVIDERS[provider_spec] = provider
    return provider(proposal, run, field)


def _resolve_input(spec: tuple[str, Any], session: str) -> Any:
    kind, payload = spec
    if kind == "value":
        return pickle.loads(payload)
    if kind == "pinned":
        try:
            return _KEPT[(session, payload)]
        except KeyError:
            raise RuntimeError(f"value of {payload!r} was lost (worker replaced)") from None
    if kind == "glob":
        return {name: _resolve_input(sub, session) for name, sub in payload.items()}
    raise ValueError(f"unknown input kind {kind!r}")


def _error(exc: BaseException) -> dict[str, Any]:
    cls = type(exc).__name__
    return {"status": "error", "error": str(exc), "error_cls": cls}


LIMITS: dict[str, int] = {}  # set once at start: see ``limits`` and ``PoolConfig``


def _log_fd(log_path: str | None) -> int:
    """Where a variable's output goes: the run's process log, else the worker's stderr."""
    if log_path:
        try:
            os.makedirs(os.path.dirname(log_path), exist_ok=True)
            return os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o664)
        except OSError:
            pass
    return os.dup(2)


def op_eval(msg: dict[str, Any]) -> dict[str, Any]:
    """Evaluate one variable; its output is capped, the processes it started end with it.

    The reply says how much the worker's resident memory grew at its peak while the
    variable ran (``peak_mb``; the executor's admission by memory learns from it).
    """
    name = msg["name"]
    cap = LIMITS.get("max_output_bytes", 0)
    rss_before = _reset_peak_rss()
    with limits.capped_output(_log_fd(msg.get("log")), msg.get("session", ""), name, cap):
        reply = _eval(msg)
        if reply.get("status") == "error" and reply.get("error_cls") == "Skip":
            print(f"Skipped {name}: {reply.get('error')}", file=sys.stderr)
        elif reply.get("status") != "error":
            print(f"Computed {name} in {reply['duration']:.3f} s", file=sys.stderr)
    if rss_before is not None:
        peak = _peak_rss_mb()
        if peak is not None:
            reply["peak_mb"] = max(0.0, peak - rss_before)
    return reply


_PEAK_RESET = [True]  # whether /proc/self/clear_refs accepts a reset of the peak


def _reset_peak_rss() -> float | None:
    """Reset the process's peak resident size (VmHWM) to its current size; returns it (MiB).

    None where the kernel does not let us (then no peak is reported).
    """
    if not _PEAK_RESET[0]:
        return None
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        _PEAK_RESET[0] = False
        return None


def _peak_rss_mb() -> float | None:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _eval(msg: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    ctx = _context(msg)
    name = msg["name"]
    var = ctx.vars[name]
    run_info = msg["run"]
    session = msg["session"]
    reply: dict[str, Any] = {"ok": True, "value": None, "pinned": False, "prepared": None}
    try:
        with contextlib.suppress(OSError):
            os.chdir(run_info["context_dir"])
        run = _open_run(run_info, ctx.data[name])
        kwargs = _arguments(var, msg, session)
        assert var.func is not None
        value = var.func(run, **kwargs)
        limits.check_result(name, value, LIMITS.get("max_result_bytes", 0))
        dep_value = _result(msg, reply, var, value)
        if reply["status"] == "ok" and msg.get("keep"):
            _keep(msg, reply, session, name, dep_value)
        _report_imports(msg, reply)
    except Skip as exc:
        reply.update(status="error", error=str(exc), error_cls="Skip")
    except Exception as exc:
        print(f"Could not get data for {name}", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        reply.update(_error(exc))
    finally:
        _close_figures()
    reply["duration"] = time.perf_counter() - started
    return reply


def _open_run(run_info: dict[str, Any], data: str) -> Any:
    """The run as the variable's data kind asks (missing proc data skips the variable)."""
    try:
        return open_run(run_info["raw_dir"], run_info["proc_dir"], data)
    except Exception as exc:
        if data == "proc":
            raise Skip(f"proc data not available for run {run_info['run']}: {exc}") from None
        raise


def _arguments(var: Any, msg: dict[str, Any], session: str) -> dict[str, Any]:
    """The variable's keyword arguments from its annotations (var#, meta#, mymdc#, param#)."""
    run_info = msg["run"]
    kwargs: dict[str, Any] = {}
    for param, ann in var.annotations().items():
        kind, _, field = ann.partition("#")
        if kind == "var":
            if param in msg["inputs"]:
                kwargs[param] = _resolve_input(msg["inputs"][param], session)
        elif kind == "meta":
            if field == "run_number":
                kwargs[param] = run_info["run"]
            elif field == "proposal":
                kwargs[param] = run_info["proposal"]
            elif field == "proposal_path":
                kwargs[param] = Path(run_info["proposal_dir"])
        elif kind == "mymdc":
            kwargs[param] = _mymdc(msg.get("mymdc"), run_info["proposal"], run_info["run"], field)
        elif kind == "param":
            if param not in var.defaults():
                raise Skip(f"no value given for {ann}")
        else:
            raise RuntimeError(f"Unknown path {ann!r} for argument {param!r}")
    return kwargs


def _result(msg: dict[str, Any], reply: dict[str, Any], var: Any, value: Any) -> Any:
    """Put the status and the data to store in ``reply``; return the value for dependents."""
    if value is None:
        reply["status"] = "none"
        return None
    reply["status"] = "ok"
    if var.transient:
        return value.data if isinstance(value, Cell) else value
    cell = value if isinstance(value, Cell) else Cell(value)
    prepared = prepare(var, cell)
    name = msg["name"]
    limits.check_result(name, prepared, LIMITS.get("max_result_bytes", 0))
    reply["prepared"] = _hold(msg, msg["session"], name, prepared) if msg.get("hold") else prepared
    return cell.data


def _report_imports(msg: dict[str, Any], reply: dict[str, Any]) -> None:
    """Shareable modules the variable imported: the zygote can preload them for the next workers."""
    imported = [
        m for m in msg.get("share") or () if m in sys.modules and m not in _AT_START | _REPORTED
    ]
    if imported:
        _REPORTED.update(imported)
        reply["imported"] = imported


def _keep(msg: dict[str, Any], reply: dict[str, Any], session: str, name: str, value: Any) -> None:
    """Keep a value for dependents: here (``pin``), or as a pickle in the reply.

    ``pickle`` also asks for the bytes (the service keeps them for later passes);
    an unpicklable value stays here whatever was asked, and so does an array larger
    than ``pickle_max_bytes`` (when given).
    """
    limit = msg.get("pickle_max_bytes") or 0
    if msg.get("pickle") and not (limit and _nbytes(value) > limit):
        try:
            reply["value"] = pickle.dumps(value, protocol=protocol.PICKLE_PROTOCOL)
        except Exception:
            reply["value"] = None
    if msg.get("pin") or reply.get("value") is None:
        _KEPT[(session, name)] = value
        reply["pinned"] = True


def _nbytes(value: Any) -> int:
    """The size of an array-like value (numpy, xarray, pandas); 0 if it does not say."""
    try:
        return int(getattr(value, "nbytes", 0) or 0)
    except Exception:
        return 0


def _hold(msg: dict[str, Any], session: str, name: str, prepared: dict[str, Any]) -> dict[str, Any]:
    """Keep ``prepared`` here for ``write``; return what the service needs of it.

    With ``give`` (a variable evaluated beside the pass's own worker) nothing is
    kept: the whole of it goes back, marked with whether the fragment needs it.
    """
    in_fragment = not msg.get("inline_scalars") or h5write.needs_fragment(
        prepared, msg.get("max_inline_chars", 16384)
    )
    if msg.get("give"):
        return {**prepared, "in_fragment": in_fragment}
    if in_fragment:
        _HELD[(session, name)] = prepared
    return h5write.summary_part(prepared, in_fragment=in_fragment)


def _close_figures() -> None:
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        with contextlib.suppress(Exception):
            plt.close("all")


_START_TIMES: OrderedDict[tuple[str, str], float | None] = OrderedDict()


def op_start_time(msg: dict[str, Any]) -> dict[str, Any]:
    key = (msg["raw_dir"], msg["proc_dir"])
    if key not in _START_TIMES:
        _START_TIMES[key] = start_time(*key)
        while len(_START_TIMES) > 256:
            _START_TIMES.popitem(last=False)
    return {"ok": True, "start_time": _START_TIMES[key]}


def op_forget(msg: dict[str, Any]) -> dict[str, Any]:
    _forget(msg["session"])
    return {"ok": True}


def _forget(session: str) -> None:
    limits.BUDGET.forget(session)
    for store in (_KEPT, _HELD):
        for key in [k for k in store if k[0] == session]:
            del store[key]


def op_write(msg: dict[str, Any]) -> dict[str, Any]:
    """Write the pass's held data for ``names`` (plus ``extra``) into the fragment ``path``.

    Atomic (``*.writing``, fsync, rename; with ``sync`` false only ``*.writing``, the
    caller commits it). Replies ``failed``: name -> (message, class) for data that
    could not be written or was not here; then forgets the pass.
    """
    session = msg["session"]
    stored = {n: _HELD[(session, n)] for n in msg["names"] if (session, n) in _HELD}
    stored.update(msg.get("extra") or {})
    lost = {
        n: ("its data was lost with the worker that computed it", "WorkerCrashed")
        for n in msg["names"]
        if n not in stored
    }
    try:
        failed = h5write.write_atomically(
            msg["path"],
            stored,
            {**dict(msg.get("errors") or {}), **lost},
            start_time=msg.get("start_time"),
            always=bool(msg.get("always")),
            sync=msg.get("sync", True),
        )
    finally:
        _forget(session)
    return {"ok": True, "failed": {**lost, **failed}}


def op_ping(msg: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "pid": os.getpid()}


OPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "load": op_load,
    "eval": op_eval,
    "start_time": op_start_time,
    "forget": op_forget,
    "write": op_write,
    "ping": op_ping,
}


def _trim_heap() -> None:
    """Return free memory to the system: HDF5's free lists, then glibc's free heap pages.

    After a pass that read a large source, HDF5 keeps ~13 MiB on its free lists and
    glibc ~12 MiB of free heap: a quarter of an idle worker's resident size, in every
    worker (measured on the ``bench/throughput`` workload: 90 -> 65 MiB).
    """
    with contextlib.suppress(Exception):
        import ctypes

        hdf5 = _hdf5_library()
        if hdf5 is not None:
            hdf5.H5garbage_collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)


_HDF5: list[Any] = []


def _hdf5_library() -> Any:
    """The HDF5 library h5py loaded (None if h5py is not imported or it is not found)."""
    if _HDF5:
        return _HDF5[0]
    if "h5py" not in sys.modules:
        return None
    import ctypes

    library = None
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.rsplit(" ", 1)[-1].strip()
            if "/libhdf5" in path and ".so" in path and "_hl" not in path:
                library = ctypes.CDLL(path)
                break
    _HDF5.append(library)
    return library


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _limit_address_space(megabytes: int) -> None:
    import resource

    limit = megabytes * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def serve(proto_in: Any, proto_out: Any, **hello: Any) -> None:
    _AT_START.update(sys.modules)
    protocol.write_frame(
        proto_out,
        {
            "op": "ready",
            "pid": os.getpid(),
            "python": sys.version,
            "executable": sys.executable,
            **hello,
        },
    )
    while True:
        try:
            msg = protocol.read_frame(proto_in)
        except EOFError:
            return
        op = msg.get("op")
        if op == "exit":
            return
        handler = OPS.get(op)
        try:
            reply = handler(msg) if handler else {"ok": False, "error": f"unknown op {op!r}"}
        except BaseException as exc:  # keep serving whatever the request did
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", **_error(exc)}
        try:
            protocol.write_frame(proto_out, reply)
            if op in ("write", "forget"):  # a pass ended: give its freed memory back
                close_runs()
                _trim_heap()
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            protocol.write_frame(
                proto_out,
                {
                    "ok": True,
                    "status": "error",
                    "error": f"result cannot be sent: {exc}",
                    "error_cls": type(exc).__name__,
                    "value": None,
                    "pinned": False,
                    "prepared": None,
                    "duration": reply.get("duration"),
                },
            )


def preload_modules(modules: list[str]) -> None:
    """Import ``modules`` (failures are reported, not fatal); matplotlib draws with Agg."""
    for module in filter(None, modules):
        try:
            importlib.import_module(module)
        except Exception as exc:
            print(f"preload of {module} failed: {exc}", file=sys.stderr)
    if "matplotlib" in sys.modules:
        with contextlib.suppress(Exception):
            import matplotlib

            matplotlib.use("Agg")


def setup_process(preload: str, address_space_mb: int, *, buffered: bool = True) -> tuple[Any, Any]:
    """Take over stdin/stdout for the protocol, import ``preload``, apply limits.

    Returns the protocol's (input, output) files. The user's prints then go to
    stderr and stdin reads /dev/null.
    """
    proto_in = os.fdopen(os.dup(0), "rb", buffering=(1 << 16) if buffered else 0)
    proto_out = os.fdopen(os.dup(1), "wb", buffering=1 << 16)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    logging.basicConfig(level=logging.INFO, format="[worker %(process)d] %(levelname)s %(message)s")
    os.environ.setdefault("MPLBACKEND", "Agg")
    preload_modules(preload.split(","))
    if address_space_mb:
        _limit_address_space(address_space_mb)
    return proto_in, proto_out


def confine(limits_json: str) -> None:
    """In a worker, before it serves: the limits for user code (JSON from ``--limits``).

    Keys (bytes or counts, 0 or missing: none): ``max_result_bytes``,
    ``max_output_bytes``, ``file_size_bytes`` (RLIMIT_FSIZE), ``nproc`` (RLIMIT_NPROC).
    The worker also becomes a child subreaper, so every process a variable starts
    stays within its reach and is ended with the variable.
    """
    values = json.loads(limits_json or "{}")
    LIMITS.update({k: int(v) for k, v in values.items()})
    limits.become_subreaper()
    limits.apply_process_limits(LIMITS.get("file_size_bytes", 0), LIMITS.get("nproc", 0))


def main() -> None:
    parser = argparse.ArgumentParser(prog="rs_ctxrunner.worker")
    parser.add_argument("--preload", default=",".join(DEFAULT_PRELOAD))
    parser.add_argument("--address-space-mb", type=int, default=0)
    parser.add_argument("--limits", default="{}", help="JSON, see confine()")
    args = parser.parse_args()
    proto_in, proto_out = setup_process(args.preload, args.address_space_mb)
    confine(args.limits)
    serve(proto_in, proto_out)


if __name__ == "__main__":
    main()
