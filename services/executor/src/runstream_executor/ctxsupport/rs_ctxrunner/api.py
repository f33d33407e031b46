"""The names a context file uses: Variable, Cell, Skip, Group, Pipeline (DAMNIT 0.4 semantics).

Heavy libraries (numpy, xarray, matplotlib) are only touched through
``sys.modules`` look-ups or imported lazily: workers preload them anyway, and
the service can import this module without them.
"""

from __future__ import annotations

import enum
import inspect
import re
import sys
from collections.abc import Callable, Iterable, Sequence
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


# Error classes that make a dependent a Skip rather than a DependencyError (EXtra-data's
# SourceNameError counts as Skip since DAMNIT 0.4.0).
SKIP_LIKE = frozenset({"Skip", "SourceNameError"})

# One missing dependency in a tree: (name, error class, message, its own missing dependencies).
DepEntry = tuple[str, str, str, tuple[Any, ...]]


def dependency_tree(entries: Iterable[DepEntry], indent: str = "") -> list[str]:
    """The lines under "Skipped due to missing dependency:" (DAMNIT's layout).

    A dependency that was itself skipped for missing dependencies (a
    ``DependencyError`` with children) is "(x) skipped" with its subtree indented by
    three characters; any other is "(x) failed: Class: message".
    """
    entries = list(entries)
    lines: list[str] = []
    for i, (name, cls, message, children) in enumerate(entries):
        last = i == len(entries) - 1
        branch, cont = ("└", "   ") if last else ("├", "│  ")
        if cls == "DependencyError" and children:
            lines.append(f"{indent}{branch} ({name}) skipped")
            lines.extend(dependency_tree(children, indent + cont))
        else:
            first, *rest = (f"{cls}: {message}" if message else cls).split("\n")
            lines.append(f"{indent}{branch} ({name}) failed: {first}")
            lines.extend(f"{indent}{cont}{line}" for line in rest)
    return lines


def dependency_message(entries: Iterable[DepEntry]) -> str:
    return "Skipped due to missing dependency:\n" + "\n".join(dependency_tree(entries))


class DependencyError(RuntimeError):
    """A variable could not run because dependencies without defaults are missing.

    ``dep_errors`` lists ``(dependency name, exception)``; the message is the tree.
    """

    def __init__(self, dep_errors: Iterable[tuple[str, BaseException]] = ()) -> None:
        self.dep_errors = list(dep_errors)
        super().__init__(dependency_message(_entry(n, e) for n, e in self.dep_errors))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.dep_errors,))


def _entry(name: str, exc: BaseException) -> DepEntry:
    children = tuple(_entry(n, e) for n, e in getattr(exc, "dep_errors", ()))
    return (name, type(exc).__name__, str(exc), children)


class GroupError(Exception):
    """A misused ``@Group``: no or duplicate names, reserved fields, bad ``self#`` links."""


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


GROUP_MARK = "__rs_group__"


def is_group_instance(obj: Any) -> bool:
    """Whether ``obj`` is an instance of a class decorated with ``@Group``."""
    return isinstance(getattr(type(obj), GROUP_MARK, None), dict)


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
        self.tags: tuple[str, ...] = normalize_tags(tags)
        self.transient = bool(transient)
        self.units = units
        self.func: Callable[..., Any] | None = None
        self.name: str | None = None
        # A group variable's annotations with ``self#`` resolved to ``var#`` (see groups).
        self._annotation_overrides: dict[str, str] | None = None
        self._placeholder = False
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

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        # On a group instance, a variable is a link to that instance's copy of it.
        if instance is not None and is_group_instance(instance):
            return BoundVariable(instance, self)
        return self

    @property
    def data(self) -> RunData:
        return self._data or RunData.RAW

    @property
    def data_explicit(self) -> bool:
        return self._data is not None

    def annotations(self) -> dict[str, str]:
        """Parameter name -> string annotation (non-string annotations are ignored)."""
        if self._annotation_overrides is not None:
            return dict(self._annotation_overrides)
        if self.func is None:
            return {}
        return string_annotations(self.func)

    def defaults(self) -> set[str]:
        """Parameters that have a default value."""
        if self.func is None:
            return set()
        return {
            pname
            for pname, param in inspect.signature(self.func).parameters.items()
            if param.default is not inspect.Parameter.empty
        }

    def arg_dependencies(self, prefix: str = "var#") -> dict[str, str]:
        """Parameter name -> target of ``prefix`` annotations (``var#``: a name or a pattern)."""
        return {
            pname: ann[len(prefix) :]
            for pname, ann in self.annotations().items()
            if ann.startswith(prefix)
        }

    def lineno(self) -> int | None:
        if self._placeholder:
            return None
        code = getattr(self.func, "__code__", None)
        return getattr(code, "co_firstlineno", None)

    def __repr__(self) -> str:
        return f"<Variable {self.name!r} title={self.title!r}>"


def string_annotations(func: Callable[..., Any]) -> dict[str, str]:
    """Parameter name -> string annotation of ``func`` (others are ignored).

    Under ``from __future__ import annotations`` an annotation written as
    ``"var#x"`` arrives as ``"'var#x'"``: the quotes are taken off.
    """
    out: dict[str, str] = {}
    for pname, param in inspect.signature(func).parameters.items():
        ann = param.annotation
        if isinstance(ann, str):
            if len(ann) >= 2 and ann[0] == ann[-1] and ann[0] in "'\"" and "#" in ann:
                ann = ann[1:-1]
            out[pname] = ann
    return out


def normalize_tags(tags: str | Iterable[str] | None) -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, str):
        return (tags,)
    return tuple(tags)


class BoundVariable:
    """A group's variable seen through one group instance (``group.var``).

    Its name is resolved lazily (``{group.name}.{var}``), because a group's name may
    come from the assignment in the context file, known only after it ran. It is
    not a ``Variable``, so a module-level alias of it is not collected twice.
    Everything else is the class-level variable's.
    """

    def __init__(self, group: Any, var: Variable) -> None:
        self.group = group
        self.var = var

    @property
    def name(self) -> str:
        return f"{self.group.name}.{self.var.name}"

    def __getattr__(self, attr: str) -> Any:
        if attr in ("group", "var"):  # not set yet (copy, unpickling)
            raise AttributeError(attr)
        return getattr(self.var, attr)

    def __repr__(self) -> str:
        return f"<BoundVariable {self.var.name!r} of {type(self.group).__name__}>"


_HEX_COLOUR = re.compile(r"#[0-9A-Fa-f]{6}")


def _parse_background(value: Any) -> tuple[int, int, int] | None:
    """``'#rrggbb'`` or an (R, G, B) sequence of 0-255, with DAMNIT's messages."""
    if value is None:
        return None
    if isinstance(value, str):
        if not _HEX_COLOUR.match(value):
            raise ValueError("Colour string should be hex code (like '#ffcc00')")
        rgb = bytes.fromhex(value[1:7])
        return (rgb[0], rgb[1], rgb[2])
    if isinstance(value, Sequence) or _is_ndarray(value):
        if len(value) != 3:
            raise TypeError(f"Wrong number of values ({len(value)}) for R,G,B")
        if not all(0 <= v <= 255 for v in value):
            raise ValueError("Colour values must be 0 - 255")
        return (int(value[0]), int(value[1]), int(value[2]))
    raise TypeError(f"Don't understand colour as {type(value)}")


def _is_ndarray(obj: Any) -> bool:
    return _instance_of(obj, "numpy", "ndarray")


def _h5_storable(dtype: Any) -> bool:
    """Whether h5py can store arrays of ``dtype`` (numbers always can)."""
    import numpy as np

    if np.issubdtype(dtype, np.number):
        return True
    try:
        import h5py
    except ImportError:  # pragma: no cover - workers have h5py
        return dtype.kind in "biufcS"
    try:
        h5py.h5t.py_create(dtype, logical=True)
    except TypeError:
        return False
    return True


def _storable_array(value: Any, what: str, object_message: str) -> Any:
    """``np.asarray(value)`` if HDF5 can store it, else DAMNIT's TypeError.

    ``object_message`` for Python objects; ``"{what} <class 'numpy.ndarray'> whose
    native array type {dtype} cannot be saved"`` for dtypes h5py cannot map.
    """
    import numpy as np

    arr = np.asarray(value)
    if arr.dtype.hasobject:
        raise TypeError(object_message)
    if not _h5_storable(arr.dtype):
        raise TypeError(f"{what} {type(arr)} whose native array type {arr.dtype} cannot be saved")
    return arr


def _as_storable_array(data: Any) -> Any:
    return _storable_array(
        data, "Returned data type", "Returned data type <class 'numpy.ndarray'> cannot be saved"
    )


def _check_summary_value(value: Any) -> Any:
    message = f"summary_value should be number or string, not {type(value)}"
    arr = _storable_array(value, "Summary value", message)
    return arr.item() if arr.ndim == 0 else arr


def _check_preview(preview: Any) -> Any:
    """A 1-D/2-D numeric array, a DataArray or a figure (an Axes becomes its figure)."""
    if _is_ndarray(preview) or is_dataarray(preview):
        import numpy as np

        if preview.ndim not in (1, 2):
            raise TypeError(f"preview should be a 1D or 2D array (shape is {preview.shape})")
        if not (np.issubdtype(preview.dtype, np.number) or preview.dtype == bool):
            raise TypeError("preview array should be numeric")
        return preview
    if is_axes(preview):
        return preview.get_figure()
    if is_figure(preview) or is_plotly_figure(preview):
        return preview
    raise TypeError(f"preview must be an array or a figure object (got {type(preview)})")


class Cell:
    """A result with display options. Non-Cell results are wrapped as ``Cell(value)``.

    Invalid arguments raise DAMNIT's exceptions and messages (users grep for them).
    """

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
        if summary_value is not None and not isinstance(summary_value, str):
            summary_value = _check_summary_value(summary_value)
        if preview is not None:
            preview = _check_preview(preview)
        if units is None and is_dataarray(data):
            attr_units = data.attrs.get("units")
            if isinstance(attr_units, str) and attr_units:
                units = attr_units
        if not (units is None or isinstance(units, str)):
            raise TypeError(f"units should be a string, not {type(units)}")
        self.data = data
        self.summary = summary
        self.summary_value = summary_value
        self.bold = None if bold is None else bool(bold)
        self.background = _parse_background(background)
        self.preview = preview
        self.units = units

    def __repr__(self) -> str:
        return f"Cell({type(self.data).__name__}, summary={self.summary!r})"


# Defined in their own modules, which build on the names above.
from .groups import Group  # noqa: E402
from .pipeline import Pipeline  # noqa: E402

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
