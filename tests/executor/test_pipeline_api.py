"""``Pipeline``: one test per behaviour of DAMNIT 0.4's tests/test_pipeline.py (30).

Each test asserts what DAMNIT's own test asserts (variable names, values, error
types and messages, log lines), against runstream's context runtime in this
process. Log lines come from the ``rs_ctxrunner`` logger (DAMNIT: ``ctxrunner``).
"""

from __future__ import annotations

import logging
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from runstream.context import Group, GroupError, Pipeline, Variable

pytestmark = pytest.mark.unit


def mkcontext(code: str) -> Any:
    return Pipeline.from_str(textwrap.dedent(code)).context


def dedent(code: str) -> str:
    return textwrap.dedent(code)


def test_pipeline_execute_with_data(mock_run: Any) -> None:
    @Variable
    def a(run):  # type: ignore[no-untyped-def]
        return 1

    @Variable(data="proc")
    def b(run):  # type: ignore[no-untyped-def]
        return 2

    pipe = Pipeline().add(a, b)
    res = (
        pipe.with_context(data=mock_run, proposal=123, run_number=1)
        .select(run_data="raw")
        .execute()
    )
    assert res.cells["a"].data == 1
    assert "b" not in res.cells


def test_pipeline_execute_data_override(mock_run: Any) -> None:
    override: dict[str, Any] = {}

    @Variable
    def used_override(run, _override=override):  # type: ignore[no-untyped-def]
        return run is _override

    pipe = Pipeline().add(used_override)
    res = pipe.with_context(data=mock_run, proposal=1, run_number=1).execute(data=override)
    assert bool(res.cells["used_override"].data) is True


def test_pipeline_default_merges_autodiscovery() -> None:
    ctx = mkcontext(
        """
        from damnit_ctx import Variable, Group, Pipeline

        @Variable
        def base(run):
            return 1

        @Group
        class G:
            @Variable
            def val(self, run):
                return 2

        g = G()
        Pipeline.default().add(G(name="extra"))
        """
    )
    assert "base" in ctx.vars
    assert "g.val" in ctx.vars
    assert "extra.val" in ctx.vars


def test_pipeline_set_default_override() -> None:
    ctx = mkcontext(
        """
        from damnit_ctx import Variable, Pipeline

        @Variable
        def base(run):
            return 1

        @Variable
        def chosen(run):
            return 2

        pipe = Pipeline()
        pipe.add(chosen)
        Pipeline.set_default(pipe)
        """
    )
    assert set(ctx.vars) == {"chosen"}


def test_pipeline_from_context_file(tmp_path: Path, mock_run: Any) -> None:
    ctx_path = tmp_path / "context.py"
    ctx_path.write_text(
        dedent(
            """
            from damnit_ctx import Variable

            @Variable
            def foo(run):
                return 7
            """
        )
    )
    pipe = Pipeline.from_context_file(ctx_path)
    res = pipe.with_context(data=mock_run, proposal=1, run_number=1).execute()
    assert res.cells["foo"].data == 7


def test_pipeline_nested_context_isolation() -> None:
    outer_code = dedent(
        """
        from damnit_ctx import Variable, Pipeline
        from runstream_ctx import Pipeline as PipelinePublic

        @Variable
        def outer(run):
            return 1

        inner_code = '''
        from damnit_ctx import Variable, Pipeline

        @Variable
        def inner(run):
            return 2

        pipe = Pipeline()
        pipe.add(inner)
        Pipeline.set_default(pipe)
        '''

        PipelinePublic.from_str(inner_code)
        Pipeline.default().add(outer)
        """
    )
    pipe = Pipeline.from_str(outer_code)
    assert "outer" in pipe.vars
    assert "inner" not in pipe.vars


def test_pipeline_state_reset_after_exception() -> None:
    from rs_ctxrunner.pipeline import _DEFAULT

    failing_code = dedent(
        """
        from damnit_ctx import Variable, Pipeline

        @Variable
        def bad(run):
            return 1

        Pipeline.default().add(bad)
        raise RuntimeError("boom")
        """
    )
    with pytest.raises(RuntimeError, match="boom"):
        Pipeline.from_str(failing_code)
    try:
        assert "bad" not in Pipeline.default().vars
    finally:
        _DEFAULT.set(None)


def test_pipeline_sequential_contexts_no_leak() -> None:
    template = """
        from damnit_ctx import Variable, Pipeline

        @Variable
        def {name}(run):
            return 1

        pipe = Pipeline()
        pipe.add({name})
        Pipeline.set_default(pipe)
    """
    pipe_a = Pipeline.from_str(dedent(template.format(name="a")))
    pipe_b = Pipeline.from_str(dedent(template.format(name="b")))
    assert set(pipe_a.vars) == {"a"}
    assert set(pipe_b.vars) == {"b"}


def test_pipeline_add_accepts_nested_sequences_and_rejects_invalid_iterables() -> None:
    @Variable
    def a(run):  # type: ignore[no-untyped-def]
        return 1

    @Variable
    def b(run):  # type: ignore[no-untyped-def]
        return 2

    pipe = Pipeline().add([a, (b,)])
    assert set(pipe.vars) == {"a", "b"}
    with pytest.raises(TypeError, match=r"Pipeline\.add accepts"):
        Pipeline().add(123)

    def gen():  # type: ignore[no-untyped-def]
        yield a

    with pytest.raises(TypeError, match=r"Pipeline\.add accepts") as info:
        Pipeline().add(gen())
    assert str(info.value) == (
        "Pipeline.add accepts Variable or Group instances (or dict[str, Group], "
        "or sequences of them); got <class 'generator'>"
    )


def test_pipeline_add_accepts_group_mapping() -> None:
    @Group
    class G:
        @Variable
        def val(self, run):  # type: ignore[no-untyped-def]
            return 1

    g = G()
    pipe = Pipeline().add({"grp": g})
    assert g.name == "grp"
    assert set(pipe.vars) == {"grp.val"}

    g = G(name="left")
    pipe.add({"right": g})
    assert g.name == "left"
    assert set(pipe.vars) == {"grp.val", "left.val"}


def test_pipeline_add_rejects_string() -> None:
    with pytest.raises(TypeError, match=r"Pipeline\.add accepts"):
        Pipeline().add("not-a-variable")


def test_pipeline_add_invalidates_compiled_context() -> None:
    @Variable
    def a(run):  # type: ignore[no-untyped-def]
        return 1

    @Variable
    def b(run):  # type: ignore[no-untyped-def]
        return 2

    pipe = Pipeline().add(a)
    assert set(pipe.vars) == {"a"}
    pipe.add(b)
    assert set(pipe.vars) == {"a", "b"}


def test_pipeline_build_context_invalidates_results(mock_run: Any) -> None:
    @Variable
    def a(run):  # type: ignore[no-untyped-def]
        return 1

    @Variable
    def b(run):  # type: ignore[no-untyped-def]
        return 2

    pipe = Pipeline().add(a).with_context(data=mock_run, proposal=1, run_number=1)
    pipe.execute()
    assert pipe.results is not None
    pipe.add(b)
    assert pipe.results is None


def test_pipeline_set_default_rejects_non_pipeline() -> None:
    with pytest.raises(TypeError, match="expects a Pipeline instance"):
        Pipeline.set_default("not a pipeline")  # type: ignore[arg-type]


def test_pipeline_build_context_rejects_duplicate_variable_names() -> None:
    def f(run):  # type: ignore[no-untyped-def]
        return 1

    v1 = Variable(f)
    v2 = Variable(f)
    with pytest.raises(GroupError, match=r"Duplicate variable name 'f'"):
        Pipeline().add(v1, v2)


def test_pipeline_union_disjoint() -> None:
    @Variable
    def a(run):  # type: ignore[no-untyped-def]
        return 1

    @Variable
    def b(run):  # type: ignore[no-untyped-def]
        return 2

    left = Pipeline().add(a)
    right = Pipeline().add(b)
    merged = left.union(right)
    assert set(merged.vars) == {"a", "b"}
    assert set(left.vars) == {"a"}
    assert set(right.vars) == {"b"}


def test_pipeline_union_deduplicates_same_object() -> None:
    @Variable
    def a(run):  # type: ignore[no-untyped-def]
        return 1

    left = Pipeline().add(a)
    right = Pipeline().add(a)
    merged = left.union(right)
    assert set(merged.vars) == {"a"}
    assert merged.vars["a"] is left.vars["a"] is right.vars["a"]


def test_pipeline_union_conflicts() -> None:
    code = dedent(
        """
        from damnit_ctx import Variable

        @Variable
        def a(run):
            return 1
        """
    )
    left = Pipeline.from_str(code)
    right = Pipeline.from_str(code)
    with pytest.raises(Exception, match=r"Duplicate variable name 'a'"):
        left.union(right)
    merged_left = left.union(right, on_conflict="left")
    assert merged_left.vars["a"] is left.vars["a"]
    merged_right = left.union(right, on_conflict="right")
    assert merged_right.vars["a"] is right.vars["a"]


def test_pipeline_build_context_rejects_unnamed_group_instance() -> None:
    @Group
    class G:
        @Variable
        def val(self, run):  # type: ignore[no-untyped-def]
            return 1

    with pytest.raises(GroupError, match=r"has no name") as info:
        Pipeline().add(G())
    assert str(info.value) == (
        "Group instance of 'G' has no name. "
        "Provide name=... or assign it to a variable in the context file."
    )


def test_pipeline_build_context_rejects_duplicate_group_names() -> None:
    @Group
    class G:
        @Variable
        def val(self, run):  # type: ignore[no-untyped-def]
            return 1

    with pytest.raises(GroupError, match=r"Group name 'same' is used by multiple group instances"):
        Pipeline().add(G(name="same"), G(name="same"))


def test_pipeline_with_context_updates() -> None:
    param_values = {"x": 1}
    data_obj = object()
    pipe = Pipeline(name="a", proposal=1, run_number=2, data=data_obj, param_values=param_values)
    new_pipe = pipe.with_context(name="b", proposal=3, param_values={"y": 2})
    assert (pipe.name, pipe.proposal, pipe.run_number, pipe.data, pipe.param_values) == (
        "a",
        1,
        2,
        data_obj,
        {"x": 1},
    )
    assert (
        new_pipe.name,
        new_pipe.proposal,
        new_pipe.run_number,
        new_pipe.data,
        new_pipe.param_values,
    ) == ("b", 3, 2, data_obj, {"y": 2})
    param_values["x"] = 999
    assert pipe.param_values == {"x": 1}


def test_pipeline_select_filters() -> None:
    pipe = Pipeline.from_str(
        dedent(
            """
            from damnit_ctx import Variable

            @Variable(title="Alpha", data="raw")
            def a(run):
                return 1

            @Variable(title="Beta", data="proc", cluster=True)
            def b(run):
                return 2

            @Variable(title="Gamma", data="raw")
            def c(run, x: "var#a"):
                return x + 1
            """
        )
    )
    assert set(pipe.select(variables=("c",)).vars) == {"a", "c"}  # the dependency is kept
    assert set(pipe.select(match=("beta",)).vars) == {"b"}
    assert set(pipe.select(match=("b",)).vars) == {"b"}  # titles only: not the name 'b' of Alpha
    assert set(pipe.select(cluster=True).vars) == {"b"}
    assert set(pipe.select(run_data="raw").vars) == {"a", "c"}


def test_pipeline_select_then_add_does_not_resurrect_filtered_vars() -> None:
    @Variable
    def a(run):  # type: ignore[no-untyped-def]
        return 1

    @Variable
    def b(run):  # type: ignore[no-untyped-def]
        return 2

    @Variable
    def c(run):  # type: ignore[no-untyped-def]
        return 3

    selected = Pipeline().add(a, b).select(variables=("a",))
    assert set(selected.vars) == {"a"}
    selected.add(c)
    assert set(selected.vars) == {"a", "c"}


def test_pipeline_select_run_data_overrides_execution(mock_run: Any) -> None:
    @Variable(data="raw")
    def raw_var(run):  # type: ignore[no-untyped-def]
        return 1

    @Variable(data="proc")
    def proc_var(run):  # type: ignore[no-untyped-def]
        return 2

    selected = Pipeline().add(raw_var, proc_var).select(run_data="raw")
    res = selected.with_context(data=mock_run, proposal=1, run_number=1).execute()
    assert "raw_var" in res.cells
    assert "proc_var" not in res.cells


def test_pipeline_execute_requires_data_or_proposal_run_number() -> None:
    @Variable
    def a(run):  # type: ignore[no-untyped-def]
        return 1

    with pytest.raises(ValueError, match="proposal and run_number must be set"):
        Pipeline().add(a).execute()


def test_pipeline_execute(mock_run: Any) -> None:
    pipe = Pipeline.from_str(
        dedent(
            """
            from damnit_ctx import Variable

            @Variable
            def val(run, x: "param#x"):
                return x
            """
        )
    ).with_context(data=mock_run, proposal=1, run_number=1, param_values={"x": 1})
    assert pipe.results is None
    res = pipe.execute(param_values={"x": 2})
    assert res.cells["val"].data == 2


def test_pipeline_execute_logs_name(mock_run: Any, caplog: pytest.LogCaptureFixture) -> None:
    @Variable
    def inner(run):  # type: ignore[no-untyped-def]
        return 1

    @Variable
    def outer(run):  # type: ignore[no-untyped-def]
        nested = Pipeline(name="inner_pipe", proposal=1, run_number=2, data=run)
        nested.add(inner)
        return nested.execute().cells["inner"].data + 1

    pipe = (
        Pipeline(name="outer_pipe").add(outer).with_context(data=mock_run, proposal=1, run_number=1)
    )
    with caplog.at_level(logging.INFO, logger="rs_ctxrunner"):
        pipe.execute()
    assert "[inner_pipe] Computed inner" in caplog.text
    assert "[outer_pipe] Computed outer" in caplog.text

    @Variable
    def val(run):  # type: ignore[no-untyped-def]
        return 1

    pipe = Pipeline().add(val).with_context(data=mock_run, proposal=1, run_number=1)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rs_ctxrunner"):
        pipe.execute()
    assert len(re.findall(r"\[\w{12}\] Computed val", caplog.text)) == 1


def test_pipeline_vars_to_dict() -> None:
    pipe = Pipeline.from_str(
        dedent(
            """
            from damnit_ctx import Variable

            @Variable
            def keep(run):
                return 1

            @Variable(transient=True)
            def transient_var(run):
                return 2
            """
        )
    )
    assert set(pipe.vars_to_dict()) == {"keep"}
    assert set(pipe.vars_to_dict(inc_transient=True)) == {"keep", "transient_var"}
    assert pipe.vars_to_dict()["keep"] == {
        "title": "keep",
        "description": None,
        "tags": (),
        "attributes": None,
        "type": None,
    }


def test_pipeline_copy() -> None:
    @Variable
    def a(run):  # type: ignore[no-untyped-def]
        return 1

    @Variable
    def b(run):  # type: ignore[no-untyped-def]
        return 2

    pipe = Pipeline(param_values={"x": 1}).add(a)
    clone = pipe.copy()
    clone.param_values["x"] = 2
    clone.param_values["y"] = 3
    clone.add(b)
    assert pipe.param_values == {"x": 1}
    assert clone.param_values == {"x": 2, "y": 3}
    assert set(pipe.vars) == {"a"}
    assert set(clone.vars) == {"a", "b"}


def test_reuse_vars(mock_run: Any) -> None:
    ctx = mkcontext(
        """
        from damnit_ctx import Variable, Group, Pipeline

        @Group
        class A:
            value: int = 1

            @Variable
            def var(self, run):
                return self.value * run['data']

        @Variable
        def source(run):
            pipe = Pipeline(proposal=1, run_number=2, data={'data': 10})
            pipe.add(A(value=2, name='aa'))
            pipe.execute()
            return pipe.results.cells['aa.var'].data

        @Variable
        def target(run, data: 'var#source', run_number: 'meta#run_number'):
            return data + run_number
        """
    )
    res = ctx.execute(mock_run, 1, 1, {})
    assert set(ctx.vars) == {"source", "target"}
    assert res.cells["source"].data == 20
    assert res.cells["target"].data == 21
