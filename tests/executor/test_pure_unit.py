"""Pure pieces: dependency decisions, result ids, inline summaries, message size bound."""

from __future__ import annotations

import json

import numpy as np
import pytest
from runstream_common.messages import VariableResult
from runstream_executor.context import VarDef
from runstream_executor.outcome import Outcome, plan_inputs
from runstream_executor.results import (
    fit_message,
    inline_summary,
    needs_fragment,
    result_id,
    variable_result,
)

pytestmark = pytest.mark.unit


def var(name: str, *args: tuple[str, list[str], bool, bool]) -> VarDef:
    return VarDef(
        name=name,
        title=name,
        description=None,
        units=None,
        tags=(),
        data="raw",
        cluster=False,
        transient=False,
        summary=None,
        line=None,
        args=tuple(
            {
                "param": p,
                "annotation": "var#" + ("x*" if glob else m[0]),
                "matches": m,
                "has_default": default,
                "glob": glob,
            }
            for p, m, default, glob in args
        ),
        deps=tuple(d for _, m, _, _ in args for d in m),
    )


def test_plan_inputs_values_defaults_and_skips() -> None:
    outcomes = {
        "a": Outcome("a", "ok", value=b"A"),
        "b": Outcome("b", "error", "boom", "ValueError"),
        "c": Outcome("c", "none"),
        "p": Outcome("p", "ok", pinned_to="worker-1"),
    }
    inputs, holders = plan_inputs(
        var("v", ("x", ["a"], False, False), ("y", ["b"], True, False), ("z", ["p"], False, False)),
        outcomes,
    )  # type: ignore[misc]
    assert inputs == {"x": ("value", b"A"), "z": ("pinned", "p")}  # y: the default is used
    assert holders == {"worker-1"}
    glob_inputs, _ = plan_inputs(var("g", ("d", ["a", "b", "c"], False, True)), outcomes)  # type: ignore[misc]
    assert glob_inputs == {"d": ("glob", {"a": ("value", b"A")})}
    skipped = plan_inputs(
        var("s", ("x", ["b"], False, False), ("y", ["c"], False, False)), outcomes
    )
    assert isinstance(skipped, Outcome)
    assert (skipped.error, skipped.error_cls) == (
        "Skipped due to missing dependency:\n└ (b) failed: ValueError: boom",
        "DependencyError",
    )
    none_only = plan_inputs(var("n", ("y", ["c"], False, False)), outcomes)
    assert isinstance(none_only, Outcome)
    assert (none_only.error, none_only.error_cls) == (
        "Dependencies returned no data:\n- 'c'",
        "Skip",
    )
    source_missing = {"s": Outcome("s", "error", "no source", "SourceNameError")}
    as_skip = plan_inputs(var("t", ("x", ["s"], False, False)), source_missing)
    assert isinstance(as_skip, Outcome)
    assert as_skip.error_cls == "Skip"


def test_result_id_is_stable_and_distinguishes_inputs() -> None:
    first = result_id("req", "hash", ["b", "a"], "raw")
    assert first == result_id("req", "hash", ["a", "b"], "raw")
    assert (
        len(
            {
                first,
                result_id("req2", "hash", ["a", "b"], "raw"),
                result_id("req", "hash2", ["a", "b"], "raw"),
                result_id("req", "hash", ["a"], "raw"),
                result_id("req", "hash", ["a", "b"], "proc"),
            }
        )
        == 5
    )


def test_inline_summaries() -> None:
    assert inline_summary({"summary": 1 + 2j, "summary_type": "complex"}, 100) == (
        (1.0, 2.0),
        "complex",
    )
    assert inline_summary({"summary": float("nan")}, 100) == (None, None)
    assert inline_summary({"summary": np.zeros(3), "summary_type": "trendline"}, 100) == (
        None,
        "trendline",
    )
    assert inline_summary({"summary": "x" * 50}, 10) == ("x" * 9 + "…", None)
    assert inline_summary({"summary": True}, 10) == (True, None)


def test_fit_message_shortens_until_under_the_bound() -> None:
    results = (
        *tuple(
            VariableResult(name=f"v{i}", error="e" * 20000, error_cls="ValueError")
            for i in range(100)
        ),
        VariableResult(name="s", summary="s" * 16000),
    )
    fitted = fit_message(results, 100_000)
    assert sum(len(r.model_dump_json()) for r in fitted) <= 100_000
    assert [r.name for r in fitted] == [r.name for r in results]
    assert all(r.error_cls == "ValueError" for r in fitted[:-1])


def test_variable_result_shapes() -> None:
    none = variable_result(Outcome("n", "none"), in_fragment=False)
    assert none.returned_none
    assert none.error is None
    err = variable_result(Outcome("e", "error", "", "RuntimeError"), in_fragment=True)
    assert (err.error, err.error_cls, err.in_fragment) == ("", "RuntimeError", False)
    ok = variable_result(
        Outcome(
            "o",
            "ok",
            prepared={
                "summary": 3,
                "summary_type": None,
                "units": "mm",
                "bold": None,
                "background": (1, 2, 3),
                "max_diff": 0.5,
                "summary_method": "mean",
            },
        ),
        in_fragment=True,
    )
    assert json.loads(ok.model_dump_json())["background"] == [1, 2, 3]
    assert (ok.summary, ok.units, ok.in_fragment, ok.max_diff) == (3, "mm", True, 0.5)


def test_only_plain_scalars_and_short_strings_skip_the_fragment() -> None:
    def prep(kind: str, data: object, summary: object, **kw: object) -> dict[str, object]:
        return {"kind": kind, "data": data, "summary": summary, "summary_type": None, **kw}

    assert not needs_fragment(prep("array", np.asarray(3), 3), 100)
    assert not needs_fragment(prep("array", np.asarray(True), True), 100)
    assert not needs_fragment(prep("string", "short", "short"), 100)
    assert needs_fragment(prep("string", "x" * 200, "x" * 99 + "…"), 100)
    assert needs_fragment(prep("array", np.asarray(5), 7), 100)  # summary_value differs
    assert needs_fragment(prep("array", np.asarray(1 + 2j), 1 + 2j), 100)
    assert needs_fragment(prep("array", np.asarray(float("nan")), float("nan")), 100)
    assert needs_fragment(prep("array", np.arange(3), 1.0), 100)  # a reduced array
    assert needs_fragment(prep("array", np.asarray(1), 1, preview={"kind": "array"}), 100)
    assert needs_fragment(prep("dataarray", {}, 1.0), 100)
