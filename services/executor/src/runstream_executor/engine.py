"""One evaluation pass: the selected variables of one run, scheduled over the pool.

The service (not the worker) walks the dependency graph: each variable is a
separate request, so a variable that hangs, crashes or exhausts memory loses
only its own result (its worker is killed and replaced) and its dependents
follow the dependency rules. Independent variables run in parallel, up to
``parallel`` at a time. Dependency values travel between workers as pickles;
a value that cannot be pickled stays in its worker and its dependents are
sent there.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .context import ContextProblems, ContextSource, LoadedContext, VarDef
from .ctxsupport.rs_ctxrunner.loader import select_names
from .outcome import Outcome, plan_inputs
from .pool import Worker, WorkerLost, WorkerPool

log = logging.getLogger("runstream.executor.engine")

OnOutcome = Callable[[Outcome], Awaitable[None]]


@dataclass(frozen=True)
class RunTarget:
    proposal: int
    run: int
    proposal_dir: str
    context_dir: str
    raw_dir: str
    proc_dir: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "proposal": self.proposal,
            "run": self.run,
            "proposal_dir": self.proposal_dir,
            "context_dir": self.context_dir,
            "raw_dir": self.raw_dir,
            "proc_dir": self.proc_dir,
        }


async def load_context(
    pool: WorkerPool, source: ContextSource, *, time_limit_s: float = 120.0
) -> LoadedContext:
    """Check the context file in a worker. Raises ContextProblems listing every problem."""
    request = {"op": "load", "source": source.source, "path": source.path, "hash": source.hash}
    try:
        try:
            reply = await pool.request(request, time_limit_s=time_limit_s)
        except WorkerLost as exc:
            if exc.error_cls != "WorkerCrashed":
                raise
            # Once more on a fresh worker: the first may have died of something else.
            reply = await pool.request(request, time_limit_s=time_limit_s)
    except WorkerLost as exc:
        raise ContextProblems(
            [{"line": None, "message": f"{exc.error_cls}: {exc}", "kind": "load"}]
        ) from exc
    if not reply.get("ok"):
        problems = reply.get("problems") or [
            {"line": None, "message": reply.get("error", "unknown error"), "kind": "load"}
        ]
        raise ContextProblems(problems)
    variables = {d["name"]: VarDef.from_dict(d) for d in reply["definitions"]}
    return LoadedContext(source=source, variables=variables)


def select(
    ctx: LoadedContext,
    trigger: str,
    names: Iterable[str] = (),
    match: Iterable[str] = (),
    *,
    cluster: bool | None = None,
) -> list[str]:
    """Variables to evaluate, in evaluation order: the selection plus its dependencies.

    ``trigger`` raw/proc keeps only variables of that data kind; all keeps every
    one. ``names`` are exact names, ``match`` case-insensitive substrings of
    titles (DAMNIT's ``--match``); either selects. ``cluster`` keeps only
    (non-)cluster ones.
    """
    candidates = [(n, v.data, v.cluster, v.title) for n, v in ctx.variables.items()]
    closure = select_names(candidates, ctx.all_deps, trigger, names, match, cluster)
    return [n for n in ctx.order if n in closure]


async def _evaluate_one(
    pool: WorkerPool,
    ctx: LoadedContext,
    var: VarDef,
    target: RunTarget,
    inputs: dict[str, Any],
    prefer: Worker | None,
    *,
    keep: bool,
    session: str,
    mymdc: str | None,
    log_file: str | None,
) -> Outcome:
    started = time.perf_counter()
    try:
        worker = await pool.acquire(prefer)
    except WorkerLost as exc:
        return Outcome(var.name, "error", str(exc), exc.error_cls, transient=var.transient)
    reply: dict[str, Any] = {}
    try:
        reply = await worker.request(
            {
                "op": "eval",
                "hash": ctx.source.hash,
                "source": ctx.source.source,
                "path": ctx.source.path,
                "name": var.name,
                "run": target.as_dict(),
                "inputs": inputs,
                "keep": keep,
                "session": session,
                "mymdc": mymdc,
                "log": log_file,
            }
        )
    except WorkerLost as exc:
        log.warning("variable %s of r%d: %s", var.name, target.run, exc)
        return Outcome(
            var.name,
            "error",
            str(exc),
            exc.error_cls,
            duration=time.perf_counter() - started,
            transient=var.transient,
        )
    finally:
        if reply.get("pinned"):
            worker.pinned.add(session)  # not recycled while it holds this pass's values
        await pool.release(worker)
    duration = reply.get("duration", time.perf_counter() - started)
    if not reply.get("ok"):
        return Outcome(
            var.name,
            "error",
            reply.get("error") or "worker error",
            reply.get("error_cls") or "RuntimeError",
            duration=duration,
            transient=var.transient,
        )
    return Outcome(
        var.name,
        reply["status"],
        reply.get("error"),
        reply.get("error_cls"),
        prepared=reply.get("prepared"),
        value=reply.get("value"),
        pinned_to=worker if reply.get("pinned") else None,
        duration=duration,
        transient=var.transient,
    )


async def evaluate(
    pool: WorkerPool,
    ctx: LoadedContext,
    target: RunTarget,
    names: list[str],
    *,
    reused: dict[str, Outcome] | None = None,
    parallel: int = 2,
    keep: set[str] | None = None,
    mymdc: str | None = None,
    on_outcome: OnOutcome | None = None,
    log_file: str | None = None,
) -> dict[str, Outcome]:
    """Evaluate ``names`` (closed under dependencies, in order) for one run.

    ``reused`` outcomes (e.g. raw variables from an earlier pass) are not
    recomputed. ``log_file``: a file the workers append the variables' output to
    (DAMNIT's process log). Returns every outcome, reused ones included.
    """
    session = uuid.uuid4().hex
    outcomes: dict[str, Outcome] = dict(reused or {})
    needed = {d for n in names for d in ctx.variables[n].deps} | (keep or set())
    pending = [n for n in names if n not in outcomes]
    running: dict[asyncio.Task[Outcome], str] = {}
    holders: set[Worker] = set()

    async def record(outcome: Outcome) -> None:
        outcomes[outcome.name] = outcome
        if on_outcome is not None:
            await on_outcome(outcome)

    while pending or running:
        progressed = True
        while progressed and len(running) < max(1, parallel):
            progressed = False
            for name in list(pending):
                if len(running) >= max(1, parallel):
                    break
                var = ctx.variables[name]
                if any(d not in outcomes for d in var.deps):
                    continue
                pending.remove(name)
                progressed = True
                plan = plan_inputs(var, outcomes)
                if isinstance(plan, Outcome):
                    await record(plan)
                    continue
                inputs, holders = plan
                holders.discard(None)
                if len(holders) > 1:
                    await record(
                        Outcome(
                            name,
                            "error",
                            "dependencies that cannot be pickled are held by different workers",
                            "RuntimeError",
                            transient=var.transient,
                        )
                    )
                    continue
                prefer = next(iter(holders)) if holders else None
                task = asyncio.ensure_future(
                    _evaluate_one(
                        pool,
                        ctx,
                        var,
                        target,
                        inputs,
                        prefer,
                        keep=name in needed,
                        session=session,
                        mymdc=mymdc,
                        log_file=log_file,
                    )
                )
                running[task] = name
        if not running:
            if pending:  # dependencies outside the pass: cannot happen for closed selections
                for name in pending:
                    await record(Outcome(name, "error", "dependency not evaluated", "RuntimeError"))
                pending.clear()
            break
        done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            running.pop(task)
            outcome = task.result()
            if outcome.pinned_to is not None:
                holders.add(outcome.pinned_to)
            await record(outcome)
    for holder in holders:  # drop the values kept for this pass
        await _forget(pool, holder, session)
    return outcomes


async def _forget(pool: WorkerPool, worker: Worker, session: str) -> None:
    try:
        worker = await pool.acquire(worker)
    except WorkerLost:
        return  # gone, and its values with it
    try:
        await worker.request({"op": "forget", "session": session}, time_limit_s=30)
    except WorkerLost:
        pass
    finally:
        worker.pinned.discard(session)
        await pool.release(worker)


async def start_time(pool: WorkerPool, target: RunTarget) -> float | None:
    try:
        reply = await pool.request(
            {"op": "start_time", "raw_dir": target.raw_dir, "proc_dir": target.proc_dir},
            time_limit_s=120,
        )
    except WorkerLost:
        return None
    value = reply.get("start_time")
    return float(value) if value is not None else None


__all__ = ["RunTarget", "evaluate", "load_context", "select", "start_time"]
