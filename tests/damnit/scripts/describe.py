"""A JSON description of any value DAMNIT's or runstream's API returns (both venvs use it).

Arrays are described by dtype, shape and sums (so equal data gives equal descriptions);
xarray objects add their dims, coordinates, name and attributes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _number(x: Any) -> Any:
    if isinstance(x, complex | np.complexfloating):
        return {"complex": [float(x.real), float(x.imag)]}
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        x = float(x)
        return x if math.isfinite(x) else {"float": str(x)}
    return x


def _array(a: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {"dtype": str(a.dtype), "shape": list(a.shape)}
    if a.dtype.kind in "biuf":
        out["sum"] = round(float(np.nansum(a.astype(float))), 6)
    elif a.dtype.kind == "c":
        s = np.nansum(a)
        out["sum"] = [round(float(s.real), 6), round(float(s.imag), 6)]
    return out


def describe(obj: Any) -> Any:
    if obj is None:
        return None
    cls = type(obj).__name__
    if cls == "DataArray":
        return {
            "type": "DataArray",
            "name": obj.name,
            "dims": list(obj.dims),
            "coords": sorted(str(c) for c in obj.coords),
            "attrs": {k: str(v) for k, v in sorted(obj.attrs.items())},
            **_array(np.asarray(obj.values)),
        }
    if cls == "Dataset":
        return {
            "type": "Dataset",
            "vars": {str(k): describe(v) for k, v in sorted(obj.data_vars.items())},
            "coords": sorted(str(c) for c in obj.coords),
        }
    if cls in ("Series", "DataFrame"):
        return {"type": cls, "shape": list(obj.shape)}
    if cls == "Figure":
        return {"type": "Figure"}
    if isinstance(obj, bytes):
        return {"type": "bytes", "png": obj.startswith(b"\x89PNG"), "len": len(obj)}
    if isinstance(obj, str):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.ndim == 0:
            return _number(obj.item())
        return {"type": "ndarray", **_array(obj)}
    return _number(obj)


def cell(value: Any) -> Any:
    """One table cell as JSON (pd.NA, None, NaN, complex, timestamps kept apart)."""
    try:
        import pandas as pd

        if value is pd.NA:
            return {"na": True}
        if isinstance(value, pd.Timestamp):
            return {"time": value.isoformat()}
    except ImportError:  # pragma: no cover
        pass
    return describe(value)
