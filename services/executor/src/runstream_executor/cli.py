"""``runstream context check|eval``: use a context file locally, no Kafka needed.

Importing this module is cheap (it is imported for every ``runstream`` command):
the engine, pydantic settings and the scientific stack are imported inside the
commands that use them.
"""

from __future__ import annotations

import dataclasses
import sys
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from runstream_common.limits import MAX_INT32

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.console import Console

    from .context import ContextSource, LoadedContext
    from .engine import RunTarget
    from .outcome import Outcome
    from .pool import PoolConfig, WorkerPool
    from .settings import Settings


@cache
def _consoles() -> tuple[Console, Console]:
    """(stdout, stderr) consoles, made on first use."""
    from rich.console import Console

    return Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)


context_app = typer.Typer(
    name="context", help="Check and evaluate context files locally.", no_args_is_help=True
)


class DataChoice(StrEnum):
    raw = "raw"
    proc = "proc"
    all = "all"


def pyflakes_warnings(source: str, filename: str) -> list[str]:
    """pyflakes messages for ``source`` ('file:line:col: message')."""
    from pyflakes import api as pyflakes_api
    from pyflakes import reporter as pyflakes_reporter

    class Collect(pyflakes_reporter.Reporter):  # type: ignore[misc]
        def __init__(self) -> None:
            self.messages: list[str] = []

        def unexpectedError(self, filename: str, message: str) -> None:
            self.messages.append(f"{filename}: {message}")

        def syntaxError(self, filename: str, msg: str, lineno: int, offset: int, text: str) -> None:
            self.messages.append(f"{filename}:{lineno}: {msg}")

        def flake(self, message: Any) -> None:
            # "var#x" annotations parse as the bare name `var`: not a real problem.
            if type(message).__name__ == "UndefinedName" and message.message_args[0] in (
                "var",
                "meta",
                "mymdc",
                "param",
                "self",
                "input",
            ):
                return
            self.messages.append(str(message))

    collector = Collect()
    pyflakes_api.check(source, filename, collector)
    return collector.messages


async def _load(config: PoolConfig, source: ContextSource) -> tuple[WorkerPool, LoadedContext]:
    from .engine import load_context
    from .pool import WorkerPool

    pool = WorkerPool(config)
    await pool.start()
    try:
        return pool, await load_context(pool, source)
    except BaseException:
        await pool.close()
        raise


def _read_source(path: Path) -> ContextSource:
    from .context import ContextSource

    err = _consoles()[1]
    try:
        return ContextSource.read(path)
    except (OSError, UnicodeDecodeError) as exc:
        err.print(f"[red]cannot read {path}:[/] {exc}")
        raise typer.Exit(1) from None


def _print_problems(path: Path, problems: list[dict[str, Any]]) -> None:
    from .context import format_problem

    err = _consoles()[1]
    err.print(f"[red]{path} cannot be used ({len(problems)} problem(s)):[/]")
    for problem in problems:
        err.print(f"  {path}:{format_problem(problem)}", markup=False, highlight=False)


@context_app.command("check")
def check(
    context: Annotated[Path, typer.Argument(help="The context file (context.py)")],
    context_python: Annotated[
        str | None, typer.Option(help="Interpreter to load the context with")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Load and validate a context file; exit 1 listing every problem, else print warnings."""
    import asyncio
    import json

    from .context import ContextProblems
    from .pool import PoolConfig
    from .settings import Settings

    out, err = _consoles()
    source = _read_source(context)
    settings = Settings()
    config = PoolConfig(size=1, python=context_python or settings.python, preload="")

    async def go() -> LoadedContext:
        pool, ctx = await _load(config, source)
        await pool.close()
        return ctx

    try:
        with err.status("loading the context file", spinner="dots"):
            ctx = asyncio.run(go())
    except ContextProblems as exc:
        if json_output:
            out.print_json(json.dumps({"ok": False, "problems": exc.problems, "warnings": []}))
        else:
            _print_problems(context, exc.problems)
        raise typer.Exit(1) from None
    warnings = pyflakes_warnings(source.source, str(context))
    if json_output:
        print(
            json.dumps(
                {"ok": True, "variables": list(ctx.variables), "warnings": warnings, "problems": []}
            )
        )
        return
    for warning in warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    out.print(
        f"[green]{context} is valid:[/] {len(ctx.variables)} variable(s)"
        + (f", {len(warnings)} warning(s)" if warnings else "")
    )


def _summary_text(result: dict[str, Any]) -> str:
    if result["summary_type"] in ("thumbnail", "trendline"):
        return f"<{result['summary_type']}>"
    summary = result["summary"]
    if result["summary_type"] == "complex":
        return str(complex(summary[0], summary[1]))
    return "" if summary is None else str(summary)


def _json_entry(ctx: LoadedContext, outcome: Outcome, max_inline: int) -> dict[str, Any]:
    from .results import inline_summary

    var = ctx.variables[outcome.name]
    entry: dict[str, Any] = {
        "title": var.title,
        "summary": None,
        "summary_type": None,
        "units": None,
        "error": None,
        "error_cls": None,
    }
    if outcome.status == "error":
        entry["error"] = outcome.error or ""
        entry["error_cls"] = outcome.error_cls
    elif outcome.status == "ok" and outcome.prepared is not None:
        summary, summary_type = inline_summary(outcome.prepared, max_inline)
        entry["summary"] = list(summary) if isinstance(summary, tuple) else summary
        entry["summary_type"] = summary_type
        entry["units"] = outcome.prepared.get("units")
    return entry


@context_app.command("eval")
def eval_context(
    context: Annotated[Path, typer.Argument(help="The context file (context.py)")],
    proposal: Annotated[int, typer.Option(help="Proposal number", min=0, max=MAX_INT32)],
    run: Annotated[int, typer.Option(help="Run number", min=0, max=MAX_INT32)],
    proposal_dir: Annotated[
        Path | None,
        typer.Option(
            help="Proposal folder holding raw/rNNNN and proc/rNNNN "
            "(default: found under RUNSTREAM_EXECUTOR_DATA_ROOT)"
        ),
    ] = None,
    data: Annotated[
        DataChoice, typer.Option(help="Which variables: raw, proc or all")
    ] = DataChoice.all,
    match: Annotated[
        list[str] | None,
        typer.Option(help="Only variables whose title contains TEXT, any case (repeatable)"),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print exactly one JSON object")
    ] = False,
    output: Annotated[
        Path | None, typer.Option(help="Write DAMNIT's per-run HDF5 layout to this file")
    ] = None,
    context_python: Annotated[
        str | None, typer.Option(help="Interpreter to evaluate the context with")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes", min=1)] = None,
    timeout: Annotated[float | None, typer.Option(help="Time limit per variable (s)")] = None,
    memory_mb: Annotated[int | None, typer.Option(help="Memory limit per variable (MiB)")] = None,
) -> None:
    """Evaluate a context file for one run and print the results."""
    import asyncio

    from .context import ContextProblems
    from .settings import Settings

    out, err = _consoles()
    settings = Settings()
    source = _read_source(context)
    target = _run_target(settings, context, proposal, run, proposal_dir, err)
    config = _eval_pool(settings, context_python, workers, timeout, memory_mb)
    try:
        ctx, names, outcomes, started = asyncio.run(
            _evaluate_with_progress(
                config, source, target, data.value, match or (), settings.metadata_provider, err
            )
        )
    except ContextProblems as exc:
        _print_problems(context, exc.problems)
        raise typer.Exit(1) from None
    emit = [n for n in names if not ctx.variables[n].transient]
    if output is not None:
        _write_fragment(output, outcomes, emit, started, err)
    entries = {n: _json_entry(ctx, outcomes[n], settings.max_inline_chars) for n in emit}
    if json_output:
        import json

        sys.stdout.write(
            json.dumps({"proposal": proposal, "run": run, "variables": entries}) + "\n"
        )
        return
    _print_table(out, f"p{proposal} r{run} ({data.value})", entries)
    if output is not None:
        out.print(f"wrote {output}")


def _eval_pool(
    settings: Settings,
    context_python: str | None,
    workers: int | None,
    timeout: float | None,
    memory_mb: int | None,
) -> PoolConfig:
    """Workers for one command on one run: no sharing with other runs, no budget, no idle
    trimming; the command's limits over the settings' ones."""
    from .pool import PoolConfig

    base = settings.pool_config(context_python)
    return dataclasses.replace(
        base,
        size=workers or max(1, settings.parallel_variables),
        time_limit_s=timeout or base.time_limit_s,
        memory_limit_mb=memory_mb or base.memory_limit_mb,
        share=PoolConfig.share,
        memory_budget_mb=0,
        idle_s=0.0,
    )


def _run_target(
    settings: Settings,
    context: Path,
    proposal: int,
    run: int,
    proposal_dir: Path | None,
    err: Console,
) -> RunTarget:
    """The run's folders, from ``--proposal-dir`` or the data root; exits if there are none."""
    from .engine import RunTarget

    if proposal_dir is None:
        proposal_dir = settings.find_proposal_dir(proposal)
        if proposal_dir is None:
            where = settings.data_root or "(RUNSTREAM_EXECUTOR_DATA_ROOT is not set)"
            err.print(
                f"[red]no --proposal-dir given and no folder for p{proposal} under[/] {where}"
            )
            raise typer.Exit(1)
    raw_dir, proc_dir = settings.run_dirs(str(proposal_dir), run)
    if not Path(raw_dir).is_dir() and not Path(proc_dir).is_dir():
        err.print(f"[red]no run folder:[/] neither {raw_dir} nor {proc_dir} exists")
        raise typer.Exit(1)
    context_dir = str(context.resolve().parent)
    return RunTarget(proposal, run, str(proposal_dir.resolve()), context_dir, raw_dir, proc_dir)


async def _evaluate_with_progress(
    config: PoolConfig,
    source: ContextSource,
    target: RunTarget,
    data: str,
    match: Sequence[str],
    mymdc: str | None,
    err: Console,
) -> tuple[LoadedContext, list[str], dict[str, Outcome], float | None]:
    """Start the workers, load the context, evaluate the selected variables with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .engine import evaluate, select, start_time

    with err.status("starting workers and loading the context", spinner="dots"):
        pool, ctx = await _load(config, source)
    try:
        names = select(ctx, data, (), match)
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        )
        label = f"r{target.run:04d}"
        with progress:
            task = progress.add_task(label, total=len(names))

            async def tick(outcome: Outcome) -> None:
                progress.update(task, advance=1, description=f"{label} {outcome.name}")

            outcomes = await evaluate(
                pool, ctx, target, names, parallel=config.size, mymdc=mymdc, on_outcome=tick
            )
        started = await start_time(pool, target)
    finally:
        await pool.close()
    return ctx, names, outcomes, started


def _write_fragment(
    output: Path, outcomes: dict[str, Outcome], emit: list[str], started: float | None, err: Console
) -> None:
    """DAMNIT's per-run HDF5 layout, errors included (``--output``); exits on an OS error."""
    from .results import build_results

    try:
        build_results(
            outcomes,
            emit,
            fragment=output.resolve(),
            start_time=started,
            include_errors_in_file=True,
            always_write=True,
        )
    except OSError as exc:
        err.print(f"[red]cannot write {output}:[/] {exc}")
        raise typer.Exit(1) from None


def _print_table(out: Console, title: str, entries: dict[str, dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("name", "title", "summary", "units", "error"):
        table.add_column(column, overflow="fold")
    for name, entry in entries.items():
        error = f"{entry['error_cls']}: {entry['error']}" if entry["error_cls"] else ""
        table.add_row(name, entry["title"], _summary_text(entry), entry["units"] or "", error)
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add the ``context`` command group to the root ``runstream`` app."""
    app.add_typer(context_app, name="context")


if __name__ == "__main__":  # python -m runstream_executor.cli check|eval ...
    context_app()
