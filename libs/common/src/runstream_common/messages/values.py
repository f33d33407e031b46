"""The fields of a variable's value, defined once.

A value has the same attributes wherever it is: in the executor's result
(``VariableResult``), in the change feed (``ValueView``), in the store's database
row (``runstream_store.values.StoredValue``) and in what the store writes into the
run file (``runstream_store.adapters.hdf5_merge.MergeItem``). All four derive from
the models below, so a new attribute is added here once and the summary type is
the same enum everywhere. Each adds what only it has: the variable's name, the
summary itself (inline in messages and run files, typed columns in the database),
where the value came from.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict

SummaryType = Literal["thumbnail", "trendline", "complex", "numpy"]
"""How a summary that is not a plain scalar is encoded (DAMNIT's ``summary_type``)."""

_SUMMARY_TYPES: dict[str, SummaryType] = {t: t for t in get_args(SummaryType)}

InlineSummary = int | float | str | bool | tuple[float, float] | None
"""A JSON-able summary. Complex numbers are ``(re, im)`` with summary_type 'complex'."""

Rgb = tuple[int, int, int]


class ValueAttrs(BaseModel):
    """How a value is shown, or why it is missing: what every copy of a value carries.

    ``summary_type`` marks summaries that are not plain scalars; ``units``,
    ``max_diff``, ``bold`` and ``background`` (RGB) are the display attributes a
    variable sets; ``error`` and ``error_cls`` say why there is no value
    (``Skip`` for a skipped variable).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    summary_type: SummaryType | None = None
    units: str | None = None
    max_diff: float | None = None
    bold: bool | None = None
    background: Rgb | None = None
    error: str | None = None
    error_cls: str | None = None

    @classmethod
    def attrs_of(cls, value: ValueAttrs) -> dict[str, Any]:
        """The fields ``cls`` declares, as ``value`` has them: the keyword arguments that
        carry the same attributes into another copy of the value
        (``MergeItem(name=..., **ResultAttrs.attrs_of(result))``)."""
        return {name: getattr(value, name) for name in _field_names(cls)}


@cache
def _field_names(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(model.model_fields)


class ResultAttrs(ValueAttrs):
    """``ValueAttrs`` and how the summary was reduced (``summary_method``, e.g. ``mean``).

    The result message, the store's row and the run file keep the method; the change
    feed (``ValueView``) does not carry it.
    """

    summary_method: str | None = None


def summary_type_of(text: str | None) -> SummaryType | None:
    """A summary type read back from text (a database column, a DAMNIT file); None if unknown."""
    return None if text is None else _SUMMARY_TYPES.get(text)
