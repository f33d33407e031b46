"""The port every job backend implements (Slurm over REST, local subprocesses)."""

from __future__ import annotations

from typing import Literal, Protocol

from runstream_common.errors import ServiceUnavailable

from .jobspec import JobInfo, JobSpec

BackendName = Literal["slurm", "local"]


class SubmitOutcomeUnclear(ServiceUnavailable):
    """A submit the backend may have carried out (no answer, or an unreadable one).

    The job may exist: look it up by its request id before submitting again.
    """


class Backend(Protocol):
    name: BackendName

    async def submit(self, spec: JobSpec, *, hold: bool) -> int:
        """Start (or, with ``hold``, queue without starting) a job; its id once durable.

        Raises :class:`SubmitOutcomeUnclear` when the job may exist without an id known.
        """
        ...

    async def release(self, job_id: int) -> None:
        """Let a held job start."""
        ...

    async def cancel(self, job_id: int) -> bool:
        """Stop a job; False when the backend does not know it."""
        ...

    async def snapshot(self, *, full: bool) -> list[JobInfo] | None:
        """Every job the backend knows, or None when nothing changed since the last call
        (only when ``full`` is false)."""
        ...

    async def aclose(self) -> None: ...
