"""The gateway's logic: requests become held jobs, the cap releases them, states are published.

Crash safety: a request is acknowledged (the handler returns) only after its job
exists in the backend. Every job carries ``runstream job_request_id=... proposal=P
run=R`` in its comment; the first thing the gateway does is list the backend's jobs,
so a request delivered again after a crash finds its job and adopts it.

Concurrency cap: every job is submitted *held*; :meth:`Gateway.release_ready`
releases the oldest held jobs of a proposal while fewer than ``concurrent_jobs``
of its jobs are released and unfinished. The queue of waiting requests therefore
lives in Slurm (``squeue`` shows them as ``JobHeldUser``) and survives restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

from runstream_common.errors import PermanentError, TransientError
from runstream_common.kafka import Delivery
from runstream_common.messages import (
    JobCancelRequested,
    JobRequested,
    JobState,
    JobStateChanged,
)

from .backend import Backend, SubmitOutcomeUnclear
from .job_request import ProposalSettings, build_spec, concurrent_jobs, with_trace_context
from .jobspec import JobInfo, JobTag
from .settings import Settings

log = logging.getLogger("runstream.slurm_gateway")

StatePublisher = Callable[[JobStateChanged], Awaitable[None]]
LineAppender = Callable[[str, str], Awaitable[None]]


class ProposalSettingsView:
    """The latest settings of every proposal, filled from the compacted topic."""

    def __init__(self) -> None:
        self.by_proposal: dict[int, dict[str, str | int | float | bool]] = {}
        self.loaded = asyncio.Event()

    def set(self, proposal: int, settings: Mapping[str, str | int | float | bool]) -> None:
        self.by_proposal[proposal] = dict(settings)

    def get(self, proposal: int) -> ProposalSettings:
        return self.by_proposal.get(proposal, {})


@dataclass
class Tracked:
    info: JobInfo
    tag: JobTag
    published: tuple[JobState, bool] | None = None

    @property
    def active(self) -> bool:
        """Counts against the cap: released and not finished."""
        return not self.info.terminal and not self.info.held


class Gateway:
    def __init__(
        self,
        *,
        backend: Backend,
        publish: StatePublisher,
        append_line: LineAppender,
        settings: Settings,
        proposals: ProposalSettingsView,
    ) -> None:
        self.backend = backend
        self.publish = publish
        self.append_line = append_line
        self.settings = settings
        self.proposals = proposals
        self.jobs: dict[int, Tracked] = {}
        self.instance = settings.kafka.topic_prefix
        self._lock = asyncio.Lock()
        self._synced = False
        self._waiting: dict[str, str] = {}  # job_request_id -> reason last published
        # job_request_id -> when a submit of it had an unclear outcome (its job may exist)
        self._unclear: dict[str, float] = {}

    # ------------------------------------------------------------------ views
    def by_request(self, job_request_id: str) -> Tracked | None:
        found = [t for t in self.jobs.values() if t.tag.job_request_id == job_request_id]
        if not found:
            return None
        live = [t for t in found if t.info.state is not JobState.VANISHED]
        return max(live or found, key=lambda t: t.info.job_id)

    def of_run(self, proposal: int, run: int) -> list[Tracked]:
        return [t for t in self.jobs.values() if (t.tag.proposal, t.tag.run) == (proposal, run)]

    def cap(self, proposal: int) -> int:
        return concurrent_jobs(self.proposals.get(proposal), self.settings.job.concurrent_jobs)

    # ------------------------------------------------------------------ state
    def _apply(self, snapshot: list[JobInfo]) -> None:
        seen: set[int] = set()
        for info in snapshot:
            tag = info.tag
            if tag is None or tag.instance != self.instance:
                continue  # not ours (another installation, or not runstream at all)
            seen.add(info.job_id)
            tracked = self.jobs.get(info.job_id)
            if tracked is None:
                self.jobs[info.job_id] = Tracked(info, tag)
            else:
                tracked.info = info
        for job_id in [
            job_id
            for job_id, t in self.jobs.items()
            if job_id not in seen
            and t.info.terminal
            and t.published is not None
            and t.published[0] is t.info.state
        ]:
            del self.jobs[job_id]  # finished, reported and purged by the backend: forget it
        for tracked in self.jobs.values():
            if tracked.info.job_id not in seen and not tracked.info.terminal:
                tracked.info = replace(
                    tracked.info,
                    state=JobState.VANISHED,
                    held=False,
                    reason=f"{self.backend.name} no longer knows job {tracked.info.job_id}",
                )

    async def sync(self, *, full: bool = False) -> None:
        """Read the backend's jobs, release what the cap allows, publish changes."""
        async with self._lock:
            await self._sync_locked(full=full or not self._synced)

    async def _sync_locked(self, *, full: bool) -> None:
        snapshot = await self.backend.snapshot(full=full)
        if snapshot is not None:
            self._apply(snapshot)
            self._synced = True
        for proposal in sorted({t.tag.proposal for t in self.jobs.values()}):
            await self._release_ready(proposal)
        await self._publish_changes()

    async def _release_ready(self, proposal: int) -> None:
        mine = [t for t in self.jobs.values() if t.tag.proposal == proposal]
        free = self.cap(proposal) - sum(1 for t in mine if t.active)
        held = sorted(
            (t for t in mine if t.info.held and not t.info.terminal), key=lambda t: t.info.job_id
        )
        for tracked in held[: max(0, free)]:
            await self.backend.release(tracked.info.job_id)
            tracked.info = replace(tracked.info, held=False)
            log.info(
                "released %s job %d (p%d r%d)",
                self.backend.name,
                tracked.info.job_id,
                proposal,
                tracked.tag.run,
            )

    def _message(self, tracked: Tracked, reason: str | None = None) -> JobStateChanged:
        info = tracked.info
        if reason is None and info.held and info.state is JobState.PENDING:
            cap = self.cap(tracked.tag.proposal)
            reason = (
                f"held: proposal {tracked.tag.proposal} already has {cap} unfinished jobs "
                f"(concurrent_jobs={cap})"
            )
        return JobStateChanged(
            job_request_id=tracked.tag.job_request_id,
            proposal=tracked.tag.proposal,
            run=tracked.tag.run,
            state=info.state,
            backend=self.backend.name,
            job_id=info.job_id,
            exit_status=info.exit_status,
            signal=info.signal,
            log_path=info.log_path,
            reason=reason or info.reason,
            correlation_id=tracked.tag.job_request_id,
        )

    async def _publish_changes(self) -> None:
        for tracked in sorted(self.jobs.values(), key=lambda t: t.info.job_id):
            key = (tracked.info.state, tracked.info.held)
            if tracked.published is not None and tracked.published[0] is key[0]:
                continue  # held -> released stays "pending": one message
            await self.publish(self._message(tracked))
            tracked.published = key

    # ------------------------------------------------------------------ handlers
    async def handle_request(self, req: JobRequested, delivery: Delivery | None = None) -> None:
        """Submit (held) or adopt the job of ``req``; return only once it is in the backend."""
        await self._settings_ready()
        try:
            async with self._lock:
                if not self._synced:
                    await self._sync_locked(full=True)
                if req.job_request_id in self._unclear:
                    await self._sync_locked(full=True)  # is the job there after all?
                if not self._adopt(req):
                    self._check_unclear(req)
                    await self._submit(req)
                await self._release_ready(req.proposal)
                await self._publish_changes()
        except TransientError as exc:
            await self._report_waiting(req, str(exc))
            raise
        self._waiting.pop(req.job_request_id, None)

    def _adopt(self, req: JobRequested) -> bool:
        """True if the backend already has a (live) job for ``req``."""
        existing = self.by_request(req.job_request_id)
        if existing is None or existing.info.state is JobState.VANISHED:
            return False
        log.info(
            "request %s already has %s job %d (%s): adopted, not submitted again",
            req.job_request_id,
            self.backend.name,
            existing.info.job_id,
            existing.info.state.value,
        )
        self._unclear.pop(req.job_request_id, None)
        return True

    def _check_unclear(self, req: JobRequested) -> None:
        """After an unclear submit: wait for its job to show before submitting again."""
        since = self._unclear.get(req.job_request_id)
        if since is None:
            return
        waited = time.monotonic() - since
        if waited < self.settings.slurm.unclear_submit_wait_s:
            raise TransientError(
                f"the outcome of submitting request {req.job_request_id} is unclear and "
                f"{self.backend.name} does not list its job (looked for {waited:.0f} s of "
                f"{self.settings.slurm.unclear_submit_wait_s:g}); looking again before any new submit"
            )
        log.warning(
            "request %s: no job after an unclear submit %.0f s ago; submitting it again",
            req.job_request_id,
            waited,
        )
        del self._unclear[req.job_request_id]

    async def _submit(self, req: JobRequested) -> None:
        try:
            spec = build_spec(
                req, self.proposals.get(req.proposal), self.settings.job, self.settings.kafka
            )
            spec = with_trace_context(spec)
            job_id = await self.backend.submit(spec, hold=True)
        except SubmitOutcomeUnclear as exc:
            log.warning("request %s: %s; looking its job up", req.job_request_id, exc)
            self._unclear[req.job_request_id] = time.monotonic()
            await self._sync_locked(full=True)
            if self._adopt(req):
                return
            raise
        except PermanentError as exc:
            log.warning("request %s cannot be submitted: %s", req.job_request_id, exc)
            await self.publish(
                JobStateChanged(
                    job_request_id=req.job_request_id,
                    proposal=req.proposal,
                    run=req.run,
                    state=JobState.SUBMIT_FAILED,
                    backend=self.backend.name,
                    reason=str(exc),
                    correlation_id=req.job_request_id,
                )
            )
            return
        info = JobInfo(
            job_id=job_id,
            name=spec.name,
            comment=spec.comment,
            state=JobState.PENDING,
            held=True,
            log_path=spec.log_path,
            raw_state="PENDING",
        )
        tag = info.tag
        assert tag is not None
        self.jobs[job_id] = Tracked(info, tag)
        log.info(
            "submitted %s job %d for request %s (p%d r%d)",
            self.backend.name,
            job_id,
            req.job_request_id,
            req.proposal,
            req.run,
        )

    async def _report_waiting(self, req: JobRequested, reason: str) -> None:
        """A dependency is down: say so on the job state topic (once per reason)."""
        text = f"waiting for {self.backend.name}: {reason}"
        if self._waiting.get(req.job_request_id) == text:
            return
        try:
            await self.publish(
                JobStateChanged(
                    job_request_id=req.job_request_id,
                    proposal=req.proposal,
                    run=req.run,
                    state=JobState.SUBMITTING,
                    backend=self.backend.name,
                    reason=text[:2000],
                    correlation_id=req.job_request_id,
                )
            )
            self._waiting[req.job_request_id] = text
        except Exception:
            log.exception("could not publish the waiting state of %s", req.job_request_id)

    async def handle_cancel(
        self, cmd: JobCancelRequested, delivery: Delivery | None = None
    ) -> None:
        """Cancel every unfinished job of the run and write it into the run's log."""
        async with self._lock:
            await self._sync_locked(full=True)
            targets = [t for t in self.of_run(cmd.proposal, cmd.run) if not t.info.terminal]
            if not targets:
                log.info("cancel p%d r%d: no unfinished job", cmd.proposal, cmd.run)
            for tracked in targets:
                info = tracked.info
                known = await self.backend.cancel(info.job_id)
                what = "held" if info.held else info.state.value
                line = (
                    f"Cancelled {what} {self.backend.name} job {info.job_id} "
                    f"(request {tracked.tag.job_request_id}) by runstream: {cmd.reason}"
                    if known
                    else f"Cancel: {self.backend.name} job {info.job_id} was already gone"
                )
                log.info("p%d r%d: %s", cmd.proposal, cmd.run, line)
                if info.log_path:
                    try:
                        await self.append_line(info.log_path, line)
                    except OSError as exc:
                        log.warning("cannot write to %s: %s", info.log_path, exc)
            await self._sync_locked(full=True)

    async def handle_settings(
        self, proposal: int, settings: Mapping[str, str | int | float | bool]
    ) -> None:
        self.proposals.set(proposal, settings)

    async def _settings_ready(self) -> None:
        if self.proposals.loaded.is_set():
            return
        try:
            await asyncio.wait_for(self.proposals.loaded.wait(), self.settings.settings_wait_s)
        except TimeoutError:
            log.warning(
                "proposal settings not loaded after %ss; using defaults",
                self.settings.settings_wait_s,
            )
            self.proposals.loaded.set()

    # ------------------------------------------------------------------ loop
    async def poll_forever(self, stop: asyncio.Event) -> None:
        """Track job states until ``stop``; back off while the backend is unreachable."""
        delay = self.settings.slurm.poll_interval_s
        failures = 0
        while not stop.is_set():
            try:
                await self.sync()
                failures = 0
                wait = delay
            except TransientError as exc:
                failures += 1
                wait = min(self.settings.retry_backoff_max_s, delay * 2**failures)
                log.warning("job polling failed (%d in a row): %s", failures, exc)
            except Exception:
                failures += 1
                wait = min(self.settings.retry_backoff_max_s, delay * 2**failures)
                log.exception("job polling crashed (%d in a row)", failures)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)
