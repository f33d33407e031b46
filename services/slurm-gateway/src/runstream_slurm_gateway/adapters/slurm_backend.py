"""The Slurm backend: jobs over slurmrestd, held until the concurrency cap lets them go."""

from __future__ import annotations

import time

from ..backend import BackendName
from ..job_request import batch_script
from ..jobspec import JobInfo, JobSpec
from .log_files import ensure_log_dir
from .slurm_rest import SlurmRestClient


class SlurmBackend:
    name: BackendName = "slurm"

    def __init__(self, client: SlurmRestClient) -> None:
        self.client = client
        self._since: int | None = None

    async def submit(self, spec: JobSpec, *, hold: bool) -> int:
        await ensure_log_dir(spec.log_path)
        return await self.client.submit(spec, batch_script(spec), hold=hold)

    async def release(self, job_id: int) -> None:
        await self.client.release(job_id)

    async def cancel(self, job_id: int) -> bool:
        return await self.client.cancel(job_id)

    async def snapshot(self, *, full: bool) -> list[JobInfo] | None:
        # v0.0.38 gives no last_update: ask "changed since a second before the last
        # listing was requested"; a few redundant full answers are harmless.
        started = int(time.time()) - 1
        listing = await self.client.list(update_time=None if full else self._since)
        if listing.jobs is None:
            return None
        self._since = listing.last_update or started
        return listing.jobs

    async def aclose(self) -> None:
        await self.client.aclose()
