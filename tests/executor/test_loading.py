"""Context loading and validation (damnit.md §7 "Context loading and validation")."""

from __future__ import annotations

from pathlib import Path

import pytest
from runstream_executor.context import ContextProblems
from runstream_executor.engine import load_context
from runstream_executor.pool import WorkerPool

from .helpers import write_context

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="session")]


async def load(pool: WorkerPool, tmp_path: Path, code: str):  # type: ignore[no-untyped-def]
    return await load_context(pool, write_context(tmp_path, code))


async def problems(pool: WorkerPool, tmp_path: Path, code: str) -> list[str]:
    with pytest.raises(ContextProblems) as info:
        await load(pool, tmp_path, code)
    return [p["message"] for p in info.value.problems]


async def test_bare_decorator_names_and_titles(pool: WorkerPool, tmp_path: Path) -> None:
    ctx = await load(
        pool,
        tmp_path,
        '''
        from damnit_ctx import Variable

        @Variable
        def scalar1(run):
            """The first scalar."""
            return 42

        @Variable("2D ndarray", units="px", tags="images")
        def image(run):
            return 1
        ''',
    )
    var = ctx.variables["scalar1"]
    assert (var.name, var.title, var.description) == ("scalar1", "scalar1", "The first scalar.")
    image = ctx.variables["image"]
    assert (image.title, image.units, image.tags, image.data) == (
        "2D ndarray",
        "px",
        ("images",),
        "raw",
    )


async def test_runstream_ctx_module_is_the_same_api(pool: WorkerPool, tmp_path: Path) -> None:
    ctx = await load(
        pool,
        tmp_path,
        """
        from runstream_ctx import Variable
        import damnit_ctx

        assert Variable is damnit_ctx.Variable

        @Variable(title="A")
        def a(run):
            return 1
        """,
    )
    assert list(ctx.variables) == ["a"]


async def test_packaged_api_module_works_inside_workers(pool: WorkerPool, tmp_path: Path) -> None:
    """What ``runstream.context`` re-exports: the same classes the worker's loader knows."""
    ctx = await load(
        pool,
        tmp_path,
        """
        from runstream_executor.context_api import Variable, Cell

        @Variable(title="A")
        def a(run):
            return Cell(1)
        """,
    )
    assert list(ctx.variables) == ["a"]


async def test_all_validation_problems_are_reported_together(
    pool: WorkerPool, tmp_path: Path
) -> None:
    messages = await problems(
        pool,
        tmp_path,
        """
        from damnit_ctx import Variable

        @Variable(title="Same")
        def one(run):
            return 1

        @Variable(title="Same")
        def two(run):
            return 2

        @Variable(tags=["ok", ""])
        def tagged(run):
            return 3

        @Variable(units="")
        def unitless(run):
            return 4

        @Variable
        def meta_user(run, sample: "mymdc#colour"):
            return sample

        @Variable
        def weird(run, x: "banana#x"):
            return x

        def _f(run):
            return 5
        _f.__name__ = "not-an-identifier"
        bad_name = Variable(title="Bad name")(_f)
        """,
    )
    joined = "\n".join(messages)
    assert "Duplicate title 'Same'" in joined
    assert "tags must be non-empty strings" in joined
    assert "units must be a non-empty string" in joined
    assert "unknown mymdc field 'mymdc#colour'" in joined
    assert "unknown annotation 'banana#x'" in joined
    assert "'not-an-identifier' is not a Python identifier" in joined
    assert len(messages) == 6


async def test_problems_carry_line_numbers(pool: WorkerPool, tmp_path: Path) -> None:
    with pytest.raises(ContextProblems) as info:
        await load(
            pool,
            tmp_path,
            """
            from damnit_ctx import Variable

            @Variable(units="")
            def unitless(run):
                return 4
            """,
        )
    assert info.value.problems[0]["line"] == 4  # the decorator line (dedented file starts blank)


async def test_unknown_data_value_is_a_value_error(pool: WorkerPool, tmp_path: Path) -> None:
    messages = await problems(
        pool,
        tmp_path,
        """
        from damnit_ctx import Variable

        @Variable(data="scratch/test")
        def v(run):
            return 1
        """,
    )
    assert messages == ["ValueError: 'scratch/test' is not a valid RunData"]


async def test_cycle_and_missing_dependency(pool: WorkerPool, tmp_path: Path) -> None:
    cyc = await problems(
        pool,
        tmp_path,
        """
        from damnit_ctx import Variable

        @Variable
        def a(run, b: "var#b"):
            return b

        @Variable
        def b(run, a: "var#a"):
            return a
        """,
    )
    assert len(cyc) == 1
    assert cyc[0].startswith("CycleError: cyclical dependencies")
    missing = await problems(
        pool,
        tmp_path,
        """
        from damnit_ctx import Variable

        @Variable
        def a(run, x: "var#nonexistent" = 3, y: "var#pattern_*" = 4):
            return x
        """,
    )
    assert any("var#nonexistent" in m and "Missing dependency" in m for m in missing)
    assert any("var#pattern_*" in m for m in missing)


async def test_syntax_and_import_errors(pool: WorkerPool, tmp_path: Path) -> None:
    syntax = await problems(pool, tmp_path, "def broken(:\n    pass\n")
    assert syntax[0].startswith("SyntaxError")
    missing_pkg = await problems(pool, tmp_path, "import package_that_is_not_installed\n")
    assert missing_pkg == ["ModuleNotFoundError: No module named 'package_that_is_not_installed'"]


async def test_proc_and_cluster_promotion(pool: WorkerPool, tmp_path: Path) -> None:
    ctx = await load(
        pool,
        tmp_path,
        """
        from damnit_ctx import Variable

        @Variable(data="proc")
        def p(run):
            return 1

        @Variable
        def after_p(run, x: "var#p"):
            return x

        @Variable(cluster=True)
        def big(run):
            return 1

        @Variable
        def after_big(run, x: "var#big"):
            return x

        @Variable
        def after_after_big(run, x: "var#after_big"):
            return x

        @Variable
        def plain(run):
            return 1
        """,
    )
    data = {n: v.data for n, v in ctx.variables.items()}
    cluster = {n: v.cluster for n, v in ctx.variables.items()}
    assert data["after_p"] == "proc"
    assert data["plain"] == "raw"
    assert cluster == {
        "p": False,
        "after_p": False,
        "big": True,
        "after_big": True,
        "after_after_big": True,
        "plain": False,
    }
    raw_on_proc = await problems(
        pool,
        tmp_path,
        """
        from damnit_ctx import Variable

        @Variable(data="proc")
        def p(run):
            return 1

        @Variable(data="raw")
        def r(run, x: "var#p"):
            return x
        """,
    )
    assert len(raw_on_proc) == 1
    assert "data='raw' but depends on proc data" in raw_on_proc[0]


async def test_order_and_dependency_sets(pool: WorkerPool, tmp_path: Path) -> None:
    ctx = await load(
        pool,
        tmp_path,
        """
        from damnit_ctx import Variable

        @Variable
        def c(run, a: "var#a", b: "var#b"):
            return a + b

        @Variable
        def a(run):
            return 1

        @Variable
        def d(run, c: "var#c"):
            return c

        @Variable
        def b(run):
            return 2
        """,
    )
    assert ctx.order == ["a", "b", "c", "d"]
    assert set(ctx.variables["d"].deps) == {"c"}
    assert ctx.all_deps("d") == {"a", "b", "c"}


async def test_non_string_annotations_are_accepted(pool: WorkerPool, tmp_path: Path) -> None:
    ctx = await load(
        pool,
        tmp_path,
        """
        from damnit_ctx import Variable

        @Variable
        def f(run, x: int = 3):
            return x
        """,
    )
    assert list(ctx.variables) == ["f"]


async def test_damnit_names_import(pool: WorkerPool, tmp_path: Path) -> None:
    ctx = await load(
        pool,
        tmp_path,
        """
        from damnit_ctx import Variable, Cell, Group, Skip, Pipeline, RunData, GroupError

        @Variable
        def a(run):
            return 1
        """,
    )
    assert list(ctx.variables) == ["a"]


async def test_group_errors_are_load_problems_with_damnits_message(
    pool: WorkerPool, tmp_path: Path
) -> None:
    messages = await problems(
        pool,
        tmp_path,
        """
        from damnit_ctx import Variable, Group

        @Group
        class XGM:
            @Variable
            def energy(self, run):
                return 1

        xgm = XGM()
        alias = xgm
        """,
    )
    assert messages == [
        "GroupError: Group instance of 'XGM' is assigned to multiple names "
        "['alias', 'xgm'] without an explicit name."
    ]
    messages = await problems(
        pool,
        tmp_path,
        """
        from damnit_ctx import Variable, Group

        @Group
        class Bad:
            sep: str = "-"
        """,
    )
    assert messages == ["GroupError: Group classes cannot define reserved fields: sep"]
