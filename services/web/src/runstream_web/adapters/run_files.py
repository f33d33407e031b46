"""Reading the per-run HDF5 files, read-only (blocking: callers use a thread).

The store writes ``<context_dir>/extracted_data/p{P}_r{R}.h5`` in DAMNIT's
layout (``/{name}/data`` or a NetCDF group, ``.reduced/{name}`` the summary,
``.preview/{name}`` an explicit preview) and replaces it atomically, so a file
opened here is always complete.

:func:`plot_data` turns a stored value into what the browser plots: a line, an
image, an RGB picture, a plotly figure, a scalar or text, decimated so that a
huge array never reaches a browser whole.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np

REDUCED = ".reduced"
PREVIEW = ".preview"
OBJTYPE = "_damnit_objtype"
MAX_SIDE = 1000  # pixels a side of an image sent to the browser


class NotStored(LookupError):
    """The run file has no such object."""


def run_file(context_dir: str | Path, proposal: int, run: int) -> Path:
    return Path(context_dir) / "extracted_data" / f"p{proposal}_r{run}.h5"


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.dtype.kind == "O" and value.ndim == 0:
        return _text(value.item())
    return str(value)


def _attr(obj: Any, key: str) -> str | None:
    value = obj.attrs.get(key)
    if value is None:
        return None
    return _text(value)


def summary_bytes(path: Path, name: str) -> tuple[str, Any]:
    """``.reduced/{name}``: ("png", bytes) for a thumbnail, ("array", ndarray) otherwise."""
    if not path.exists():
        raise NotStored(f"no run file {path.name}")
    with h5py.File(path, "r") as f:
        where = f"{REDUCED}/{name}"
        if where not in f:
            raise NotStored(where)
        value = f[where][()]
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
        return "png", value.tobytes()
    return "array", value


def sparkline_svg(values: Any, width: int = 120, height: int = 22) -> bytes:
    """A (2, N) trendline (or a 1-D array) as a small SVG polyline."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 2 and arr.shape[0] == 2:
        x, y = arr[0], arr[1]
    else:
        y = arr.ravel()
        x = np.arange(y.size, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size > 2 * width:
        step = math.ceil(x.size / (2 * width))
        x, y = x[::step], y[::step]
    points = ""
    if x.size:
        span_x = float(np.ptp(x)) or 1.0
        span_y = float(np.ptp(y)) or 1.0
        px = (x - x.min()) / span_x * (width - 2) + 1
        py = height - 1 - (y - y.min()) / span_y * (height - 2)
        points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py, strict=True))
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><polyline fill="none" stroke="#1f6feb" '
        f'stroke-width="1.2" points="{points}"/></svg>'
    )
    return svg.encode()


def _decimate(arr: np.ndarray, max_points: int) -> tuple[np.ndarray, int]:
    if arr.ndim == 1 and arr.size > max_points:
        step = math.ceil(arr.size / max_points)
        return arr[::step], step
    if arr.ndim >= 2:
        step = max(1, math.ceil(max(arr.shape[0], arr.shape[1]) / MAX_SIDE))
        return arr[::step, ::step], step
    return arr, 1


def _jsonable(arr: np.ndarray) -> np.ndarray:
    """A contiguous int or float64 array (orjson writes it; NaN and inf become null)."""
    if np.iscomplexobj(arr):
        arr = np.abs(arr)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind == "f" and arr.dtype != np.float64:
        arr = arr.astype(np.float64)
    elif arr.dtype.kind == "u" and arr.dtype.itemsize == 8:
        arr = arr.astype(np.float64)  # orjson has no uint64 beyond int64's range
    return np.ascontiguousarray(arr)


def array_plot(arr: np.ndarray, max_points: int, *, coords: dict[str, Any] | None = None,
               dims: tuple[str, ...] = (), units: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The plot of a numeric array: scalar, line, image or RGB(A) picture."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biufc":
        return {"kind": "text", "text": _text(arr if arr.ndim else arr.item())[:100_000]}
    shape = list(arr.shape)
    if arr.ndim == 0:
        value = arr.item()
        if isinstance(value, complex):
            return {"kind": "scalar", "value": [value.real, value.imag], "complex": True}
        return {"kind": "scalar", "value": value if _finite(value) else None, "units": units}
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.dtype == np.uint8:
        small, step = _decimate(arr, max_points)
        return {"kind": "rgb", "z": _jsonable(small), "shape": shape, "step": step}
    note = None
    if arr.ndim > 2:
        note = f"showing the first 2-D slice of an array of shape {tuple(shape)}"
        arr = arr.reshape((-1, *arr.shape[-2:]))[0]
    small, step = _decimate(arr, max_points)
    out: dict[str, Any] = {"shape": shape, "step": step, "units": units, "note": note,
                           "dims": list(dims)}  # fmt: skip
    if small.ndim == 1:
        out["kind"] = "line"
        out["y"] = _jsonable(small)
        x = (coords or {}).get(dims[0]) if dims else None
        if x is not None and len(x) == arr.shape[0]:
            out["x"] = _jsonable(np.asarray(x)[::step])
        return out
    out["kind"] = "image"
    out["z"] = _jsonable(small)
    if dims and coords:
        for axis, dim in zip(("y", "x"), dims[-2:], strict=False):
            values = coords.get(dim)
            full = arr.shape[0 if axis == "y" else 1]
            if values is not None and len(values) == full:
                out[axis] = _jsonable(np.asarray(values)[::step])
    return out


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _dataarray_plot(path: Path, where: str, objtype: str, max_points: int) -> dict[str, Any]:
    import xarray as xr

    if objtype == "dataset":
        ds = xr.load_dataset(path, group=where, engine="h5netcdf")
        text = str(ds)
        ds.close()
        return {"kind": "text", "text": text[:100_000]}
    da = xr.load_dataarray(path, group=where, engine="h5netcdf")
    coords = {
        str(d): np.asarray(da.coords[d].values)
        for d in da.dims
        if d in da.coords and np.asarray(da.coords[d].values).dtype.kind in "biuf"
    }
    units = da.attrs.get("units")
    plot = array_plot(da.values, max_points, coords=coords, dims=tuple(str(d) for d in da.dims),
                      units=_text(units) if units is not None else None)  # fmt: skip
    da.close()
    return plot


def _object_plot(path: Path, f: h5py.File, where: str, max_points: int) -> dict[str, Any]:
    obj = f[where]
    objtype = _attr(obj, OBJTYPE)
    if objtype in ("dataarray", "dataset"):
        return _dataarray_plot(path, where, objtype, max_points)
    if isinstance(obj, h5py.Dataset):
        return array_plot(obj[()], max_points)
    if "data" not in obj:
        raise NotStored(where)
    value = obj["data"][()]
    if objtype == "PlotlyFigure":
        return {"kind": "plotly", "figure": bytes(np.asarray(value, dtype=np.uint8)).decode()}
    if objtype in ("series", "dataframe"):
        return {"kind": "text", "text": f"a pandas {objtype}: read it with the Python API"}
    if isinstance(value, bytes | str):
        return {"kind": "text", "text": _text(value)[:100_000]}
    return array_plot(value, max_points)


def plot_data(path: Path, name: str, max_points: int) -> dict[str, Any]:
    """What the value view plots for ``name``: its data, else its preview."""
    if not path.exists():
        raise NotStored(f"no run file {path.name}")
    with h5py.File(path, "r") as f:
        for where in (name, f"{PREVIEW}/{name}"):
            if where in f:
                try:
                    plot = _object_plot(path, f, where, max_points)
                except NotStored:
                    continue
                plot["source"] = "preview" if where.startswith(PREVIEW) else "data"
                return plot
    raise NotStored(f"{name}: no data in {path.name}")
