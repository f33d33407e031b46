"""What the projection writes: PostgreSQL state in, DAMNIT ``runs.sqlite`` rows out (pure).

A value's row is the one DAMNIT's combiner would write for the same run file:
``value`` (int, float, str, PNG bytes, ``.npy`` bytes of trendlines and arrays, complex
as 16 bytes ``<dd``), ``max_diff``, ``summary_type`` (``complex``/``trendline``/
``numpy``; none for PNG thumbnails), ``summary_method`` ('' when none), ``attributes``
(JSON of units/bold/background, or of error/error_cls; NULL when empty) and
``provenance`` (``''`` for comments, ``manual-input`` for user variables).
"""

from __future__ import annotations

import io
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ..values import COMMENT, PROVENANCE_COMMENT, PROVENANCE_MANUAL, StoredValue

SETTING = "damnit_projection"
"""The proposal setting that switches the projection off (``false``) for one proposal."""

SEQ_KEY = "runstream_seq"
META_SEQ_KEY = "runstream_meta_seq"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True, slots=True)
class ProjectedValue:
    name: str
    value: StoredValue
    updated_at: float  # epoch seconds of the PostgreSQL write


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    proposal: int
    run: int
    start_time: float | None
    added_at: float
    seq: int
    values: tuple[ProjectedValue, ...] = ()


@dataclass(frozen=True, slots=True)
class VariableSnapshot:
    name: str
    title: str
    description: str | None
    user_type: str | None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MetaSnapshot:
    seq: int
    variables: tuple[VariableSnapshot, ...]
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Row:
    """One ``run_variables`` row (version is always 1)."""

    value: Any
    max_diff: float | None
    provenance: str | None
    summary_type: str | None
    summary_method: str | None
    attributes: str | None
    timestamp: float

    def same_content(self, other: tuple[Any, ...] | None) -> bool:
        """Whether ``other`` (value, max_diff, provenance, summary_type, summary_method,
        attributes) as read from SQLite holds what this row holds."""
        if other is None:
            return False
        return (
            _same(self.value, other[0])
            and _same(self.max_diff, other[1])
            and (self.provenance, self.summary_type, self.summary_method) == tuple(other[2:5])
            and _same_json(self.attributes, other[5])
        )


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, bool | int) and isinstance(b, bool | int):
        return int(a) == int(b)
    return type(a) is type(b) and bool(a == b)


def _same_json(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    try:
        return bool(json.loads(a) == json.loads(b))
    except ValueError:
        return a == b


def is_manual(value: StoredValue, name: str) -> bool:
    """Comments and user-variable values: rows DAMNIT's GUI writes itself too."""
    return name == COMMENT or value.provenance in (PROVENANCE_MANUAL, PROVENANCE_COMMENT)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def blob_value(reduced: Any) -> bytes | None:
    """SQLite bytes of a binary summary read from ``.reduced/{name}``."""
    if reduced is None:
        return None
    array = np.asarray(reduced)
    if array.dtype == np.uint8 and array.ndim == 1 and array[:8].tobytes() == PNG_MAGIC:
        return array.tobytes()
    if array.dtype.hasobject:
        return None
    return npy_bytes(array)


def _attributes(value: StoredValue) -> str | None:
    if value.error is not None:
        return orjson.dumps({"error": value.error, "error_cls": value.error_cls or ""}).decode()
    attrs: dict[str, Any] = {}
    if value.bold is not None:
        attrs["bold"] = value.bold
    if value.background is not None:
        attrs["background"] = list(value.background)
    if value.units is not None:
        attrs["units"] = value.units
    return orjson.dumps(attrs).decode() if attrs else None


def _provenance(value: StoredValue, name: str) -> str | None:
    if name == COMMENT or value.provenance == PROVENANCE_COMMENT:
        return ""
    return value.provenance


def damnit_row(pv: ProjectedValue, blob: bytes | None = None) -> Row:
    """The ``run_variables`` row DAMNIT would hold for this value."""
    v, name = pv.value, pv.name
    provenance = _provenance(v, name)
    if v.error is not None or v.cleared or v.kind == "none":
        return Row(None, None, provenance, None, None, _attributes(v), pv.updated_at)
    summary_type = v.summary_type
    value: Any
    if v.kind == "complex":
        value = struct.pack("<dd", v.value_float or 0.0, v.value_imag or 0.0)
        summary_type = "complex"
    elif v.kind == "blob":
        value = blob
        if value is not None and value.startswith(PNG_MAGIC):
            summary_type = None  # DAMNIT marks no type on PNG thumbnails
        elif summary_type not in ("trendline", "numpy"):
            summary_type = "numpy"
    elif v.kind == "bigint":
        value = v.value_text  # beyond SQLite's 64-bit integers
    elif v.kind == "bool":
        value = int(bool(v.value_bool))
    else:
        value = v.inline_summary
        if summary_type in ("thumbnail", "trendline", "numpy", "complex"):
            summary_type = None
    if value is None:
        return Row(None, None, provenance, None, None, None, pv.updated_at)
    return Row(
        value,
        v.max_diff,
        provenance,
        summary_type,
        v.summary_method or "",
        _attributes(v),
        pv.updated_at,
    )


def settings_metameta(settings: dict[str, Any]) -> dict[str, Any]:
    """The proposal settings DAMNIT keeps in ``metameta`` (runstream's own switch excluded)."""
    return {k: v for k, v in settings.items() if k != SETTING}


def projection_enabled(settings: dict[str, Any]) -> bool:
    value = settings.get(SETTING, True)
    return bool(value)
