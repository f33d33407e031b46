"""Execution semantics (damnit.md §7 "Execution semantics", §1.2, appendix quirks)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from runstream_executor.pool import PoolConfig, WorkerPool

from .helpers import run_context

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="session")]

TREE_CONTEXT = """
from damnit_ctx import Variable, Skip

@Variable
def var1(run):
    return 1

@Variable
def var3(run):
    return 1 / 0

@Variable
def bar(run, x: "var#var3"):
    return x

@Variable
def baz(run, x: "var#bar", y: "var#var1"):
    return x + y

@Variable
def skipper(run):
    raise Skip("Testing Skip")

@Variable
def after_skip(run, x: "var#skipper"):
    return x

@Variable
def after_after_skip(run, x: "var#after_skip"):
    return x

@Variable
def nothing(run):
    return None

@Variable
def after_none(run, x: "var#nothing"):
    return x

@Variable
def with_default(run, x: "var#var3" = 41, y: "var#nothing" = 0):
    return x + 1 + y

@Variable
def empty_message(run):
    raise RuntimeError()

@Variable
def mixed(run, a: "var#var3", b: "var#empty_message", c: "var#nothing"):
    return a
"""


async def test_errors_are_isolated_and_recorded_exactly(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    ev = await run_context(pool, TREE_CONTEXT, tmp_path / "ctx", mock_proposal)
    assert ev.outcomes["var1"].status == "ok"
    assert ev.summary("var1") == 1
    assert ev.error("var3") == ("division by zero", "ZeroDivisionError")
    assert ev.error("skipper") == ("Testing Skip", "Skip")
    assert ev.error("bar") == (
        "Skipped due to missing dependency:\n└ (var3) failed: ZeroDivisionError: division by zero",
        "DependencyError",
    )
    assert ev.error("baz") == (
        "Skipped due to missing dependency:\n"
        "└ (bar) skipped\n"
        "   └ (var3) failed: ZeroDivisionError: division by zero",
        "DependencyError",
    )
    # A dependent of a Skip is a Skip, printed as "failed: Skip:" one level up (quirk 5).
    assert ev.error("after_skip") == (
        "Skipped due to missing dependency:\n└ (skipper) failed: Skip: Testing Skip",
        "Skip",
    )
    assert ev.error("after_after_skip") == (
        "Skipped due to missing dependency:\n"
        "└ (after_skip) failed: Skip: Skipped due to missing dependency:\n"
        "   └ (skipper) failed: Skip: Testing Skip",
        "Skip",
    )


async def test_none_results_and_defaults(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    ev = await run_context(pool, TREE_CONTEXT, tmp_path / "ctx", mock_proposal)
    nothing = ev.outcomes["nothing"]
    assert (nothing.status, nothing.prepared, nothing.error) == ("none", None, None)
    assert ev.error("after_none") == ("Dependencies returned no data:\n- 'nothing'", "Skip")
    assert ev.summary("with_default") == 42  # 41 + 1 (+ 0 for the None dependency)
    # Only dependencies with errors are listed; an empty message has no colon (quirks 6, 7).
    assert ev.error("mixed") == (
        "Skipped due to missing dependency:\n"
        "├ (var3) failed: ZeroDivisionError: division by zero\n"
        "└ (empty_message) failed: RuntimeError",
        "DependencyError",
    )
    assert ev.error("empty_message") == ("", "RuntimeError")


async def test_meta_and_dependency_values(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    ev = await run_context(
        pool,
        """
        from damnit_ctx import Variable
        import numpy as np

        @Variable
        def meta(run, r: "meta#run_number", p: "meta#proposal", path: "meta#proposal_path"):
            return f"{r}|{p}|{path.name}"

        @Variable
        def an_int(run):
            return 7

        @Variable
        def a_list(run):
            return [1, 2, 3]

        @Variable
        def seen(run, i: "var#an_int", l: "var#a_list"):
            return f"{type(i).__name__}:{i.ndim}|{type(l).__name__}:{l.sum()}"

        @Variable
        def trains(run):
            return len(run.train_ids)
        """,
        tmp_path / "ctx",
        mock_proposal,
        run=2,
    )
    assert ev.summary("meta") == "2|1234|p001234"
    assert ev.summary("seen") == "ndarray:0|ndarray:6"  # dependents get np.asarray values
    assert ev.summary("trains") == 400


async def test_glob_dependencies(pool: WorkerPool, tmp_path: Path, mock_proposal: Path) -> None:
    ev = await run_context(
        pool,
        """
        from damnit_ctx import Variable

        @Variable
        def var1(run):
            return 1

        @Variable
        def var2(run):
            return 2

        @Variable
        def var3(run):
            return 1 / 0

        @Variable
        def var10(run):
            return 10

        @Variable
        def other(run):
            return None

        @Variable
        def joined(run, d: "var#var*"):
            return ",".join(sorted(d))

        @Variable
        def single(run, d: "var#var1?"):
            return f"{type(d).__name__}:{','.join(d)}"

        @Variable
        def none_left(run, d: "var#oth*"):
            return len(d)

        @Variable
        def none_left_default(run, d: "var#oth*" = "dflt"):
            return d
        """,
        tmp_path / "ctx",
        mock_proposal,
    )
    assert ev.summary("joined") == "var1,var10,var2"  # var3 failed: partial dict
    assert ev.summary("single") == "dict:var10"
    assert ev.error("none_left") == ("Dependencies returned no data:\n- 'other'", "Skip")
    assert ev.summary("none_left_default") == "dflt"


async def test_transient_values_reach_dependents(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    ev = await run_context(
        pool,
        """
        from damnit_ctx import Variable

        @Variable(transient=True)
        def helper(run):
            return {"gen": (i for i in range(3)), "k": 5}   # not picklable, any type

        @Variable
        def uses(run, h: "var#helper"):
            return sum(h["gen"]) + h["k"]

        @Variable(transient=True)
        def broken(run):
            raise ValueError("bad helper")

        @Variable
        def uses_broken(run, h: "var#broken"):
            return h
        """,
        tmp_path / "ctx",
        mock_proposal,
    )
    assert ev.outcomes["helper"].transient
    assert ev.outcomes["helper"].pinned_to is not None  # the generator stayed in its worker
    assert ev.summary("uses") == 8
    assert not any(w.pinned for w in pool._all)  # kept values were dropped after the pass
    assert ev.error("uses_broken") == (
        "Skipped due to missing dependency:\n└ (broken) failed: ValueError: bad helper",
        "DependencyError",
    )


async def test_unsavable_results_fail_alone(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    ev = await run_context(
        pool,
        """
        from damnit_ctx import Variable
        import numpy as np

        @Variable
        def obj(run):
            return object()

        @Variable
        def a_dict(run):
            return {"a": 1}

        @Variable
        def when(run):
            return np.datetime64("2024-01-01")

        @Variable
        def fine(run):
            return 3.5

        @Variable(summary="max")
        def empty(run):
            return np.array([])

        @Variable(summary="no_such_numpy_function")
        def unknown_summary(run):
            return np.arange(4)
        """,
        tmp_path / "ctx",
        mock_proposal,
    )
    assert ev.error("obj") == (
        "Returned data type <class 'numpy.ndarray'> cannot be saved",
        "TypeError",
    )
    assert ev.error("a_dict")[1] == "TypeError"
    assert ev.error("when") == (
        "Returned data type <class 'numpy.ndarray'> whose native array type datetime64[D] cannot be saved",
        "TypeError",
    )
    assert ev.summary("fine") == 3.5
    # A failing summary falls back to the default summary, with no error (quirk 10).
    empty = ev.outcomes["empty"]
    assert empty.error is None
    assert empty.prepared is not None
    assert empty.prepared["summary_type"] == "trendline"
    assert empty.prepared["summary"].shape == (2, 0)
    assert ev.outcomes["unknown_summary"].prepared["summary_type"] == "trendline"  # type: ignore[index]


async def test_mymdc_without_provider_fails_only_that_variable(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    code = """
        from damnit_ctx import Variable

        @Variable
        def sample(run, s: "mymdc#sample_name"):
            return s

        @Variable
        def kind(run, t: "mymdc#run_type"):
            return t

        @Variable
        def plain(run):
            return 1
        """
    ev = await run_context(pool, code, tmp_path / "ctx", mock_proposal)
    assert ev.error("sample") == (
        "mymdc#sample_name: no metadata provider is configured for this executor",
        "RuntimeError",
    )
    assert ev.summary("plain") == 1
    # Modules next to context.py are importable (as in DAMNIT, where cwd is the context dir).
    ctx2 = tmp_path / "ctx2"
    ctx2.mkdir()
    (ctx2 / "fake_mymdc.py").write_text(
        "def lookup(proposal, run, field):\n"
        "    return {'sample_name': f'sample-{proposal}-{run}', 'run_type': 'dark'}[field]\n"
    )
    ev = await run_context(pool, code, ctx2, mock_proposal, run=3, mymdc="fake_mymdc:lookup")
    assert ev.summary("sample") == "sample-1234-3"
    assert ev.summary("kind") == "dark"


async def test_independent_variables_run_in_parallel(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    ev = await run_context(
        pool,
        """
        from damnit_ctx import Variable
        import os

        @Variable
        def a(run):
            return os.getpid()

        @Variable
        def b(run):
            import time; time.sleep(0.5)
            return os.getpid()

        @Variable
        def c(run, a: "var#a"):
            return int(a)
        """,
        tmp_path / "ctx",
        mock_proposal,
        parallel=2,
    )
    # a and b run at the same time, so they were served by the two different workers.
    assert ev.summary("a") != ev.summary("b")
    assert ev.summary("c") == ev.summary("a")
    assert pickle.loads(ev.outcomes["a"].value or b"") == ev.summary("a")


async def test_context_folders_do_not_share_their_local_modules(
    tmp_path: Path, mock_proposal: Path
) -> None:
    """Warm workers serve many proposals: each gets its own helpers.py."""
    code = """
        from damnit_ctx import Variable

        @Variable
        def which(run):
            import helpers
            return helpers.NAME
        """
    for label in ("a", "b"):
        folder = tmp_path / label
        folder.mkdir()
        (folder / "helpers.py").write_text(f"NAME = {label!r}\n")
    pool = WorkerPool(PoolConfig(size=1, preload="numpy,extra_data"))  # one worker serves both
    await pool.start()
    try:
        for label in ("a", "b", "a", "b"):
            ev = await run_context(
                pool, code + f"# {label}\n", tmp_path / label, mock_proposal, parallel=1
            )
            assert ev.summary("which") == label
    finally:
        await pool.close()
