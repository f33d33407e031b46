"""Writes executor-style fragments in DAMNIT's layout, for the store's tests.

Each method adds one variable the way DAMNIT 0.4's ``Results.save`` lays it out
(damnit.md 1.6 / 4.1) and records the ``VariableResult`` the executor would send
and the data a reader should get back.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xarray as xr
from PIL import Image
from runstream_common.messages import ResultsReady, SummaryType, Trigger, VariableResult
from runstream_store.adapters.hdf5_layout import RUN_FILE_SPACE


def png_thumbnail(array: np.ndarray) -> np.ndarray:
    """A PNG of a 2-D array (or RGBA image), as the uint8 buffer DAMNIT stores in .reduced."""
    if array.ndim == 3:
        image = Image.fromarray(np.asarray(array, dtype=np.uint8), "RGBA")
    else:
        a = np.nan_to_num(np.asarray(array, dtype=np.float64))
        lo, hi = np.quantile(a, 0.01), np.quantile(a, 0.99)
        scaled = np.clip((a - lo) / ((hi - lo) or 1.0), 0, 1)
        image = Image.fromarray((scaled * 255).astype(np.uint8), "L").convert("RGBA")
    image.thumbnail((300, 300))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def trendline(array: np.ndarray) -> np.ndarray:
    """A (2, N) float64 [x; y] summary of a 1-D array (every k-th point)."""
    y = np.asarray(array, dtype=np.float64)
    step = max(1, len(y) // 150)
    x = np.arange(len(y))[::step].astype(np.float64)
    return np.stack([x, y[::step]])


@dataclass
class Fragment:
    """One fragment under construction; ``write()`` puts it on disk."""

    context_dir: Path
    proposal: int
    run: int
    results: list[VariableResult] = field(default_factory=list)
    expected: dict[str, Any] = field(default_factory=dict)
    expected_summary: dict[str, Any] = field(default_factory=dict)
    _plain: list[tuple[str, Any, dict[str, Any]]] = field(default_factory=list)
    _reduced: list[tuple[str, Any, dict[str, Any]]] = field(default_factory=list)
    _xarray: list[tuple[str, Any, str]] = field(default_factory=list)
    _errors: list[tuple[str, str, str]] = field(default_factory=list)
    path: Path | None = None
    # the executor's file settings (persistent free-space tracking, as the store's run files):
    # the store can adopt such a fragment as a new run's file; False: an older executor's
    file_space: bool = True

    # -------------------------------------------------------------- variables
    def scalar(
        self, name: str, value: Any, *, units: str | None = None, in_fragment: bool = True
    ) -> None:
        if isinstance(value, complex):
            summary: Any = (value.real, value.imag)
            summary_type: SummaryType | None = "complex"
        else:
            summary, summary_type = value, None
        if in_fragment:
            self._plain.append((name, value, {}))
            self._reduced.append((name, value, {"units": units} if units else {}))
        self.results.append(
            VariableResult(
                name=name,
                summary=summary,
                summary_type=summary_type,
                units=units,
                in_fragment=in_fragment,
            )
        )
        self.expected[name] = value
        self.expected_summary[name] = value

    def array(self, name: str, data: np.ndarray, *, units: str | None = None) -> None:
        data = np.asarray(data)
        self._plain.append((name, data, {}))
        self._add_array_summary(name, data, units)
        self.expected[name] = data

    def dataarray(self, name: str, da: xr.DataArray) -> None:
        self._xarray.append((name, da, "dataarray"))
        self._add_array_summary(name, np.asarray(da.values), da.attrs.get("units"))
        self.expected[name] = da

    def dataset(self, name: str, ds: xr.Dataset) -> None:
        self._xarray.append((name, ds, "dataset"))
        text = f"Dataset ({ds.nbytes / 1e6:.2f}MB)"
        self._reduced.append((name, text, {}))
        self.results.append(VariableResult(name=name, summary=text, in_fragment=True))
        self.expected[name] = ds
        self.expected_summary[name] = text

    def image(self, name: str, rgba: np.ndarray) -> None:
        rgba = np.asarray(rgba, dtype=np.uint8)
        self._plain.append((name, rgba, {"_damnit_objtype": "image"}))
        thumb = png_thumbnail(rgba)
        self._reduced.append((name, thumb, {}))
        self.results.append(
            VariableResult(name=name, summary=None, summary_type="thumbnail", in_fragment=True)
        )
        self.expected[name] = rgba

    def error(self, name: str, message: str, error_cls: str) -> None:
        self._errors.append((name, message, error_cls))
        self.results.append(VariableResult(name=name, error=message, error_cls=error_cls))

    def none(self, name: str) -> None:
        self.results.append(VariableResult(name=name, returned_none=True))

    def _add_array_summary(self, name: str, data: np.ndarray, units: str | None) -> None:
        attrs: dict[str, Any] = {"units": units} if units else {}
        max_diff = None
        if data.size > 1 and data.dtype.kind == "b":
            max_diff = float(data.any() and not data.all())
            attrs["max_diff"] = max_diff
        elif data.size > 1 and data.dtype.kind in "iuf":
            max_diff = float(abs(np.nanmax(data) - np.nanmin(data)))
            attrs["max_diff"] = max_diff
        if data.ndim == 1:
            summary = trendline(data)
            attrs["summary_type"] = "trendline"
            self._reduced.append((name, summary, attrs))
            self.results.append(
                VariableResult(
                    name=name, summary_type="trendline", units=units, max_diff=max_diff,
                    in_fragment=True,
                )
            )  # fmt: skip
            self.expected_summary[name] = summary
        elif data.ndim == 2:
            self._reduced.append((name, png_thumbnail(data), attrs))
            self.results.append(
                VariableResult(
                    name=name, summary_type="thumbnail", units=units, max_diff=max_diff,
                    in_fragment=True,
                )
            )  # fmt: skip
        else:
            text = f"{data.dtype}: {data.shape}"
            self._reduced.append((name, text, attrs))
            self.results.append(
                VariableResult(
                    name=name, summary=text, units=units, max_diff=max_diff, in_fragment=True
                )
            )
            self.expected_summary[name] = text

    # -------------------------------------------------------------- output
    def write(self) -> Path:
        folder = self.context_dir / "extracted_data" / "fragments"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"p{self.proposal}_r{self.run}.{uuid.uuid4().hex[:8]}.h5"
        with h5py.File(path, "w", **(RUN_FILE_SPACE if self.file_space else {})) as f:
            f.attrs["provenance"] = "context.py"
            for name, value, attrs in self._plain:
                if isinstance(value, str):
                    ds = f.create_dataset(f"{name}/data", data=value, dtype=h5py.string_dtype())
                else:
                    ds = f.create_dataset(f"{name}/data", data=value)
                for k, v in attrs.items():
                    f[name].attrs[k] = v
            for name, value, attrs in self._reduced:
                if isinstance(value, str):
                    ds = f.create_dataset(f".reduced/{name}", data=value, dtype=h5py.string_dtype())
                else:
                    ds = f.create_dataset(f".reduced/{name}", data=value)
                for k, v in attrs.items():
                    ds.attrs[k] = v
            for name, message, error_cls in self._errors:
                ds = f.create_dataset(f".errors/{name}", data=message, dtype=h5py.string_dtype())
                ds.attrs["type"] = error_cls
        for name, obj, _ in self._xarray:
            encoding = {
                str(v): {"zlib": True, "complevel": 1, "shuffle": True}
                for v in (obj.data_vars if isinstance(obj, xr.Dataset) else [obj.name or "__xarray_dataarray_variable__"])
            }  # fmt: skip
            obj.to_netcdf(path, group=name, engine="h5netcdf", mode="a", encoding=encoding)
        with h5py.File(path, "r+") as f:
            for name, _, objtype in self._xarray:
                f[name].attrs["_damnit_objtype"] = objtype
        self.path = path
        return path

    def message(
        self,
        *,
        revision: int = 1,
        result_id: str | None = None,
        context_hash: str = "hash-1",
        start_time: float | None = 1_700_000_000.0,
        with_fragment: bool = True,
    ) -> ResultsReady:
        if with_fragment and self.path is None:
            self.write()
        return ResultsReady(
            result_id=result_id or uuid.uuid4().hex,
            request_id="req-1",
            processing_id="proc-1",
            proposal=self.proposal,
            run=self.run,
            trigger=Trigger.RAW,
            context_hash=context_hash,
            revision=revision,
            context_dir=str(self.context_dir),
            fragment=str(self.path) if with_fragment and self.path else None,
            start_time=start_time,
            results=tuple(self.results),
        )


def every_type(context_dir: Path, proposal: int, run: int) -> Fragment:
    """A fragment holding every return type the executor can produce."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frag = Fragment(context_dir, proposal, run)
    frag.scalar("an_int", 42, units="counts")
    frag.scalar("a_float", 3.25)
    frag.scalar("a_bool", True)
    frag.scalar("a_complex", complex(1.5, -2.0))
    frag.scalar("a_string", "hello runstream")
    frag.scalar("inline_only", 7.5, in_fragment=False)
    frag.array("line", np.sin(np.linspace(0, 10, 2000)), units="mJ")
    frag.array("image2d", np.arange(64 * 48, dtype=np.float32).reshape(64, 48))
    frag.array("cube", np.random.default_rng(1).random((2, 3, 4, 5)))
    frag.array("bools", np.array([True, False, True]))
    da = xr.DataArray(
        np.random.default_rng(2).random((4, 5)),
        dims=("trainId", "pulse"),
        coords={
            "trainId": np.arange(1000, 1004),
            "pulse": np.arange(5),
            "energy": ("trainId", np.array([9.1, 9.2, 9.3, 9.4])),
        },
        name="xgm",
        attrs={"units": "uJ", "source": "SA2_XTD1_XGM/XGM/DOOCS"},
    )
    frag.dataarray("xgm", da)
    frag.dataarray(
        "unnamed", xr.DataArray(np.arange(6.0), dims=("x",), coords={"x": np.arange(6) * 2})
    )
    ds = xr.Dataset(
        {
            "a": (("x",), np.arange(3)),
            "b": (("y", "x"), np.ones((2, 3))),
            "c": ((), complex(1, 2)),
        },
        coords={"x": [10, 20, 30], "y": ["u", "v"]},
        attrs={"note": "a dataset"},
    )
    frag.dataset("ds", ds)
    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.plot([0, 1, 2], [1, 0, 1])
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba()).copy()  # type: ignore[attr-defined]
    plt.close(fig)
    frag.image("figure", rgba)
    frag.error("broken", "division by zero", "ZeroDivisionError")
    frag.none("nothing")
    return frag
