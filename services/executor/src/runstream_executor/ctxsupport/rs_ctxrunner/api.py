"""The names a context file uses: Variable, Cell, Skip (DAMNIT 0.4 semantics).

Heavy libraries (numpy, xarray, matplotlib) are only touched through
``sys.modules`` look-ups or imported lazily: workers preload them anyway, and
the service can import this module without them.
"""

from __future__ import annotations

import enum
import inspect
import sys
from collections.abc import Callable, Iterable
from typing import Any

ANNOTATION_KINDS = ("var", "meta", "mymdc", "param", "self")
META_FIELDS = frozenset({"run_number", "proposal", "proposal_path"})
MYMDC_FIELDS = frozenset({"sample_name", "run_type", "techniques"})


class RunData(enum.Enum):
    """Which run data a variable reads."""

    RAW = "raw"
    PROC = "proc"
    ALL = "all"


class Skip(Exception):
    """Raise inside a variable to mark it skipped; the message is kept as the reason."""


class DependencyError(Exception):
    """A variable could not run because dependencies without defaults are missing."""


class GroupError(Exception):
    """DAMNIT's error for misused groups (groups are not supported yet)."""


class _NotSupported:
    """Importable like DAMNIT's name, but using it is a clear load-time error."""

    feature = "this feature"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"{self.feature} is not supported by runstream yet")


class Group(_NotSupported):
    feature = "Group"


class Pipeline(_NotSupported):
    feature = "Pipeline"


class ContextFileErrors(RuntimeError):
    """Every problem found while checking a context file, reported together."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _instance_of(obj: Any, module: str, *names: str) -> bool:
    mod = sys.modules.get(module)
    if mod is None:
        return False
    for name in names:
        cls: Any = mod
        for part in name.split("."):
            cls = getattr(cls, part, None)
            if cls is None:
                break
        if isinstance(cls, type) and isinstance(obj, cls):
            return True
    return False


def is_figure(obj: Any) -> bool:
    return _instance_of(obj, "matplotlib.figure", "Figure")


def is_axes(obj: Any) -> bool:
    return _instance_of(obj, "matplotlib.axes", "Axes")


def is_dataarray(obj: Any) -> bool:
    return _instance_of(obj, "xarray", "DataArray")


def is_dataset(obj: Any) -> bool:
    return _instance_of(obj, "xarray", "Dataset")


def is_plotly_figure(obj: Any) -> bool:
    return _instance_of(obj, "plotly.graph_objects", "Figure")


def is_series(obj: Any) -> bool:
    return _instance_of(obj, "pandas", "Series")


def is_dataframe(obj: Any) -> bool:
    return _instance_of(obj, "pandas", "DataFrame")


class Variable:
    """Decorator declaring one variable: ``@Variable`` or ``@Variable(title=..., ...)``."""

    def __init__(
        self,
        title: Any = None,
        description: str | None = None,
        summary: str | None = None,
        data: str | RunData | None = None,
        cluster: bool = False,
        tags: str | Iterable[str] | None = None,
        transient: bool = False,
        units: str | None = None,
    ) -> None:
        func = None
        if callable(title) and not isinstance(title, str):
            func, title = title, None
        self.title: str | None = title
        self.description = description
        self.summary = summary
        # Unknown values raise ValueError here, at load time, like DAMNIT.
        self._data: RunData | None = None if data is None else RunData(data)
        self.cluster = bool(cluster)
        if tags is None:
            self.tags: tuple[str, ...] = ()
        elif isinstance(tags, str):
            self.tags = (tags,)
        else:
            self.tags = tuple(tags)
        self.transient = bool(transient)
        self.units = units
        self.func: Callable[..., Any] | None = None
        self.name: str | None = None
        if func is not None:
            self(func)

    def __call__(self, func: Callable[..., Any]) -> Variable:
        self.func = func
        self.name = func.__name__
        if self.title is None:
            self.title = self.name
        if self.description is None:
            self.description = inspect.getdoc(func)
        return self

    @property
    def data(self) -> RunData:
        return self._data or RunData.RAW

    @property
    def data_explicit(self) -> bool:
        return self._data is not None

    def annotations(self) -> dict[str, str]:
        """Parameter name -> string annotation (non-string annotations are ignored)."""
        if self.func is None:
            return {}
        out: dict[str, str] = {}
        for pname, param in inspect.signature(self.func).parameters.items():
            ann = param.annotation
            if isinstance(ann, str):
                out[pname] = ann
        return out

    def defaults(self) -> set[str]:
        """Parameters that have a default value."""
        if self.func is None:
            return set()
        return {
            pname
            for pname, param in inspect.signature(self.func).parameters.items()
            if param.default is not inspect.Parameter.empty
        }

    def arg_dependencies(self) -> dict[str, str]:
        """Parameter name -> ``var#`` target (a name or an fnmatch pattern)."""
        return {
            pname: ann.split("#", 1)[1]
            for pname, ann in self.annotations().items()
            if ann.startswith("var#")
        }

    def lineno(self) -> int | None:
        code = getattr(self.func, "__code__", None)
        return getattr(code, "co_firstlineno", None)

    def __repr__(self) -> str:
        return f"<Variable {self.name!r} title={self.title!r}>"


def _parse_background(value: Any) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lstrip("#")
        if len(text) != 6:
            raise ValueError(f"background must be '#rrggbb', got {value!r}")
        return (int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16))
    rgb = tuple(int(v) for v in value)
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(f"background must be 3 values in 0..255, got {value!r}")
    return (rgb[0], rgb[1], rgb[2])


def _as_storable_array(data: Any) -> Any:
    import numpy as np

    arr = np.asarray(data)
    if arr.dtype.hasobject:
        raise TypeError(f"Returned data type {type(arr)} cannot be saved")
    if arr.dtype.kind in "MmV" or (arr.dtype.kind == "U" and arr.ndim > 0):
        raise TypeError(
            f"Returned data type {type(arr)} whose native array type {arr.dtype} cannot be saved"
        )
    return arr


class Cell:
    """A result with display options. Non-Cell results are wrapped as ``Cell(value)``."""

    def __init__(
        self,
        data: Any,
        summary: str | None = None,
        summary_value: Any = None,
        bold: bool | None = None,
        background: Any = None,
        *,
        preview: Any = None,
        units: str | None = None,
    ) -> None:
        if is_axes(data):
            data = data.get_figure()
        if not (
            data is None
            or isinstance(data, str)
            or is_figure(data)
            or is_plotly_figure(data)
            or is_dataarray(data)
            or is_dataset(data)
            or is_series(data)
            or is_dataframe(data)
        ):
            data = _as_storable_array(data)
        if units is None and is_dataarray(data):
            attr_units = data.attrs.get("units")
            if isinstance(attr_units, str) and attr_units:
                units = attr_units
        if is_axes(preview):
            preview = preview.get_figure()
        if preview is not None and not (is_figure(preview) or is_plotly_figure(preview)):
            pdata = preview.values if is_dataarray(preview) else preview
            import numpy as np

            parr = np.asarray(pdata)
            if parr.ndim not in (1, 2) or parr.dtype.kind not in "biufc":
                raise TypeError(
                    "preview must be a 1D or 2D numeric array, a DataArray or a figure, "
                    f"got {type(preview).__name__} {getattr(parr, 'shape', '')}"
                )
        if summary_value is not None and not isinstance(summary_value, str):
            import numpy as np

            sv = np.asarray(summary_value)
            if sv.ndim != 0 or sv.dtype.kind not in "biufc":
                raise TypeError(
                    f"summary_value must be a number or a string, got {summary_value!r}"
                )
            summary_value = sv.item()
        self.data = data
        self.summary = summary
        self.summary_value = summary_value
        self.bold = None if bold is None else bool(bold)
        self.background = _parse_background(background)
        self.preview = preview
        self.units = units

    def __repr__(self) -> str:
        return f"Cell({type(self.data).__name__}, summary={self.summary!r})"


__all__ = [
    "ANNOTATION_KINDS",
    "META_FIELDS",
    "MYMDC_FIELDS",
    "Cell",
    "ContextFileErrors",
    "DependencyError",
    "Group",
    "GroupError",
    "Pipeline",
    "RunData",
    "Skip",
    "Variable",
]
