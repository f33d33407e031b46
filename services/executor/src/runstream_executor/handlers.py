"""Handling one run request end to end: context, selection, evaluation, fragment, messages.

Used by the Kafka handler (a :class:`~.modes.ServicePass`) and by the Slurm job entry
point (a :class:`~.modes.JobPass`): the steps are the same, the mode answers what differs.
Its I/O goes through ports: :class:`Publisher` (every publish is awaited before
:meth:`RunProcessor.process` returns; the offset is committed afterwards),
:class:`~.adapters.files.RunFiles` (folders, context, kept values, fragments) and the
worker pools.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel
from runstream_common.messages import (
    JobRequested,
    ProcessingStateChanged,
    ProcessingStatus,
    ResultsReady,
    RunRequested,
    Selection,
    Trigger,
    VariableResult,
    VariablesDefined,
)
from runstream_common.topics import Topics, run_key

from . import reuse
from .adapters.files import LocalRunFiles, RunFiles
from .context import ContextProblems, ContextSource, LoadedContext
from .engine import Pass, RunTarget, load_context
from .modes import SERVICE_PASS, PassMode
from .outcome import Outcome
from .pool_set import PoolSet
from .results import (
    WrittenResults,
    fit_message,
    fragment_path,
    result_id,
    write_held_results,
)
from .settings import Settings

log = logging.getLogger("runstream.executor.processing")


class Publisher(Protocol):
    async def publish(self, topic: str, message: BaseModel, key: bytes) -> None: ...


Send = Callable[[str, BaseModel], Awaitable[None]]


@dataclass
class PassReport:
    processing_id: str
    status: ProcessingStatus
    reason: str | None = None
    results: ResultsReady | None = None
    job_request: JobRequested | None = None
    counts: dict[str, int] = field(default_factory=dict)


def prune(ctx: LoadedContext, names: list[str], targets: set[str], reused: set[str]) -> list[str]:
    """Drop variables only needed by reused ones."""
    needed: set[str] = set()
    todo = list(targets)
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        if name in reused:
            continue
        todo.extend(ctx.variables[name].deps)
    return [n for n in names if n in needed]


class RunProcessor:
    """Evaluates run requests with warm pools and publishes what happened."""

    def __init__(
        self,
        settings: Settings,
        pools: PoolSet,
        publisher: Publisher,
        topics: Topics,
        files: RunFiles | None = None,
    ) -> None:
        self.settings = settings
        self.pools = pools
        self.publisher = publisher
        self.topics = topics
        self.files: RunFiles = files or LocalRunFiles()
        self.proposal_settings: dict[int, dict[str, str | int | float | bool]] = {}
        self._contexts: OrderedDict[tuple[str, str], LoadedContext] = OrderedDict()
        self._loading: dict[tuple[str, str], asyncio.Future[LoadedContext]] = {}
        self._announced: set[tuple[str, str]] = set()
        self._announcing: dict[tuple[str, str], asyncio.Future[None]] = {}
        self.hostname = socket.gethostname()

    def context_python(self, proposal: int) -> str | None:
        value = self.proposal_settings.get(proposal, {}).get("context_python")
        return str(value) if value else None

    async def _loaded(self, python: str | None, source: ContextSource) -> LoadedContext:
        """The checked context for this source; loaded once per revision, however many
        runs ask for it at the same time."""
        key = (python or "", source.hash)
        ctx = self._contexts.get(key)
        if ctx is not None and ctx.source.path == source.path:
            self._contexts.move_to_end(key)
            return LoadedContext(source=source, variables=ctx.variables)
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._load(python, source))
            self._loading[key] = loading
            loading.add_done_callback(lambda _: self._loading.pop(key, None))
        ctx = await asyncio.shield(loading)
        return LoadedContext(source=source, variables=ctx.variables)

    async def _load(self, python: str | None, source: ContextSource) -> LoadedContext:
        pool = await self.pools.get(python)
        ctx = await load_context(pool, source, time_limit_s=self.settings.context_load_timeout_s)
        self._contexts[(python or "", source.hash)] = ctx
        while len(self._contexts) > 32:
            self._contexts.popitem(last=False)
        return ctx

    async def _announce(self, key: tuple[str, str], message: VariablesDefined, send: Send) -> None:
        """Publish a revision's definitions once, before any of its results."""
        if key in self._announced:
            return
        announcing = self._announcing.get(key)
        if announcing is None:
            announcing = asyncio.ensure_future(send(self.topics.results, message))
            self._announcing[key] = announcing
            announcing.add_done_callback(lambda _: self._announcing.pop(key, None))
        await asyncio.shield(announcing)
        self._announced.add(key)

    async def _keep_for_reuse(
        self, attempt: _Attempt, ctx: LoadedContext, path: Path, outcomes: dict[str, Outcome]
    ) -> None:
        """Keep the raw outcomes that proc and cluster passes of this run depend on."""
        keep = attempt.mode.worth_keeping(ctx) & set(outcomes)
        if not keep or self.settings.reuse_max_value_mb <= 0:
            return
        try:
            await self.files.keep(
                path, outcomes, keep, self.settings.reuse_max_value_mb * 1024 * 1024
            )
        except OSError as exc:
            log.warning("could not keep results for reuse: %s", exc)

    async def poisoned(self, req: RunRequested, reason: str) -> None:
        """This run kept killing the executor: record its pass as failed (it is dead-lettered)."""
        attempt = self._attempt(req, SERVICE_PASS)
        await attempt.send(
            self.topics.processing, attempt.state(ProcessingStatus.FAILED, reason=reason)
        )

    def _attempt(self, req: RunRequested, mode: PassMode) -> _Attempt:
        return _Attempt(
            req,
            mode,
            self.hostname,
            self.publisher,
            self.topics.processing,
            self.settings.progress_after_s,
        )

    async def process(self, req: RunRequested, mode: PassMode = SERVICE_PASS) -> PassReport:
        """One pass over one run, as a sequence of steps that share an :class:`_Attempt`:
        open the run and its context, announce the variables, plan (selection, cluster job,
        reuse), evaluate and write the fragment, publish the results and the final state."""
        attempt = self._attempt(req, mode)
        try:
            return await self._steps(attempt)
        finally:
            attempt.stop_progress()  # a pass that raised publishes no held state later

    async def _steps(self, attempt: _Attempt) -> PassReport:
        req, mode = attempt.req, attempt.mode
        # A service pass's variables all end by then, so its record is finished (and its
        # partition free to move) within the consumer's max poll interval (see app.py).
        deadline = mode.deadline(self.settings.pass_timeout_s)
        attempt.progress(attempt.state(ProcessingStatus.QUEUED))
        try:
            target, source, ctx = await self._open(req)
        except _PassFailed as exc:
            await attempt.settle()
            reason = str(exc)
            await attempt.send(
                self.topics.processing, attempt.state(ProcessingStatus.FAILED, reason=reason)
            )
            return PassReport(attempt.processing_id, ProcessingStatus.FAILED, reason)
        await self._announce(
            (req.context_dir, source.hash),
            VariablesDefined(
                proposal=req.proposal,
                context_hash=source.hash,
                revision=source.revision,
                variables=ctx.definitions(),
                correlation_id=req.correlation_id,
            ),
            attempt.send,
        )
        plan = await self._plan(attempt, ctx, source)
        attempt.progress(attempt.state(ProcessingStatus.RUNNING))
        outcomes, started, written = await self._evaluate(attempt, ctx, target, plan, deadline)
        await self._keep_for_reuse(attempt, ctx, plan.reuse_file, outcomes)
        await attempt.settle()
        results_msg = await self._publish_results(attempt, source, plan, started, written)
        counts = _counts(written.results)
        await attempt.send(
            self.topics.processing, attempt.state(ProcessingStatus.FINISHED, counts=counts)
        )
        return PassReport(
            attempt.processing_id,
            ProcessingStatus.FINISHED,
            None,
            results_msg,
            plan.job_request,
            counts,
        )

    async def _open(self, req: RunRequested) -> tuple[RunTarget, ContextSource, LoadedContext]:
        """The run's folders and its checked context; :class:`_PassFailed` if either is missing."""
        raw_dir, proc_dir = self.settings.run_dirs(req.proposal_dir, req.run)
        if req.trigger is not Trigger.PROC and not await self.files.is_folder(raw_dir):
            # Per-variable FileNotFoundErrors would overwrite good values: fail the pass instead.
            raise _PassFailed(f"run folder {raw_dir} does not exist")
        context_file = Path(req.context_dir) / "context.py"
        try:
            source = await self.files.read_context(context_file)
        except (OSError, UnicodeDecodeError) as exc:
            raise _PassFailed(f"cannot read {context_file}: {exc}") from exc
        try:
            ctx = await self._loaded(self.context_python(req.proposal), source)
        except ContextProblems as exc:
            raise _PassFailed(f"context file cannot be used:\n{exc}") from exc
        except Exception as exc:  # e.g. context_python does not start
            raise _PassFailed(f"{type(exc).__name__}: {exc}") from exc
        target = RunTarget(
            req.proposal, req.run, req.proposal_dir, req.context_dir, raw_dir, proc_dir
        )
        return target, source, ctx

    async def _plan(self, attempt: _Attempt, ctx: LoadedContext, source: ContextSource) -> _Plan:
        """Which variables this pass evaluates and emits; a cluster job for the rest is requested."""
        req, mode = attempt.req, attempt.mode
        names, targets = mode.selection(ctx, req)
        job_request = self._job_request(attempt, ctx)
        if job_request is not None:
            await attempt.send(self.topics.job_requests, job_request)
        emit_names = set(targets)
        reuse_file = reuse.reuse_path(
            Path(req.context_dir) / self.settings.reuse_subdir, req.proposal, req.run, source.hash
        )
        reusable_now = mode.reusable(ctx, names, req)
        reused: dict[str, Outcome] = {}
        if reusable_now and self.settings.reuse_max_value_mb > 0:
            reused = await self.files.load_kept(reuse_file, reusable_now)
            names = prune(ctx, names, targets - set(reused), set(reused))
            emit_names -= set(reused)
        emit = [n for n in names if n in emit_names and not ctx.variables[n].transient]
        rid = result_id(req.request_id, source.hash, emit, extra=mode.result_id_extra(req))
        return _Plan(names, emit, rid, reused, reuse_file, job_request)

    def _job_request(self, attempt: _Attempt, ctx: LoadedContext) -> JobRequested | None:
        """The Slurm job for the selected ``cluster=True`` variables, if there are any."""
        req = attempt.req
        cluster_names = attempt.mode.cluster_variables(ctx, req)
        if not cluster_names:
            return None
        return JobRequested(
            job_request_id=f"{req.request_id}:cluster",
            request_id=req.request_id,
            processing_id=attempt.processing_id,
            proposal=req.proposal,
            run=req.run,
            trigger=req.trigger,
            selection=Selection(names=tuple(cluster_names)),
            context_dir=req.context_dir,
            proposal_dir=req.proposal_dir,
            correlation_id=req.correlation_id,
        )

    async def _evaluate(
        self,
        attempt: _Attempt,
        ctx: LoadedContext,
        target: RunTarget,
        plan: _Plan,
        deadline: float | None,
    ) -> tuple[dict[str, Outcome], float | None, WrittenResults]:
        """One worker evaluates the pass, keeps its values and data, and writes the fragment."""
        req = attempt.req
        pool = await self.pools.get(self.context_python(req.proposal))
        async with Pass(
            pool,
            ctx,
            target,
            parallel=self.settings.parallel_variables,
            hold=True,
            mymdc=self.settings.metadata_provider,
            log_file=self.settings.process_log(req.context_dir, req.proposal, req.run),
            max_inline_chars=self.settings.max_inline_chars,
            inline_scalars=not self.settings.fragment_scalars,
            deadline=deadline,
        ) as run_pass:
            outcomes = await run_pass.run(
                plan.names,
                reused=plan.reused,
                keep=attempt.mode.worth_keeping(ctx),
                on_outcome=self._progress(attempt),
            )
            started = await run_pass.start_time()
            written = await write_held_results(
                run_pass,
                outcomes,
                plan.emit,
                fragment=fragment_path(
                    req.context_dir,
                    self.settings.fragment_subdir,
                    req.proposal,
                    req.run,
                    plan.result_id,
                    attempt=attempt.processing_id,
                ),
                start_time=started,
                max_inline_chars=self.settings.max_inline_chars,
            )
        if written.fragment is not None:  # the worker is free again: now wait for the disk
            removed = await self.files.commit_fragment(
                written.fragment, self.settings.partial_fragment_max_age_s
            )
            if removed:
                log.info("removed partial fragments of attempts that died: %s", removed)
        return outcomes, started, written

    def _progress(self, attempt: _Attempt) -> Callable[[Outcome], Awaitable[None]]:
        """Per-variable processing states, only once the pass is ``progress_after_s`` old."""

        async def on_outcome(outcome: Outcome) -> None:
            if outcome.transient or outcome.reused or not attempt.progressing:
                return  # a short pass: its durations and errors are in results_ready
            status = ProcessingStatus.VARIABLE_DONE
            reason = None
            if outcome.status == "error":
                status = ProcessingStatus.VARIABLE_FAILED
                reason = f"{outcome.error_cls}: {(outcome.error or '')[:2000]}"
            state = attempt.state(
                status, variable=outcome.name, duration_s=outcome.duration, reason=reason
            )
            attempt.progress(state)

        return on_outcome

    async def _publish_results(
        self,
        attempt: _Attempt,
        source: ContextSource,
        plan: _Plan,
        started: float | None,
        written: WrittenResults,
    ) -> ResultsReady | None:
        if not written.results:
            return None
        req = attempt.req
        message = ResultsReady(
            result_id=plan.result_id,
            request_id=req.request_id,
            processing_id=attempt.processing_id,
            proposal=req.proposal,
            run=req.run,
            trigger=req.trigger,
            context_hash=source.hash,
            revision=source.revision,
            context_dir=req.context_dir,
            fragment=written.fragment,
            start_time=started,
            results=fit_message(written.results, self.settings.max_results_bytes),
            correlation_id=req.correlation_id,
        )
        await attempt.send(self.topics.results, message)
        return message


class _PassFailed(Exception):
    """The pass cannot go on: no run folder, or no usable context (its state says why)."""


@dataclass
class _Attempt:
    """One pass over one run: what the steps of :meth:`RunProcessor.process` share.

    Its progress (``queued``, ``running``, per-variable states) is published only once
    the pass is ``progress_after_s`` old, and then at most once per ``progress_after_s``:
    a state that may not go out yet is held, a newer one replaces it, and the held one
    goes out when the time comes. A pass that ends first publishes only how it ended
    (``finished`` or ``failed``; its results carry every duration and error). A state
    nobody would see for more than a moment would cost the store a database write and
    every GUI an update, and a busy machine would send the most of them.
    """

    req: RunRequested
    mode: PassMode
    hostname: str
    publisher: Publisher
    processing_topic: str
    progress_after_s: float
    processing_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    pending: list[asyncio.Task[None]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _next_at: float = 0.0  # when the next progress state may go out
    _held: ProcessingStateChanged | None = None
    _timer: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self._next_at = self.started + self.progress_after_s

    @property
    def progressing(self) -> bool:
        """Whether the pass is old enough for its progress to be published."""
        return time.monotonic() >= self.started + self.progress_after_s

    def state(self, status: ProcessingStatus, **kw: Any) -> ProcessingStateChanged:
        req = self.req
        return ProcessingStateChanged(
            processing_id=self.processing_id,
            request_id=req.request_id,
            proposal=req.proposal,
            run=req.run,
            trigger=req.trigger,
            status=status,
            hostname=self.hostname,
            slurm_job_id=self.mode.slurm_job_id,
            correlation_id=req.correlation_id,
            **kw,
        )

    async def send(self, topic: str, message: BaseModel) -> None:
        await self.publisher.publish(topic, message, run_key(self.req.proposal, self.req.run))

    def progress(self, state: ProcessingStateChanged) -> None:
        """Publish a progress state now, or hold it until the pass may publish again."""
        now = time.monotonic()
        if now >= self._next_at and self._timer is None:
            self._publish(state, now)
            return
        self._held = state
        if self._timer is None:
            self._timer = asyncio.ensure_future(self._release_later())

    def _publish(self, state: ProcessingStateChanged, now: float) -> None:
        self._next_at = now + self.progress_after_s
        self.pending.append(asyncio.ensure_future(self.send(self.processing_topic, state)))

    async def _release_later(self) -> None:
        await asyncio.sleep(max(0.0, self._next_at - time.monotonic()))
        self._timer = None
        held, self._held = self._held, None
        if held is not None:
            self._publish(held, time.monotonic())

    def stop_progress(self) -> None:
        """Drop a held state: the pass is ending."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._held = None

    async def settle(self) -> None:
        """Wait for the progress states sent so far; drop a held one (the pass is ending)."""
        self.stop_progress()
        await asyncio.gather(*self.pending)


@dataclass(frozen=True)
class _Plan:
    names: list[str]  # to evaluate, dependencies included
    emit: list[str]  # to store and publish
    result_id: str
    reused: dict[str, Outcome]
    reuse_file: Path
    job_request: JobRequested | None


def _counts(results: Sequence[VariableResult]) -> dict[str, int]:
    return {
        "ok": sum(1 for r in results if r.error is None),
        "failed": sum(1 for r in results if r.error is not None and r.error_cls != "Skip"),
        "skipped": sum(1 for r in results if r.error_cls == "Skip"),
    }


def request_for_job(
    *,
    request_id: str,
    proposal: int,
    run: int,
    trigger: str,
    context_dir: str,
    proposal_dir: str,
) -> RunRequested:
    return RunRequested(
        request_id=request_id,
        proposal=proposal,
        run=run,
        trigger=Trigger(trigger),
        context_dir=context_dir,
        proposal_dir=proposal_dir,
    )
