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
