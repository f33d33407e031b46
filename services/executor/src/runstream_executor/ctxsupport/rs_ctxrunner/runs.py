"""Open run directories with EXtra-data and find a run's start time."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections import OrderedDict
from typing import Any

_CACHE: OrderedDict[tuple[str, ...], Any] = OrderedDict()
_CACHE_SIZE = 4


def _open_dir(path: str) -> Any:
    from extra_data import RunDirectory

    return RunDirectory(path, parallelize=False)


def open_run(raw_dir: str, proc_dir: str, data: str) -> Any:
    """A DataCollection: the raw run, or raw and proc combined (proc wins) for proc."""
    key = (raw_dir, proc_dir, data)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    if data == "raw":
        run = _open_dir(raw_dir)
    else:
        proc = _open_dir(proc_dir)
        try:
            raw = open_run(raw_dir, proc_dir, "raw")
        except FileNotFoundError:
            run = proc
        else:
            extra = raw.deselect([(src, "*") for src in raw.all_sources & proc.all_sources])
            if extra.files:
                run = proc.union(extra)
                run.is_single_run = True
            else:
                run = proc
    _CACHE[key] = run
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return run


def close_runs() -> None:
    """Forget the runs kept open and close the HDF5 files EXtra-data keeps open (up to 128
    per process otherwise, each with its metadata and chunk caches, ~1 MiB). Called when
    a pass ends; a run still in use elsewhere reopens a file when it next reads it."""
    _CACHE.clear()
    access = sys.modules.get("extra_data.file_access")
    registry = getattr(access, "file_access_registry", None)
    if registry is None:
        return
    for file_access in list(registry.values()):
        with contextlib.suppress(Exception):
            file_access.close()


def first_train_time(run: Any) -> float | None:
    """Epoch seconds of a DataCollection's first train timestamp, None if it has none."""
    try:
        stamps = run.select_trains(slice(0, 1)).train_timestamps()
        if len(stamps):
            value = stamps[0].astype("datetime64[ns]").astype("int64") / 1e9
            if not math.isnan(float(value)) and str(stamps[0]) != "NaT":
                return float(value)
    except Exception:
        pass
    return None


def run_start_time(run: Any) -> float | None:
    """A DataCollection's start: first train timestamp, else its oldest raw (or any) file's mtime."""
    found = first_train_time(run)
    if found is not None:
        return found
    files = sorted(f.filename for f in getattr(run, "files", ()))
    raw = [f for f in files if "raw" in f]
    try:
        return float(min(os.path.getmtime(f) for f in raw or files)) if files else None
    except OSError:
        return None


def start_time(raw_dir: str, proc_dir: str) -> float | None:
    """First train timestamp (epoch s); else the oldest raw (or proc) file's mtime."""
    for directory, data in ((raw_dir, "raw"), (proc_dir, "proc")):
        try:
            run = open_run(raw_dir, proc_dir, data)
        except Exception:
            continue
        found = first_train_time(run)
        if found is not None:
            return found
        try:
            files = [os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".h5")]
            if files:
                return float(min(os.path.getmtime(f) for f in files))
        except OSError:
            continue
    return None
