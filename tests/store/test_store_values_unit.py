"""Pure parts: value rows, user input parsing, proposal settings."""

from __future__ import annotations

import math
from typing import Any

import pytest
from runstream_common.errors import InvalidCommand
from runstream_common.messages import VariableResult
from runstream_store.proposal_settings import parse_setting
from runstream_store.user_input import check_user_variable_name, parse_user_value, sanitize_name
from runstream_store.values import StoredValue

pytestmark = pytest.mark.unit

COMMON: dict[str, Any] = {
    "provenance": "context.py",
    "context_hash": "h",
    "revision": 3,
    "result_id": "r",
}


@pytest.mark.parametrize(
    ("summary", "kind", "back"),
    [
        (True, "bool", True),
        (5, "int", 5),
        (2**70, "bigint", 2**70),
        (2.5, "float", 2.5),
        ("text", "str", "text"),
        ((1.0, -1.0), "complex", (1.0, -1.0)),
        (None, "none", None),
    ],
)
def test_inline_summaries_keep_their_type(summary: object, kind: str, back: object) -> None:
    value = StoredValue.from_result(VariableResult(name="x", summary=summary), **COMMON)
    assert value.kind == kind
    assert value.inline_summary == back
    assert type(value.inline_summary) is type(back)


def test_binary_summaries_errors_and_cleared_values() -> None:
    blob = StoredValue.from_result(
        VariableResult(name="x", summary_type="thumbnail", in_fragment=True), **COMMON
    )
    assert blob.kind == "blob"
    assert blob.python_value() == "<thumbnail>"
    err = StoredValue.from_result(VariableResult(name="x", error="bad", error_cls="Skip"), **COMMON)
    assert (err.kind, err.error, err.error_cls, err.view().error) == ("none", "bad", "Skip", "bad")
    gone = StoredValue.from_result(VariableResult(name="x", returned_none=True), **COMMON)
    assert gone.cleared
    assert gone.view().cleared
    assert gone.python_value() is None


def test_nan_is_stored_but_travels_as_null() -> None:
    value = StoredValue.from_summary(float("nan"))
    assert math.isnan(value.python_value())
    assert value.view().summary is None


def test_user_values_are_parsed_like_damnit() -> None:
    assert parse_user_value("boolean", "Yes") is True
    assert parse_user_value("boolean", "0") is False
    assert parse_user_value("integer", " 12 ") == 12
    assert parse_user_value("number", "1e3") == 1000.0
    assert parse_user_value("string", "  spaced ") == "  spaced "
    assert parse_user_value("integer", "") is None
    assert parse_user_value("string", None) is None
    with pytest.raises(InvalidCommand, match="not a valid boolean"):
        parse_user_value("boolean", "maybe")
    with pytest.raises(InvalidCommand, match="not a valid integer"):
        parse_user_value("integer", "1.5")
    with pytest.raises(InvalidCommand, match="not a valid number"):
        parse_user_value("number", "abc")


def test_user_variable_names() -> None:
    assert sanitize_name("!!My Cool Var!!#") == "my_cool_var"
    check_user_variable_name("sample_thickness")
    with pytest.raises(InvalidCommand):
        check_user_variable_name("1abc")
    with pytest.raises(InvalidCommand, match="reserved"):
        check_user_variable_name("comment")


def test_settings_are_validated() -> None:
    assert parse_setting("concurrent_jobs", "20") == 20
    assert parse_setting("slurm_time", "1-02:00:00") == "1-02:00:00"
    assert parse_setting("slurm_partition", "upex") == "upex"
    assert parse_setting("context_python", "/opt/env/bin/python") == "/opt/env/bin/python"
    with pytest.raises(InvalidCommand, match=r"unknown setting 'colour'.*concurrent_jobs"):
        parse_setting("colour", "red")
    with pytest.raises(InvalidCommand, match="whole number"):
        parse_setting("concurrent_jobs", "many")
    with pytest.raises(InvalidCommand, match="at least 1"):
        parse_setting("concurrent_jobs", "0")
    with pytest.raises(InvalidCommand, match="Slurm time"):
        parse_setting("slurm_time", "2 hours")
    with pytest.raises(InvalidCommand, match="absolute path"):
        parse_setting("context_python", "python3")


# ---------------------------------------------------------------- one set of value fields
def test_every_copy_of_a_value_has_the_shared_fields_with_the_enum() -> None:
    from pydantic import ValidationError
    from runstream_common.messages import ResultAttrs, ValueAttrs, ValueView
    from runstream_store.adapters.hdf5_merge import MergeItem

    shared = ValueAttrs.model_fields
    copies: list[type[ValueAttrs]] = [VariableResult, ValueView, StoredValue, MergeItem]
    for model in copies:
        assert {n: f.annotation for n, f in model.model_fields.items() if n in shared} == {
            n: f.annotation for n, f in shared.items()
        }, model
    for model in (VariableResult, StoredValue, MergeItem):
        assert "summary_method" in model.model_fields
    assert "summary_method" not in ValueView.model_fields  # the feed never carried it
    needed = {VariableResult: {"name": "x"}, StoredValue: {"kind": "none"}, MergeItem:
              {"name": "x", "action": "inline"}, ValueView: {}}  # fmt: skip
    for model, required in needed.items():
        assert model(**required, summary_type="trendline").summary_type == "trendline"
        with pytest.raises(ValidationError):
            model(**required, summary_type="sparkline")
    assert issubclass(StoredValue, ResultAttrs)
    assert issubclass(MergeItem, ResultAttrs)


def test_attributes_travel_from_result_to_row_to_feed_and_file() -> None:
    from runstream_store.handlers import merge_item

    result = VariableResult(
        name="e", summary=2.5, summary_type="trendline", summary_method="mean", units="mJ",
        max_diff=0.5, bold=True, background=(1, 2, 3),
    )  # fmt: skip
    stored = StoredValue.from_result(result, **COMMON)
    item = merge_item(result)
    view = stored.view()
    attrs = {"summary_type": "trendline", "units": "mJ", "max_diff": 0.5, "bold": True,
             "background": (1, 2, 3), "error": None, "error_cls": None}  # fmt: skip
    for copy in (stored, item, view):
        assert {n: getattr(copy, n) for n in attrs} == attrs
    assert stored.summary_method == item.summary_method == "mean"
    assert (item.name, item.action, item.summary) == ("e", "inline", 2.5)
    assert (view.summary, view.provenance, view.context_hash) == (2.5, "context.py", "h")


def test_a_summary_type_read_back_from_text_is_the_enum_or_none() -> None:
    from runstream_common.messages import summary_type_of

    assert summary_type_of("complex") == "complex"
    assert summary_type_of("sparkline") is None
    assert summary_type_of(None) is None
    row = dict(StoredValue(kind="blob").model_dump(), summary_type="png", background=[4, 5, 6])
    stored = StoredValue.from_record(row)
    assert stored.summary_type is None
    assert stored.background == (4, 5, 6)
