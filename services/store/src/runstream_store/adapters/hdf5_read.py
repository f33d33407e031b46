"""Reading data back from the per-run HDF5 files (blocking), the way DAMNIT's API does."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .hdf5_layout import ERRORS, PREVIEW, REDUCED

OBJTYPE = "_damnit_objtype"


class NoData(KeyError):
    """The run file has no data for this variable."""


def _strip_damnit_attrs(obj: Any) -> Any:
    for key in [k for k in obj.attrs if str(k).startswith("_damnit")]:
        del obj.attrs[key]
    for var in getattr(obj, "variables", {}).values():
        for key in [k for k in var.attrs if str(k).startswith("_damnit")]:
            del var.attrs[key]
    return obj


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.dtype.kind == "O" and value.ndim == 0:
        return _decode(value.item())
    return value


def _read_netcdf(path: Path, group: str, objtype: str | None) -> Any:
    import xarray as xr

    if objtype == "dataset":
        return _strip_damnit_attrs(xr.load_dataset(path, group=group, engine="h5netcdf"))
    return _strip_damnit_attrs(xr.load_dataarray(path, group=group, engine="h5netcdf"))


def _read_object(path: Path, f: h5py.File, where: str) -> Any:
    obj = f[where]
    objtype = obj.attrs.get(OBJTYPE)
    if isinstance(objtype, bytes):
        objtype = objtype.decode()
    if objtype in ("dataarray", "dataset"):
        return _read_netcdf(path, where, objtype)
    if isinstance(obj, h5py.Dataset):
        return _decode(obj[()])
    if "data" not in obj:
        raise NoData(where)
    value = obj["data"][()]
    if objtype == "PlotlyFigure":
        text = bytes(np.asarray(value, dtype=np.uint8)).decode()
        try:
            import plotly.io

            return plotly.io.from_json(text)
        except ImportError:
            return json.loads(text)
    if objtype in ("series", "dataframe"):
        import pandas as pd

        frame = pd.read_parquet(io.BytesIO(bytes(np.asarray(value, dtype=np.uint8))))
        return frame.iloc[:, 0] if objtype == "series" else frame
    return _decode(value)


def read_data(path: Path, name: str) -> Any:
    """The stored data of ``name``: ndarray / numpy scalar, str, xarray object or RGBA image."""
    if not path.exists():
        raise NoData(f"{name}: no run file {path}")
    with h5py.File(path, "r") as f:
        if name not in f:
            raise NoData(f"{name}: not in {path}")
        return _read_object(path, f, name)


def read_summary(path: Path, name: str) -> Any:
    """``.reduced/{name}``: a value, a (2, N) trendline, or a decoded thumbnail (RGBA array)."""
    if not path.exists():
        raise NoData(f"{name}: no run file {path}")
    with h5py.File(path, "r") as f:
        where = f"{REDUCED}/{name}"
        if where not in f:
            raise NoData(where)
        value = f[where][()]
    value = _decode(value)
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
        from PIL import Image

        with Image.open(io.BytesIO(value.tobytes())) as image:
            return np.asarray(image.convert("RGBA"))
    return value


def read_preview(path: Path, name: str) -> Any:
    if not path.exists():
        raise NoData(f"{name}: no run file {path}")
    with h5py.File(path, "r") as f:
        where = f"{PREVIEW}/{name}"
        if where not in f:
            raise NoData(where)
        return _read_object(path, f, where)


def read_error(path: Path, name: str) -> tuple[str, str] | None:
    """``(message, class)`` from ``.errors/{name}``, or None."""
    if not path.exists():
        return None
    with h5py.File(path, "r") as f:
        where = f"{ERRORS}/{name}"
        if where not in f:
            return None
        ds = f[where]
        cls = ds.attrs.get("type", "")
        return _decode(ds[()]), _decode(cls)


def stored_names(path: Path) -> list[str]:
    """Variables with data or a summary in the run file."""
    if not path.exists():
        return []
    with h5py.File(path, "r") as f:
        names = {n for n in f if not n.startswith(".")}
        if REDUCED in f:
            names.update(f[REDUCED])
    return sorted(names)
