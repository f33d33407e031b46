"""Helpers for executor tests: write a context, load it, evaluate it on a mock run."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

from runstream_executor.context import ContextSource, LoadedContext
from runstream_executor.engine import RunTarget, evaluate, load_context, select
from runstream_executor.outcome import Outcome
from runstream_executor.pool import WorkerPool


@dataclass
class Evaluated:
    ctx: LoadedContext
    names: list[str]
    outcomes: dict[str, Outcome]
    context_dir: Path

    def error(self, name: str) -> tuple[str | None, str | None]:
        o = self.outcomes[name]
        return o.error, o.error_cls

    def summary(self, name: str) -> object:
        prepared = self.outcomes[name].prepared
        assert prepared is not None, (name, self.outcomes[name])
        return prepared["summary"]


def write_context(context_dir: Path, code: str) -> ContextSource:
    context_dir.mkdir(parents=True, exist_ok=True)
    path = context_dir / "context.py"
    path.write_text(textwrap.dedent(code))
    return ContextSource.read(path)


def target(proposal_dir: Path, context_dir: Path, run: int = 1, proposal: int = 1234) -> RunTarget:
    return RunTarget(
        proposal,
        run,
        str(proposal_dir),
        str(context_dir),
        str(proposal_dir / "raw" / f"r{run:04d}"),
        str(proposal_dir / "proc" / f"r{run:04d}"),
    )


async def run_context(
    pool: WorkerPool,
    code: str,
    context_dir: Path,
    proposal_dir: Path,
    *,
    run: int = 1,
    trigger: str = "all",
    match: tuple[str, ...] = (),
    names: tuple[str, ...] = (),
    parallel: int = 2,
    mymdc: str | None = None,
) -> Evaluated:
    source = write_context(context_dir, code)
    ctx = await load_context(pool, source)
    selected = select(ctx, trigger, names, match)
    outcomes = await evaluate(
        pool,
        ctx,
        target(proposal_dir, context_dir, run),
        selected,
        parallel=parallel,
        mymdc=mymdc,
    )
    return Evaluated(ctx, selected, outcomes, context_dir)
