"""DAMNIT's per-run HDF5 layout writer (fragments and ``context eval --output``).

Layout (damnit.md §4.1)::

    /                  attr provenance
    /.reduced/{var}    summary (scalar | vlen str | uint8 PNG | float64 (2, N) trendline)
                       attrs summary_method, summary_type, max_diff, bold, background, units
    /.preview/{var}    explicit preview (array, RGBA image, or NetCDF4 group)
    /.errors/{var}     str(exc), attr type = class name
    /{var}/data        plain data, or /{var} a NetCDF4 group (xarray), attr _damnit_objtype

Each variable is written in isolation: if writing one fails, its partial
objects are removed, the failure is recorded in ``.errors`` and returned, and
every other variable is still saved.
"""

from __future__ import annotations

import math
import os
from typing import Any

import h5py
import numpy as np

from .durable import commit


def _delete(f: h5py.File, *paths: str) -> None:
    for path in paths:
        if path in f:
            del f[path]


def _write_array(group: h5py.Group, name: str, value: Any) -> None:
    """A plain dataset, stored uncompressed as DAMNIT 0.4 stores them (damnit.md §4.1).

    gzip here cost ~45 ms of a worker's CPU per run for a 2 MB image of floats (a
    quarter of the computation it summarises) to save about 1 MB next to 200 MB
    of raw data; the store compresses at merge instead if its ``compress_min_bytes``
    asks for it (off by default). NetCDF (xarray) variables keep gzip 1 + shuffle.
    """
    if isinstance(value, str):
        group.create_dataset(name, data=value, dtype=h5py.string_dtype())
        return
    group.create_dataset(name, data=np.asarray(value))


def _write_reduced(f: h5py.File, name: str, prep: dict[str, Any]) -> None:
    reduced = f.require_group(".reduced")
    summary = prep.get("summary")
    if summary is None:
        return
    _write_array(reduced, name, summary)
    ds = reduced[name]
    if prep.get("summary_method"):
        ds.attrs["summary_method"] = prep["summary_method"]
    if prep.get("summary_type") in ("trendline", "thumbnail"):
        ds.attrs["summary_type"] = prep["summary_type"]
    if prep.get("max_diff") is not None:
        ds.attrs["max_diff"] = np.float64(prep["max_diff"])
    if prep.get("bold") is not None:
        ds.attrs["bold"] = bool(prep["bold"])
    if prep.get("background") is not None:
        ds.attrs["background"] = np.asarray(prep["background"], dtype=np.uint8)
    if prep.get("units"):
        ds.attrs["units"] = prep["units"]


# The store's file-creation settings for run files (runstream_store.adapters.hdf5_layout):
# persistent free-space tracking, so that a new run's fragment can become its run file as
# it is (the store copies its bytes instead of each object) and later merges into that file
# reuse the space of the objects they replace.
FILE_SPACE: dict[str, Any] = {"fs_strategy": "fsm", "fs_persist": True, "fs_threshold": 1}

# prepared kind -> DAMNIT's _damnit_objtype attribute (plain arrays and strings have none)
OBJTYPES = {
    "image": "image",
    "plotly": "PlotlyFigure",
    "series": "series",
    "dataframe": "dataframe",
}


def _write_plain(f: h5py.File, name: str, prep: dict[str, Any]) -> None:
    kind = prep["kind"]
    if kind in ("array", "string", *OBJTYPES):
        group = f.create_group(name)
        _write_array(group, "data", prep["data"])
        if kind in OBJTYPES:
            group.attrs["_damnit_objtype"] = OBJTYPES[kind]
    preview = prep.get("preview")
    if preview is not None and preview["kind"] != "dataarray":
        pgroup = f.require_group(".preview")
        _write_array(pgroup, name, preview["data"])
        if preview["kind"] in OBJTYPES:
            pgroup[name].attrs["_damnit_objtype"] = OBJTYPES[preview["kind"]]


def write_error(f: h5py.File, name: str, message: str, error_cls: str) -> None:
    errors = f.require_group(".errors")
    _delete(f, f".errors/{name}")
    errors.create_dataset(name, data=message, dtype=h5py.string_dtype())
    errors[name].attrs["type"] = error_cls


def _xarray_object(kind: str, payload: dict[str, Any]) -> Any:
    import xarray as xr

    if kind == "dataarray":
        return xr.DataArray.from_dict(payload)
    return xr.Dataset.from_dict(payload)


def _to_netcdf(path: str, group: str, kind: str, payload: dict[str, Any]) -> None:
    obj = _xarray_object(kind, payload)
    ds = obj.to_dataset() if kind == "dataarray" else obj
    encoding = {
        v: {"compression": "gzip", "compression_opts": 1, "shuffle": True}
        for v in ds.variables
        if ds[v].ndim >= 1 and ds[v].dtype.kind in "biufc"
    }
    ds.to_netcdf(
        path, mode="a", group=group, engine="h5netcdf", encoding=encoding, invalid_netcdf=True
    )


def write_file(
    path: str,
    results: dict[str, dict[str, Any]],
    errors: dict[str, tuple[str, str]],
    *,
    provenance: str = "context.py",
    start_time: float | None = None,
) -> dict[str, tuple[str, str]]:
    """Write ``results`` (name -> prepared) and ``errors`` (name -> (message, class)).

    Returns the variables that could not be saved: name -> (message, class).
    """
    failed: dict[str, tuple[str, str]] = {}
    netcdf: list[tuple[str, str, str, dict[str, Any]]] = []  # (var, group path, kind, payload)
    with h5py.File(path, "w", **FILE_SPACE) as f:
        f.attrs["provenance"] = provenance
        if start_time is not None:
            f.create_group("start_time").create_dataset("data", data=np.float64(start_time))
            f.require_group(".reduced").create_dataset("start_time", data=np.float64(start_time))
        for name, prep in results.items():
            try:
                _write_plain(f, name, prep)
                _write_reduced(f, name, prep)
            except Exception as exc:
                _delete(f, name, f".reduced/{name}", f".preview/{name}")
                failed[name] = (str(exc), type(exc).__name__)
                continue
            if prep["kind"] in ("dataarray", "dataset"):
                netcdf.append((name, name, prep["kind"], prep["data"]))
            preview = prep.get("preview")
            if preview is not None and preview["kind"] == "dataarray":
                netcdf.append((name, f".preview/{name}", "dataarray", preview["data"]))
        for name, (message, error_cls) in errors.items():
            write_error(f, name, message, error_cls)

    written: list[tuple[str, str, str]] = []
    for name, group, kind, payload in netcdf:
        if name in failed:
            continue
        try:
            _to_netcdf(path, group, kind, payload)
            written.append((name, group, kind))
        except Exception as exc:
            failed[name] = (str(exc), type(exc).__name__)

    if netcdf or failed:
        with h5py.File(path, "a") as f:
            for name, group, kind in written:
                if name not in failed:
                    f[group].attrs["_damnit_objtype"] = kind
            for name, (message, error_cls) in failed.items():
                _delete(f, name, f".reduced/{name}", f".preview/{name}")
                write_error(f, name, message, error_cls)
    return failed


def needs_fragment(prepared: dict[str, Any], max_inline_chars: int) -> bool:
    """Whether the message's inline summary is not enough to store this result.

    Plain scalars and short strings whose summary is the value itself travel
    inline only; arrays, xarray objects, images, previews, binary summaries and
    reduced values need the fragment.
    """
    kind = prepared["kind"]
    if kind not in ("array", "string") or prepared.get("preview") is not None:
        return True
    if prepared.get("summary_type") in ("thumbnail", "trendline"):
        return True
    data = prepared["data"]
    if kind == "string":
        return len(data) > max_inline_chars or prepared.get("summary") != data
    arr = np.asarray(data)
    if arr.ndim != 0:
        return True
    value = arr.item()
    summary = prepared.get("summary")
    if isinstance(value, complex) or (isinstance(value, float) and not math.isfinite(value)):
        return True
    return type(summary) is not type(value) or summary != value


def summary_part(prepared: dict[str, Any], *, in_fragment: bool) -> dict[str, Any]:
    """What the service needs of a result whose data stays here: no data, no preview,
    no binary summary (those are read from the fragment)."""
    part = {k: v for k, v in prepared.items() if k not in ("data", "preview")}
    if isinstance(part.get("summary"), np.ndarray):
        part["summary"] = None
    part["in_fragment"] = in_fragment
    part["has_preview"] = prepared.get("preview") is not None
    return part


def write_atomically(
    path: str,
    stored: dict[str, dict[str, Any]],
    errors: dict[str, tuple[str, str]],
    *,
    start_time: float | None,
    provenance: str = "context.py",
    always: bool = True,
    sync: bool = True,
) -> dict[str, tuple[str, str]]:
    """Write ``path + '.writing'``, fsync, rename, fsync the folder. Returns what failed.

    Nothing is written when there is nothing to store and ``always`` is false.
    ``sync=False`` stops after writing ``path + '.writing'``: the caller finishes it with
    :func:`commit` (the service does, so a worker does not wait for the disk).
    """
    if not stored and not always:
        return {}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".writing"
    done = False
    try:
        failed = write_file(tmp, stored, errors, provenance=provenance, start_time=start_time)
        if sync:
            commit(path)
        done = True
    finally:
        if not done and os.path.exists(tmp):
            os.unlink(tmp)
    return failed
