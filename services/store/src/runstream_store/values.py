"""One stored value: how a result, a user input or a comment maps to database columns.

The summary of a value sits in one typed column chosen by ``kind`` (see the
``run_values`` table), so the table query needs no JSON decoding and keeps
NaN, big integers and complex numbers exact.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from runstream_common.messages import (
    InlineSummary,
    ResultAttrs,
    ValueAttrs,
    ValueView,
    VariableResult,
    summary_type_of,
)

from .names import COMMENT as COMMENT
from .names import PLACEHOLDERS

Kind = Literal["int", "bigint", "float", "bool", "str", "complex", "blob", "none"]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

PROVENANCE_MANUAL = "manual-input"
PROVENANCE_COMMENT = "comment"


class StoredValue(ResultAttrs):
    """The columns of one ``run_values`` / ``run_value_history`` row (without its keys).

    The value's attributes (summary type, units, ..., error) are the shared
    ``ResultAttrs`` of ``runstream_common``; the summary itself is one typed column
    chosen by ``kind``.
    """

    kind: Kind
    value_int: int | None = None
    value_float: float | None = None
    value_imag: float | None = None
    value_bool: bool | None = None
    value_text: str | None = None
    cleared: bool = False
    provenance: str | None = None
    context_hash: str | None = None
    revision: int = 0
    result_id: str | None = None

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_summary(cls, summary: InlineSummary, **fields: Any) -> StoredValue:
        """A value whose summary is ``summary`` (a JSON-able inline summary)."""
        if summary is None:
            return cls(kind="none", **fields)
        if isinstance(summary, bool):
            return cls(kind="bool", value_bool=summary, **fields)
        if isinstance(summary, int):
            if _INT64_MIN <= summary <= _INT64_MAX:
                return cls(kind="int", value_int=summary, **fields)
            return cls(kind="bigint", value_text=str(summary), **fields)
        if isinstance(summary, float):
            return cls(kind="float", value_float=summary, **fields)
        if isinstance(summary, str):
            return cls(kind="str", value_text=summary, **fields)
        if isinstance(summary, tuple):
            re_, im = summary
            fields.setdefault("summary_type", "complex")
            return cls(kind="complex", value_float=float(re_), value_imag=float(im), **fields)
        raise TypeError(f"unsupported summary {summary!r}")

    @classmethod
    def from_result(
        cls,
        result: VariableResult,
        *,
        provenance: str,
        context_hash: str,
        revision: int,
        result_id: str,
    ) -> StoredValue:
        """The row for one variable result of the executor."""
        common: dict[str, Any] = {
            "provenance": provenance,
            "context_hash": context_hash,
            "revision": revision,
            "result_id": result_id,
        }
        if result.is_error:
            return cls(kind="none", error=result.error, error_cls=result.error_cls, **common)
        if result.returned_none:
            return cls(kind="none", cleared=True, **common)
        attrs = ResultAttrs.attrs_of(result)  # error and error_cls are None here
        if result.summary is None and result.summary_type in PLACEHOLDERS:
            return cls(kind="blob", **attrs, **common)
        return cls.from_summary(result.summary, **attrs, **common)

    def as_error(self, error: str, error_cls: str) -> StoredValue:
        """The same provenance, but an error instead of the value."""
        return StoredValue(
            kind="none",
            error=error,
            error_cls=error_cls,
            provenance=self.provenance,
            context_hash=self.context_hash,
            revision=self.revision,
            result_id=self.result_id,
        )

    # ------------------------------------------------------------------ readers
    @classmethod
    def from_record(cls, record: Any) -> StoredValue:
        """Back from a database row (asyncpg Record or mapping)."""
        return cls(
            kind=record["kind"],
            value_int=record["value_int"],
            value_float=record["value_float"],
            value_imag=record["value_imag"],
            value_bool=record["value_bool"],
            value_text=record["value_text"],
            summary_type=summary_type_of(record["summary_type"]),
            summary_method=record["summary_method"],
            units=record["units"],
            max_diff=record["max_diff"],
            bold=record["bold"],
            background=record["background"],
            error=record["error"],
            error_cls=record["error_cls"],
            cleared=record["cleared"],
            provenance=record["provenance"],
            context_hash=record["context_hash"],
            revision=record["revision"],
            result_id=record["result_id"],
        )

    @property
    def inline_summary(self) -> InlineSummary:
        """The summary as it travels in messages (complex as ``(re, im)``)."""
        return inline_summary(
            self.kind, self.value_int, self.value_float, self.value_imag, self.value_bool,
            self.value_text,
        )  # fmt: skip

    def python_value(self) -> Any:
        """The summary as a table cell: complex decoded, binary summaries as placeholders."""
        return python_value(
            self.kind, self.value_int, self.value_float, self.value_imag, self.value_bool,
            self.value_text, self.summary_type,
        )  # fmt: skip

    def view(self) -> ValueView:
        """What the change feed says about this value."""
        summary = self.inline_summary
        if isinstance(summary, float) and not math.isfinite(summary):
            summary = None  # JSON has no NaN/inf; the GUI shows an empty cell
        if isinstance(summary, tuple) and not all(math.isfinite(x) for x in summary):
            summary = None
        return ValueView(
            summary=summary,
            **ValueAttrs.attrs_of(self),
            cleared=self.cleared,
            provenance=self.provenance,
            context_hash=self.context_hash,
        )

    def with_summary(self, summary: float | complex) -> StoredValue:
        """The same value with a scalar summary found in the run file (NaN, inf, complex)."""
        blank: dict[str, Any] = {
            "value_int": None, "value_float": None, "value_imag": None, "value_bool": None,
            "value_text": None,
        }  # fmt: skip
        if isinstance(summary, complex):
            return self.model_copy(update={
                **blank, "kind": "complex", "value_float": summary.real,
                "value_imag": summary.imag, "summary_type": "complex",
            })  # fmt: skip
        return self.model_copy(update={**blank, "kind": "float", "value_float": summary})


def inline_summary(
    kind: str,
    value_int: int | None,
    value_float: float | None,
    value_imag: float | None,
    value_bool: bool | None,
    value_text: str | None,
) -> InlineSummary:
    if kind == "int":
        return value_int
    if kind == "bigint":
        return int(value_text) if value_text is not None else None
    if kind == "float":
        return value_float
    if kind == "bool":
        return value_bool
    if kind == "str":
        return value_text
    if kind == "complex":
        return (value_float or 0.0, value_imag or 0.0)
    return None


def python_value(
    kind: str,
    value_int: int | None,
    value_float: float | None,
    value_imag: float | None,
    value_bool: bool | None,
    value_text: str | None,
    summary_type: str | None,
) -> Any:
    if kind == "complex":
        return complex(value_float or 0.0, value_imag or 0.0)
    if kind == "blob":
        return PLACEHOLDERS.get(summary_type or "", "<blob>")
    return inline_summary(kind, value_int, value_float, value_imag, value_bool, value_text)
