"""The local backend: each job is a subprocess of the gateway, with Slurm's contract.

Same clean environment, working directory, appended run log, time limit (TIMEOUT,
SIGTERM then SIGKILL), hold/release for the concurrency cap, and cancel. With a journal (the default in
the service) jobs survive a gateway restart: see ``local_journal``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pwd
import shutil
import signal
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from runstream_common.errors import ConfigurationError
from runstream_common.messages import JobState

from ..backend import BackendName
from ..jobspec import JobInfo, JobSpec
from .local_journal import Journal, pid_alive
from .log_files import ensure_log_dir

log = logging.getLogger("runstream.slurm_gateway.local")


def append_restart_note(path: str, job_id: int) -> None:
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(
            f"runstream: local job {job_id} runs again at {stamp}: the gateway stopped while it ran\n"
        )


def privilege_drop(user: str) -> tuple[str, ...]:
    """The command prefix that runs a job as ``user`` (its groups, no new privileges).

    Raises ConfigurationError when this process cannot switch users: it must be root or
    hold CAP_SETUID and CAP_SETGID, ``user`` must exist and util-linux ``setpriv`` be there.
    """
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigurationError(f"local.run_as: no user {user!r} on this machine") from None
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    if not os.access(setpriv, os.X_OK):
        raise ConfigurationError("local.run_as needs util-linux setpriv, which is not installed")
    if not _can_switch_users():
        raise ConfigurationError(
            f"local.run_as={user!r}: the gateway runs as uid {os.geteuid()} without "
            "CAP_SETUID/CAP_SETGID, so it cannot start jobs as another user"
        )
    if entry.pw_uid == os.geteuid():
        raise ConfigurationError(
            f"local.run_as={user!r} is the gateway's own user: jobs could read its secrets"
        )
    return (
        setpriv,
        f"--reuid={entry.pw_uid}",
        f"--regid={entry.pw_gid}",
        "--init-groups",
        "--no-new-privs",
        "--",
    )


def _can_switch_users() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            effective = int(line.split()[1], 16)
            return bool(effective & (1 << 6)) and bool(effective & (1 << 7))  # SETGID, SETUID
    return False


def _open_log(path: str, header: str) -> IO[str]:
    fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - handed to the child process
    fh.write(header)
    fh.flush()
    return fh


@dataclass
class _LocalJob:
    spec: JobSpec
    info: JobInfo
    proc: asyncio.subprocess.Process | None = None
    adopted_pid: int | None = None  # a job started by an earlier gateway process
    watcher: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    timed_out: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    finished_at: float | None = None


class LocalBackend:
    name: BackendName = "local"

    def __init__(
        self,
        *,
        kill_grace_s: float = 5.0,
        time_unit_s: float = 60.0,
        keep_finished_s: float = 300.0,
        journal: Journal | None = None,
        run_as: str | None = None,
    ) -> None:
        self.journal = journal
        # the job's command, under another user (the exit-recording shell stays ours)
        self._as_user: tuple[str, ...] = privilege_drop(run_as) if run_as else ()
        self._closing = False  # jobs stopped by a shutdown stay unfinished in the journal
        self.kill_grace_s = kill_grace_s
        self.keep_finished_s = keep_finished_s  # like Slurm's MinJobAge
        self.time_unit_s = time_unit_s  # seconds per time-limit minute (tests shorten it)
        self._jobs: dict[int, _LocalJob] = {}
        self._ids = itertools.count(1)
        self._version = 0
        self._seen_version = -1

    def _changed(self) -> None:
        self._version += 1

    def _set(self, job: _LocalJob, **changes: object) -> None:
        job.info = replace(job.info, **changes)  # type: ignore[arg-type]
        self._changed()

    async def submit(self, spec: JobSpec, *, hold: bool) -> int:
        await ensure_log_dir(spec.log_path)
        job_id = next(self._ids)
        info = JobInfo(
            job_id=job_id,
            name=spec.name,
            comment=spec.comment,
            state=JobState.PENDING,
            held=hold,
            log_path=spec.log_path,
            raw_state="PENDING",
        )
        job = _LocalJob(spec, info)
        if self.journal is not None:
            await asyncio.to_thread(self.journal.submitted, job_id, spec, hold)
        self._jobs[job_id] = job
        self._changed()
        if not hold:
            await self._start(job)
        return job_id

    async def release(self, job_id: int) -> None:
        job = self._jobs.get(job_id)
        if job is None or not job.info.held or job.info.terminal:
            return
        self._set(job, held=False)
        await self._start(job)

    async def _start(self, job: _LocalJob) -> None:
        spec = job.spec
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        header = (
            f"runstream: local job {job.info.job_id} ({spec.name}, request "
            f"{spec.job_request_id}) at {stamp}\n"
        )
        try:
            fh = await asyncio.to_thread(_open_log, spec.log_path, header)
            argv = (*self._as_user, *spec.argv)
            if self.journal is not None:
                argv = self.journal.wrap(job.info.job_id, argv)
            try:
                job.proc = await asyncio.create_subprocess_exec(
                    *argv,
                    env={**spec.environment, "RUNSTREAM_LOCAL_JOB_ID": str(job.info.job_id)},
                    cwd=spec.working_dir,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=fh,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            finally:
                fh.close()
        except OSError as exc:
            self._set(
                job,
                state=JobState.FAILED,
                exit_status=127,
                reason=f"could not start: {exc}",
                raw_state="LAUNCH_FAILED",
            )
            job.done.set()
            return
        if self.journal is not None:
            await asyncio.to_thread(self.journal.started, job.info.job_id, job.proc.pid)
        self._set(job, state=JobState.RUNNING, raw_state="RUNNING")
        job.watcher = asyncio.create_task(self._watch(job))

    async def recover(self) -> int:
        """Take over the jobs an earlier gateway process accepted (see ``local_journal``)."""
        if self.journal is None:
            return 0
        entries, highest = await asyncio.to_thread(self.journal.unfinished)
        self._ids = itertools.count(highest + 1)
        recovered = 0
        for entry in entries:
            spec = entry.spec
            info = JobInfo(
                job_id=entry.job_id,
                name=spec.name,
                comment=spec.comment,
                state=JobState.PENDING,
                held=entry.held,
                log_path=spec.log_path,
                raw_state="PENDING",
            )
            job = _LocalJob(spec, info)
            self._jobs[entry.job_id] = job
            recovered += 1
            if entry.held:
                continue
            if entry.pid is not None and pid_alive(entry.pid):
                job.adopted_pid = entry.pid
                self._set(job, state=JobState.RUNNING, raw_state="RUNNING")
                job.watcher = asyncio.create_task(self._watch_adopted(job))
                log.info("adopted local job %d (pid %d) after a restart", entry.job_id, entry.pid)
                continue
            code = self.journal.read_exit(entry.job_id)
            if code is not None:
                await self._finish(job, code)
                continue
            log.info("rerunning local job %d: the gateway stopped while it ran", entry.job_id)
            await asyncio.to_thread(append_restart_note, spec.log_path, entry.job_id)
            await self._start(job)
        self._changed()
        return recovered

    async def _watch_adopted(self, job: _LocalJob) -> None:
        assert job.adopted_pid is not None
        assert self.journal is not None
        limit = job.spec.time_limit_min * self.time_unit_s
        started = time.monotonic()
        while pid_alive(job.adopted_pid):
            if time.monotonic() - started > limit:
                job.timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.adopted_pid, signal.SIGKILL)
            await asyncio.sleep(0.5)
        code = self.journal.read_exit(job.info.job_id)
        await self._finish(job, code if code is not None else -signal.SIGKILL)

    async def _finish(self, job: _LocalJob, code: int) -> None:
        """Record how a job ended: ``code`` is a return code (negative: killed by that signal)."""
        if code > 128 and job.adopted_pid is not None:
            code = -(code - 128)  # the shell reports a signal as 128 + n
        exit_status, sig = (code, None) if code >= 0 else (None, -code)
        if job.cancel_requested:
            state, reason = JobState.CANCELLED, "cancelled"
        elif job.timed_out:
            state, reason = JobState.TIMEOUT, "TimeLimit"
        elif code == 0:
            state, reason = JobState.COMPLETED, None
        else:
            state, reason = JobState.FAILED, ("NonZeroExitCode" if sig is None else "Signaled")
        self._set(
            job,
            state=state,
            exit_status=exit_status,
            signal=sig,
            reason=reason,
            raw_state=state.value.upper(),
        )
        if self.journal is not None and not self._closing:
            await asyncio.to_thread(self.journal.ended, job.info.job_id)
        job.done.set()

    def _signal(self, job: _LocalJob, sig: int) -> None:
        if job.proc is not None and job.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.proc.pid, sig)

    async def _stop(self, job: _LocalJob) -> None:
        self._signal(job, signal.SIGTERM)
        assert job.proc is not None
        try:
            await asyncio.wait_for(job.proc.wait(), self.kill_grace_s)
        except TimeoutError:
            self._signal(job, signal.SIGKILL)

    async def _watch(self, job: _LocalJob) -> None:
        assert job.proc is not None
        limit = job.spec.time_limit_min * self.time_unit_s
        try:
            await asyncio.wait_for(asyncio.shield(job.proc.wait()), limit)
        except TimeoutError:
            job.timed_out = True
            await self._stop(job)
        code = await job.proc.wait()
        if code > 128 and self.journal is not None:
            code = -(code - 128)  # under the exit-recording shell a signal shows as 128 + n
        await self._finish(job, code)

    async def cancel(self, job_id: int) -> bool:
        job = self._jobs.get(job_id)
        if job is None:
            return False
        if job.info.terminal:
            return True
        job.cancel_requested = True
        if job.adopted_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.adopted_pid, signal.SIGTERM)
            return True
        if job.proc is None:
            self._set(job, state=JobState.CANCELLED, reason="cancelled", raw_state="CANCELLED")
            if self.journal is not None:
                await asyncio.to_thread(self.journal.ended, job.info.job_id)
            job.done.set()
            return True
        await self._stop(job)
        return True

    def _forget_old(self) -> None:
        now = time.monotonic()
        for job_id, job in list(self._jobs.items()):
            if job.info.terminal and job.finished_at is None:
                job.finished_at = now
            elif job.finished_at is not None and now - job.finished_at > self.keep_finished_s:
                del self._jobs[job_id]
                self._changed()

    async def snapshot(self, *, full: bool) -> list[JobInfo] | None:
        self._forget_old()
        if not full and self._version == self._seen_version:
            return None
        self._seen_version = self._version
        return [job.info for job in self._jobs.values()]

    async def aclose(self) -> None:
        # With a journal, jobs stopped here are run again by the next gateway process.
        self._closing = True
        for job in self._jobs.values():
            if job.adopted_pid is not None and job.watcher is not None:
                job.watcher.cancel()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.adopted_pid, signal.SIGTERM)
        running = [j for j in self._jobs.values() if j.proc is not None and not j.done.is_set()]
        for job in running:
            job.cancel_requested = True
            self._signal(job, signal.SIGTERM)
        for job in running:
            if job.watcher is not None:
                try:
                    await asyncio.wait_for(job.watcher, self.kill_grace_s + 1)
                except (TimeoutError, asyncio.CancelledError):
                    self._signal(job, signal.SIGKILL)
        if running:
            log.info("stopped %d local jobs at shutdown", len(running))
