"""One evaluation pass: the selected variables of one run, scheduled over the pool.

The service (not the worker) walks the dependency graph: each variable is a
separate request, so a variable that hangs, crashes or exhausts memory loses
only its own result (its worker is killed and replaced) and its dependents
follow the dependency rules.

A pass has a *home*: one worker it keeps from its first variable to its end.
Its variables run there one after another, their values stay there for the
variables that depend on them (nothing is pickled) and, in *hold* mode, so does
the data to store: the home writes the HDF5 fragment at the end
(:meth:`Pass.write`), so each result is computed once, written once, and never
copied through the service. Several runs in flight keep the workers busy;
``parallel`` > 1 lets variables that nothing in the pass depends on run beside
it on workers that are idle at that moment (their data comes back with the
reply, for the home to write). A pass only ever waits for its home, never while
holding another worker, so passes in flight cannot deadlock over workers.

If the home dies (a crash, a time or memory limit), that variable gets the
error and the pass goes on with a new home; what died with the old one is
computed again, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .admission import Admission
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


class _Place(enum.Enum):
    HOME = "home"  # the pass's own worker
    ANY = "any"  # any idle worker beside it (parallel > 1)
    WAIT = "wait"  # not now: the worker it needs is busy
    CONFLICT = "conflict"  # unpicklable dependencies held by different workers


class _LentHomeLost(WorkerLost):
    """The home died while lent to other passes (see ``Pass._lend_home``)."""

    def __init__(self, worker: Worker) -> None:
        super().__init__("the worker keeping this pass's values died", "WorkerCrashed")
        self.worker = worker


PICKLE_BESIDE_MAX_BYTES = 64 * 1024

PASS_TIME_LIMIT = "Time limit of the pass (pass_timeout_s) exceeded before this variable finished"


class Pass:
    """One evaluation pass over one run; see the module docstring.

    Use as ``async with Pass(...) as p: outcomes = await p.run(names)``; in hold
    mode write the fragment with :meth:`write` before leaving the block, which
    drops what the workers keep for the pass and gives its home back to the pool.
    """

    def __init__(
        self,
        pool: WorkerPool,
        ctx: LoadedContext,
        target: RunTarget,
        *,
        parallel: int = 1,
        hold: bool = False,
        mymdc: str | None = None,
        log_file: str | None = None,
        max_inline_chars: int = 16384,
        inline_scalars: bool = True,
        deadline: float | None = None,
    ) -> None:
        self.pool = pool
        # time.monotonic() by which every variable must be done (the pass's time limit)
        self.deadline = deadline
        self.ctx = ctx
        self.target = target
        self.parallel = max(1, parallel)
        self.hold = hold
        self.mymdc = mymdc
        self.log_file = log_file
        self.max_inline_chars = max_inline_chars
        self.inline_scalars = inline_scalars
        self.session = uuid.uuid4().hex
        self.share = tuple(filter(None, pool.config.share.split(",")))
        self.outcomes: dict[str, Outcome] = {}
        # large variables of every pass in flight take turns (0 limit: off; see admission.py)
        self.admission: Admission = (
            getattr(getattr(pool, "guard", None), "admission", None) or Admission()
        )
        self.home: Worker | None = None
        self._home_clean = True  # nothing of this pass is kept in the home
        # the home is back in the pool (keeping this pass's values) while a large variable
        # waits for admission: other passes' variables use it meanwhile (see _lend_home)
        self._lent = False
        self._again: set[str] = set()  # variables computed again after their worker died

    async def __aenter__(self) -> Pass:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ evaluating

    async def run(
        self,
        names: list[str],
        *,
        reused: dict[str, Outcome] | None = None,
        keep: set[str] | None = None,
        on_outcome: OnOutcome | None = None,
    ) -> dict[str, Outcome]:
        """Evaluate ``names`` (closed under dependencies, in order).

        ``reused`` outcomes (e.g. raw variables from an earlier pass) are not
        recomputed; ``keep``: variables whose values are wanted as pickles
        (``Outcome.value``). Returns every outcome, reused ones included.
        """
        self.outcomes.update(reused or {})
        needed = {d for n in names for d in self.ctx.variables[n].deps}
        pending = [n for n in names if n not in self.outcomes]
        running: dict[asyncio.Task[Outcome], tuple[str, _Place | Worker]] = {}

        async def record(outcome: Outcome) -> None:
            self.outcomes[outcome.name] = outcome
            if on_outcome is not None:
                await on_outcome(outcome)

        while pending or running:
            since = self.admission.version
            held = await self._start_ready(pending, running, needed, keep or set(), record)
            if not running and held:  # only large variables left, and no room for them yet
                await self._lend_home()
                await self.admission.changed(since)
                if self._lent and not self._home_idle():
                    # its home still works for another pass: let a waiting pass whose
                    # home is free take the room first, if there is one
                    await asyncio.sleep(0)
                continue
            if not running:
                for name in pending:  # dependencies outside the pass: not for closed selections
                    await record(Outcome(name, "error", "dependency not evaluated", "RuntimeError"))
                break
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                running.pop(task)
                outcome = task.result()
                lost = outcome.extra.pop("lost", None)
                if lost is not None:
                    pending = self._lost(lost, pending, needed)
                if outcome.extra.pop("again", False) and outcome.name not in self._again:
                    # its lent home died before it started: not its fault, it runs again
                    self._again.add(outcome.name)
                    pending = self._in_order([*pending, outcome.name])
                    continue
                await record(outcome)
        return self.outcomes

    async def _start_ready(
        self,
        pending: list[str],
        running: dict[asyncio.Task[Outcome], tuple[str, _Place | Worker]],
        needed: set[str],
        keep: set[str],
        record: OnOutcome,
    ) -> bool:
        """Start every pending variable whose dependencies are done and that has a place.

        Returns whether a large variable was held back by the admission by memory.
        """
        held = False
        for name in list(pending):
            if len(running) >= self.parallel:
                return held
            var = self.ctx.variables[name]
            if any(d not in self.outcomes for d in var.deps):
                continue
            plan = plan_inputs(var, self.outcomes)
            if isinstance(plan, Outcome):  # skipped by the dependency rules
                pending.remove(name)
                await record(plan)
                continue
            inputs, holders = plan
            holders.discard(None)
            place = self._place(name, holders, set(running.values()), needed)
            if place is _Place.WAIT:
                continue
            need = 0.0
            if place is not _Place.CONFLICT:
                need = self.admission.need(*self._admission_keys(name))
                if not self.admission.try_take(need):
                    held = True
                    if isinstance(place, Worker):
                        await self.pool.release(place)
                    continue
            pending.remove(name)
            if place is _Place.CONFLICT:
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
            flags = {"keep": name in needed, "pickle": name in keep}
            task = asyncio.ensure_future(self._run_admitted(need, place, var, inputs, flags))
            running[task] = (name, place)
        return held

    def _place(
        self, name: str, holders: set[Any], busy: set[tuple[str, _Place | Worker]], needed: set[str]
    ) -> _Place | Worker:
        """Where a ready variable runs: at home (where its dependencies' values are), or,
        with ``parallel`` > 1, on an idle worker beside it if nothing depends on it.

        A pass waits only for its home, never while holding another worker, so passes
        in flight cannot wait for each other's workers.
        """
        places = {p for _, p in busy}
        if any(h is not self.home for h in holders):
            return _Place.CONFLICT  # cannot happen: values are kept at home only
        if _Place.HOME not in places:
            return _Place.HOME
        if holders or name in needed or len(busy) >= self.parallel:
            return _Place.WAIT
        helper = self.pool.try_acquire()
        return helper if helper is not None else _Place.WAIT

    def _admission_keys(self, name: str) -> tuple[tuple[str, str], tuple[str, str]]:
        """What admission remembers a variable by: this revision of the context file, and
        the file itself (for the first run of its next revision)."""
        return (self.ctx.source.hash, name), (f"file:{self.ctx.source.path}", name)

    async def _run_admitted(
        self,
        need: float,
        place: _Place | Worker,
        var: VarDef,
        inputs: dict[str, Any],
        flags: dict[str, bool],
    ) -> Outcome:
        try:
            return await self._run_one(place, var, inputs, flags)
        finally:
            self.admission.give(need)

    async def _run_one(
        self, place: _Place | Worker, var: VarDef, inputs: dict[str, Any], flags: dict[str, bool]
    ) -> Outcome:
        if place is _Place.HOME:
            try:
                home = await self._home()
            except _LentHomeLost as exc:
                outcome = Outcome(
                    var.name, "error", str(exc), exc.error_cls, transient=var.transient
                )
                outcome.extra.update(lost=exc.worker, again=True)
                return outcome
            except WorkerLost as exc:
                return Outcome(var.name, "error", str(exc), exc.error_cls, transient=var.transient)
            return await self._eval(home, var, inputs, flags)
        assert isinstance(place, Worker)
        try:  # a worker beside the home: it keeps nothing, its data comes back with the reply
            outcome = await self._eval(place, var, inputs, {**flags, "give": True})
            if outcome.pinned_to is place:
                # A value wanted as a pickle that could not be pickled stays in the worker:
                # nothing of this pass needs it (dependents run at home), so drop it there.
                outcome.pinned_to = None
                with contextlib.suppress(WorkerLost):
                    await place.request({"op": "forget", "session": self.session}, time_limit_s=30)
            return outcome
        finally:
            await self.pool.release(place)

    async def _lend_home(self) -> None:
        """While this pass waits for admission, its home serves other passes' variables.

        It keeps what it holds for this pass (``pinned``: not recycled, retired or
        re-forked meanwhile), and the pool keeps it for this pass when it asks again.
        """
        home = self.home
        if home is None or home.dead or self._lent:
            return
        self._lent = True
        home.pinned.add(self.session)
        await self.pool.release(home)

    def _home_idle(self) -> bool:
        return self.home is None or self.pool.is_idle(self.home)

    async def _home(self) -> Worker:
        if self._lent:
            self._lent = False
            lent, self.home = self.home, None
            assert lent is not None
            lent.pinned.discard(self.session)
            try:
                self.home = await self.pool.acquire(prefer=lent)
            except WorkerLost as exc:
                if not lent.dead:
                    raise
                raise _LentHomeLost(lent) from exc
            return self.home
        if self.home is None or self.home.dead:
            self.home = await self.pool.acquire()
            self._home_clean = True
        return self.home

    def _request(
        self, var: VarDef, inputs: dict[str, Any], flags: dict[str, bool]
    ) -> dict[str, Any]:
        keep = flags["keep"]
        source = self.ctx.source
        return {
            "op": "eval",
            "hash": source.hash,
            "source": source.source,
            "path": source.path,
            "name": var.name,
            "run": self.target.as_dict(),
            "inputs": inputs,
            # One worker per pass: values stay where they were made. With variables
            # beside it they travel as pickles, so a dependent may run anywhere.
            "keep": keep or flags["pickle"],
            "pin": keep and self.parallel == 1,
            "pickle": flags["pickle"] or (keep and self.parallel > 1),
            # pickled only so that a dependent could run beside the home: not worth it for
            # a large value (it would cross the pipe twice); that one stays at home
            "pickle_max_bytes": 0 if flags["pickle"] else PICKLE_BESIDE_MAX_BYTES,
            "hold": self.hold,
            "give": flags.get("give", False),
            "inline_scalars": self.inline_scalars,
            "max_inline_chars": self.max_inline_chars,
            "session": self.session,
            "mymdc": self.mymdc,
            "log": self.log_file,
            "share": self.share,
        }

    async def _eval(
        self, worker: Worker, var: VarDef, inputs: dict[str, Any], flags: dict[str, bool]
    ) -> Outcome:
        started = time.perf_counter()
        limit_s, by_deadline = self._time_limit()
        if limit_s <= 0:
            return Outcome(
                var.name, "error", PASS_TIME_LIMIT, "TimeLimitExceeded", transient=var.transient
            )
        try:
            reply = await worker.request(self._request(var, inputs, flags), time_limit_s=limit_s)
        except WorkerLost as exc:
            return await self._worker_lost(worker, var, exc, started, by_deadline)
        duration = reply.get("duration", time.perf_counter() - started)
        key, fallback = self._admission_keys(var.name)
        self.admission.learn(key, reply.get("peak_mb"), also=fallback)
        if not reply.get("ok"):
            return Outcome(
                var.name,
                "error",
                reply.get("error") or "worker error",
                reply.get("error_cls") or "RuntimeError",
                duration=duration,
                transient=var.transient,
            )
        return self._outcome(worker, var, reply, duration, given=bool(flags.get("give")))

    async def _worker_lost(
        self, worker: Worker, var: VarDef, exc: WorkerLost, started: float, by_deadline: bool
    ) -> Outcome:
        """The variable's worker died (crash, time or memory limit): its error, and a new home."""
        log.warning("variable %s of r%d: %s", var.name, self.target.run, exc)
        message = str(exc)
        if by_deadline and exc.error_cls == "TimeLimitExceeded":
            message = PASS_TIME_LIMIT
        outcome = Outcome(
            var.name,
            "error",
            message,
            exc.error_cls,
            duration=time.perf_counter() - started,
            transient=var.transient,
        )
        outcome.extra["lost"] = worker
        if worker is self.home:
            self.home = None
            await self.pool.release(worker)  # dead: a replacement starts
        return outcome

    def _outcome(
        self, worker: Worker, var: VarDef, reply: dict[str, Any], duration: float, *, given: bool
    ) -> Outcome:
        """A worker's answer for a variable, with where its value and data are kept."""
        prepared = reply.get("prepared")
        held = (
            self.hold and not given and prepared is not None and bool(prepared.get("in_fragment"))
        )
        pinned = bool(reply.get("pinned"))
        if held or pinned:
            self._home_clean = False
        outcome = Outcome(
            var.name,
            reply["status"],
            reply.get("error"),
            reply.get("error_cls"),
            prepared=prepared,
            value=reply.get("value"),
            pinned_to=worker if pinned else None,
            held_by=worker if held else None,
            duration=duration,
            transient=var.transient,
        )
        if given and self.hold:
            outcome.extra["given"] = True  # its data is in ``prepared``, for the home to write
        return outcome

    def _time_limit(self) -> tuple[float, bool]:
        """The next variable's time limit, and whether it is the pass's deadline."""
        own = self.pool.config.time_limit_s
        if self.deadline is None:
            return own, False
        left = self.deadline - time.monotonic()
        return (left, True) if left < own else (own, False)

    def _lost(self, dead: Worker, pending: list[str], needed: set[str]) -> list[str]:
        """Values and data that died with ``dead``: compute them again (once)."""
        for name, outcome in list(self.outcomes.items()):
            lost_value = outcome.pinned_to is dead and name in needed
            if outcome.reused or not (lost_value or outcome.held_by is dead):
                continue
            if name in self._again:
                self.outcomes[name] = Outcome(
                    name,
                    "error",
                    "its value was lost twice with the worker keeping it",
                    "WorkerCrashed",
                    transient=outcome.transient,
                )
                continue
            log.info("computing %s of r%d again: its worker died", name, self.target.run)
            self._again.add(name)
            del self.outcomes[name]
            pending.append(name)
        return self._in_order(pending)

    def _in_order(self, names: list[str]) -> list[str]:
        order = {n: i for i, n in enumerate(self.ctx.order)}
        return sorted(names, key=order.__getitem__)

    # ------------------------------------------------------------------ after the pass

    async def start_time(self) -> float | None:
        """The run's start time (by the pass's own worker, which has the run open)."""
        request = {
            "op": "start_time",
            "raw_dir": self.target.raw_dir,
            "proc_dir": self.target.proc_dir,
        }
        try:
            reply = await (await self._home()).request(request, time_limit_s=120)
        except WorkerLost:
            if self.home is not None and self.home.dead:
                await self.pool.release(self.home)
                self.home = None
            return None
        value = reply.get("start_time")
        return float(value) if value is not None else None

    async def write(
        self,
        path: str | os.PathLike[str],
        names: list[str],
        *,
        start_time: float | None,
        errors: dict[str, tuple[str, str]] | None = None,
        always: bool = False,
        sync: bool = True,
    ) -> dict[str, tuple[str, str]]:
        """Write the data held for ``names`` into the fragment ``path`` (hold mode).

        The home writes it, with the data that variables evaluated beside it brought back.
        ``sync=False``: only ``path + '.writing'`` is written, for the caller to commit
        (fsync and rename) after the worker went back to the pool.
        Returns the variables whose data could not be written: name -> (message, class).
        """
        try:
            writer = await self._home()
        except WorkerLost as exc:
            return {n: (f"the fragment could not be written: {exc}", exc.error_cls) for n in names}
        extra = {n: self.outcomes[n].prepared for n in names if self.outcomes[n].extra.get("given")}
        request = {
            "op": "write",
            "session": self.session,
            "path": os.fspath(path),
            "names": names,
            "extra": extra,
            "errors": errors or {},
            "start_time": start_time,
            "always": always,
            "sync": sync,
        }
        try:
            reply = await writer.request(request)
        except WorkerLost as exc:
            self.home = None
            await self.pool.release(writer)
            return {n: (f"the fragment could not be written: {exc}", exc.error_cls) for n in names}
        self._home_clean = True  # the write dropped what the home kept for the pass
        return {n: (str(m), str(c)) for n, (m, c) in (reply.get("failed") or {}).items()}

    async def close(self) -> None:
        """Drop what the home keeps for this pass and give it back to the pool."""
        if self._lent:
            try:
                await self._home()
            except WorkerLost:
                self.home = None  # it died while lent: nothing left to drop
        home, self.home = self.home, None
        if home is None:
            return
        if not self._home_clean and not home.dead:
            with contextlib.suppress(WorkerLost):
                await home.request({"op": "forget", "session": self.session}, time_limit_s=30)
        await self.pool.release(home)


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
    """Evaluate ``names`` for one run; the outcomes carry the data to store (``prepared``).

    ``log_file``: a file the workers append the variables' output to (DAMNIT's
    process log). See :class:`Pass` for the service's way (data kept in workers).
    """
    async with Pass(pool, ctx, target, parallel=parallel, mymdc=mymdc, log_file=log_file) as p:
        return await p.run(names, reused=reused, keep=keep, on_outcome=on_outcome)


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


__all__ = ["Pass", "RunTarget", "evaluate", "load_context", "select", "start_time"]
