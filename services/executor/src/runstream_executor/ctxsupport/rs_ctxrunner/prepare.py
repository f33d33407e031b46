"""Turn a variable's return value into what is stored (DAMNIT §1.6).

The output ("prepared" dict) holds only numpy arrays, Python scalars, strings,
bytes and xarray objects flattened with ``to_dict(data='array')``, so it can be
pickled to the service whatever xarray version the worker has.

Keys: kind (array|string|dataarray|dataset|image|plotly|series|dataframe), data
(plotly: the figure's JSON, series/dataframe: Parquet, both as uint8), summary, summary_type
(None|thumbnail|trendline|complex), summary_method, max_diff, bold, background,
units, preview (None or {kind, data}).
"""

from __future__ import annotations

import atexit
import io
import itertools
import logging
import struct
import zlib
from typing import Any

import numpy as np

from . import limits
from .api import (
    Cell,
    Variable,
    is_dataarray,
    is_dataframe,
    is_dataset,
    is_figure,
    is_plotly_figure,
    is_series,
)

log = logging.getLogger("rs_ctxrunner")

THUMBNAIL_SIZE = 300
TRENDLINE_POINTS = 150


def figure_rgba(fig: Any) -> np.ndarray:
    """RGBA uint8 H x W x 4 of a matplotlib figure (closed afterwards)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas
    if not hasattr(canvas, "buffer_rgba"):
        canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.array(canvas.buffer_rgba(), dtype=np.uint8)
    try:
        import matplotlib.pyplot as plt

        plt.close(fig)
    except Exception:  # pragma: no cover - figure not managed by pyplot
        pass
    return rgba


def image_thumbnail(rgba: np.ndarray) -> np.ndarray:
    """PNG of an RGBA image, largest side at most 300 px."""
    from PIL import Image

    img = Image.fromarray(rgba, mode="RGBA")
    img.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def rgba_png(rgba: np.ndarray, level: int = 1) -> bytes:
    """PNG bytes of an RGBA uint8 H x W x 4 image, rows unfiltered (filter type 0).

    For colour-mapped array thumbnails (a few hundred colours, pixels repeated by
    the nearest-neighbour resize) this is ~3x faster than PIL's adaptive row filters
    at the same zlib level, and the file is about half the size: deflate finds the
    repeated pixels that the filters turn into noise.
    """
    height, width, _ = rgba.shape
    rows = np.empty((height, width * 4 + 1), dtype=np.uint8)
    rows[:, 0] = 0
    rows[:, 1:] = rgba.reshape(height, width * 4)
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8 bits, RGBA
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), level)),
            _png_chunk(b"IEND", b""),
        )
    )


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def array_thumbnail(arr: np.ndarray) -> np.ndarray:
    """300 x 300 PNG of a 2-D array: NaN -> 0, colour limits at the 1 %/99 % quantiles.

    Only about as many pixels as the thumbnail shows are looked at (a strided
    subsample, taken first), so a large image costs no more than a small one.
    """
    from matplotlib import colormaps
    from PIL import Image

    data = np.asarray(arr)
    step_y = max(1, data.shape[0] // THUMBNAIL_SIZE)
    step_x = max(1, data.shape[1] // THUMBNAIL_SIZE)
    data = data[::step_y, ::step_x]
    if data.dtype.kind == "c":
        data = np.abs(data)
    data = np.nan_to_num(data.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = np.quantile(data, [0.01, 0.99]) if data.size else (0.0, 1.0)
    span = hi - lo if hi > lo else 1.0
    norm = np.clip((data - lo) / span, 0.0, 1.0)
    rgba = colormaps["viridis"](norm, bytes=True)  # uint8 straight from the colour table
    img = Image.fromarray(rgba, mode="RGBA").resize(
        (THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.NEAREST
    )
    return np.frombuffer(rgba_png(np.asarray(img)), dtype=np.uint8)


def trendline(values: np.ndarray) -> np.ndarray:
    """(2, N) float64 [x; y] keeping each bucket's extremes, N about 150 at most."""
    y = np.asarray(values)
    if y.dtype.kind == "c":
        y = np.abs(y)
    y = y.astype(np.float64).ravel()
    x = np.arange(y.size, dtype=np.float64)
    if y.size <= TRENDLINE_POINTS:
        return np.stack([x, y])
    n_buckets = TRENDLINE_POINTS // 2
    edges = np.linspace(0, y.size, n_buckets + 1).astype(int)
    if not np.isnan(y).any() and y.size % n_buckets == 0:
        # Fast path: equal buckets, one vectorised argmin/argmax.
        blocks = y.reshape(n_buckets, -1)
        offsets = np.arange(n_buckets) * blocks.shape[1]
        pairs = np.stack([blocks.argmin(axis=1), blocks.argmax(axis=1)], axis=1) + offsets[:, None]
        pairs.sort(axis=1)
        keep = list(dict.fromkeys(pairs.ravel().tolist()))
    else:
        keep = _bucket_extremes(y, edges)
    idx = np.asarray(keep, dtype=int)
    return np.stack([x[idx], y[idx]])


def _bucket_extremes(y: np.ndarray, edges: np.ndarray) -> list[int]:
    """Indices of each bucket's minimum and maximum (NaN-aware), in order."""
    keep: list[int] = []
    for start, stop in itertools.pairwise(edges):
        seg = y[start:stop]
        if not seg.size:
            continue
        if np.all(np.isnan(seg)):
            keep.append(int(start))
            continue
        i_min = int(start) + int(np.nanargmin(seg))
        i_max = int(start) + int(np.nanargmax(seg))
        keep.extend(sorted({i_min, i_max}))
    return keep


def max_diff(arr: Any) -> float | None:
    data = np.asarray(arr)
    if data.size <= 1:
        return None
    if data.dtype.kind == "b":
        return 1.0 if (data.any() and not data.all()) else 0.0
    if data.dtype.kind not in "iuf":
        return None
    with np.errstate(all="ignore"):
        if np.all(np.isnan(data)) if data.dtype.kind == "f" else False:
            return None
        return float(abs(np.nanmax(data) - np.nanmin(data)))


def _xr_payload(obj: Any) -> dict[str, Any]:
    if is_dataarray(obj):
        obj = obj.copy(deep=False)
        name = obj.name
        obj.name = "__xarray_dataarray_variable__" if name is None else str(name).replace("/", "_")
        flat: dict[str, Any] = obj.to_dict(data="array")
        return flat
    renamed = obj.rename({k: str(k).replace("/", "_") for k in obj.data_vars if "/" in str(k)})
    flat_ds: dict[str, Any] = renamed.to_dict(data="array")
    return flat_ds


def _scalar(arr: np.ndarray) -> tuple[Any, str | None]:
    value = arr.item() if isinstance(arr, np.ndarray) else arr
    if isinstance(value, complex):
        return value, "complex"
    if isinstance(value, bytes):
        return value.decode(errors="replace"), None
    return value, None


def _default_summary(source: Any) -> tuple[Any, str | None]:
    """Summary of ``source`` (the preview if given, else the data) by type."""
    if isinstance(source, str):
        return source, None
    if is_figure(source):
        try:
            return image_thumbnail(figure_rgba(source)), "thumbnail"
        except Exception:
            log.exception("thumbnail failed")
            return "<thumbnail error>", None
    if is_dataset(source):
        return f"Dataset ({source.nbytes / 1e6:.2f}MB)", None
    arr = source.values if is_dataarray(source) else np.asarray(source)
    if arr.ndim == 0:
        return _scalar(arr)
    if arr.ndim == 1:
        try:
            return trendline(arr), "trendline"
        except Exception:
            log.exception("trendline failed")
            return "<trendline error>", None
    if arr.ndim == 2:
        try:
            return array_thumbnail(arr), "thumbnail"
        except Exception:
            log.exception("thumbnail failed")
            return "<thumbnail error>", None
    return f"{arr.dtype}: {arr.shape}", None


def _reduce(method: str, data: Any, name: str) -> tuple[bool, Any]:
    func = getattr(np, method, None)
    if not callable(func):
        return False, None
    try:
        value = func(data)
    except Exception:
        log.error("Failed to produce summary data for %s", name, exc_info=True)
        return False, None
    if is_dataarray(value):
        value = value.values
    return True, value


def plotly_json(fig: Any) -> np.ndarray:
    """A plotly figure as DAMNIT stores it: its JSON text as uint8."""
    return np.frombuffer(fig.to_json().encode(), dtype=np.uint8).copy()


_KALEIDO: dict[str, Any] = {}


def plotly_png(fig: Any) -> bytes:
    """PNG bytes of a plotly figure through kaleido.

    kaleido (>= 1) drives a Chrome/Chromium (Debian's ``chromium`` package; set
    ``BROWSER_PATH`` for another). Starting the browser takes seconds, so the
    first figure starts kaleido's server and later figures of this process reuse
    it (~0.3 s each); the browser exits with the process.
    """
    import warnings

    try:
        import kaleido
    except ImportError:  # a foreign context_python without kaleido: plotly says why
        png: bytes = fig.to_image(format="png")
        return png
    with limits.worker_helpers():  # its browser is the worker's, kept between variables
        if "server" not in _KALEIDO:
            kaleido.start_sync_server(silence_warnings=True)
            _KALEIDO["server"] = True
            atexit.register(kaleido.stop_sync_server, silence_warnings=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "kopts is ignored if using a server"
            png = fig.to_image(format="png")
    return png


def plotly_summary(fig: Any) -> tuple[Any, str | None]:
    """A PNG thumbnail (largest side 300 px), or the text "Plotly figure" if none renders."""
    try:
        from PIL import Image

        rgba = np.asarray(Image.open(io.BytesIO(plotly_png(fig))).convert("RGBA"), dtype=np.uint8)
        return image_thumbnail(rgba), "thumbnail"
    except Exception as exc:
        if "warned" not in _KALEIDO:
            _KALEIDO["warned"] = True
            log.warning("no thumbnail for plotly figures: %s: %s", type(exc).__name__, exc)
        return "Plotly figure", None


def parquet_bytes(obj: Any) -> np.ndarray:
    """A pandas Series (as a one-column frame) or DataFrame as Parquet bytes, uint8."""
    frame = obj.to_frame(name="0" if obj.name is None else str(obj.name)) if is_series(obj) else obj
    if not all(isinstance(c, str) for c in frame.columns):
        frame = frame.rename(columns=str)
    buf = io.BytesIO()
    frame.to_parquet(buf)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8).copy()


def _pandas_summary(obj: Any) -> tuple[Any, str | None]:
    if is_dataframe(obj):
        return f"DataFrame ({obj.memory_usage(deep=True).sum() / 1e6:.2f}MB)", None
    values = obj.to_numpy()
    if values.dtype.kind in "biufc":
        return _default_summary(values)
    return f"Series ({len(obj)} values)", None


def prepare(var: Variable, value: Any) -> dict[str, Any]:
    """Storage form of a non-None, non-transient result. Raises on unsavable values."""
    cell = value if isinstance(value, Cell) else Cell(value)
    if cell.summary is None:
        cell.summary = var.summary
    if cell.units is None:
        cell.units = var.units
    out: dict[str, Any] = {
        "summary_method": cell.summary,
        "bold": cell.bold,
        "background": cell.background,
        "units": cell.units,
        "max_diff": None,
        "preview": None,
    }
    out.update(_data_part(cell.data))
    if cell.preview is not None:
        out["preview"] = _preview_part(cell.preview)
    summary, summary_type = _summary(cell, out, var.name or "?")
    if isinstance(summary, np.ndarray) and summary.ndim == 2 and summary.shape[0] == 2:
        summary_type = "trendline"
    if isinstance(summary, str):
        out["max_diff"] = None
    out["summary"] = summary
    out["summary_type"] = summary_type
    return out


def _data_part(data: Any) -> dict[str, Any]:
    """``kind`` and ``data`` (and ``max_diff`` of numbers) by the type of the value."""
    if isinstance(data, str):
        return {"kind": "string", "data": data}
    if is_plotly_figure(data):
        return {"kind": "plotly", "data": plotly_json(data)}
    if is_series(data):
        return {"kind": "series", "data": parquet_bytes(data)}
    if is_dataframe(data):
        return {"kind": "dataframe", "data": parquet_bytes(data)}
    if is_figure(data):
        return {"kind": "image", "data": figure_rgba(data)}
    if is_dataarray(data):
        return {"kind": "dataarray", "data": _xr_payload(data), "max_diff": max_diff(data.values)}
    if is_dataset(data):
        return {"kind": "dataset", "data": _xr_payload(data)}
    return {"kind": "array", "data": data, "max_diff": max_diff(data)}


def _preview_part(preview: Any) -> dict[str, Any]:
    if is_figure(preview):
        return {"kind": "image", "data": figure_rgba(preview)}
    if is_plotly_figure(preview):
        return {"kind": "plotly", "data": plotly_json(preview)}
    if is_dataarray(preview):
        return {"kind": "dataarray", "data": _xr_payload(preview)}
    return {"kind": "array", "data": np.asarray(preview)}


def _summary(cell: Cell, out: dict[str, Any], name: str) -> tuple[Any, str | None]:
    """The summary: given (``summary_value``), reduced (``summary``), else by type."""
    if cell.summary_value is not None:
        given = np.asarray(cell.summary_value)
        return _scalar(given) if given.ndim == 0 else (given, None)
    if cell.summary and out["kind"] in ("array", "dataarray", "series"):
        ok, reduced = _reduce(cell.summary, cell.data, name)
        if ok:
            arr = np.asarray(reduced)
            return _scalar(arr) if arr.ndim == 0 else _default_summary(arr)
    return _summary_by_type(cell, out)


def _summary_by_type(cell: Cell, out: dict[str, Any]) -> tuple[Any, str | None]:
    data, preview, kind = cell.data, cell.preview, out["kind"]
    if preview is None:
        if kind == "plotly":
            return plotly_summary(data)
        if kind in ("series", "dataframe"):
            return _pandas_summary(data)
        if kind == "image":
            return image_thumbnail(out["data"]), "thumbnail"
        return _default_summary(data)
    if out["preview"]["kind"] == "image":
        return image_thumbnail(out["preview"]["data"]), "thumbnail"
    if out["preview"]["kind"] == "plotly":
        return plotly_summary(preview)
    return _default_summary(preview)
