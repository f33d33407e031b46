"""A submit whose outcome is unclear yields one Slurm job, not two (real slurmrestd).

The transport between the gateway and slurmrestd spoils the answer to the first
submit *after* slurmrestd has taken the job: the reply times out, or comes back
as something that is not JSON (a proxy's error page). The gateway must look the
job up by its request id and adopt it instead of submitting again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Literal

import httpx
import pytest
from runstream_common.errors import ServiceUnavailable, TransientError
from runstream_common.messages import JobState, JobStateChanged
from runstream_slurm_gateway.adapters.slurm_backend import SlurmBackend
from runstream_slurm_gateway.adapters.slurm_rest import SlurmRestClient
from runstream_slurm_gateway.backend import SubmitOutcomeUnclear
from runstream_slurm_gateway.handlers import Gateway, ProposalSettingsView
from runstream_slurm_gateway.settings import JobSettings, Settings, SlurmRestSettings
from runstream_slurm_gateway.slurm_api import SlurmApi
from runstream_slurm_gateway.tokens import CommandTokenSource, TokenManager

from .conftest import SlurmCluster
from .helpers import job_request

pytestmark = pytest.mark.integration

Spoil = Literal["timeout", "not-json", "dropped"]


class SpoilingTransport(httpx.AsyncBaseTransport):
    """Passes every request to slurmrestd; spoils the answers to the first ``n`` submits."""

    def __init__(self, spoil: Spoil, n: int = 1) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.spoil = spoil
        self.left = n
        self.submits = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not request.url.path.endswith("/job/submit"):
            return response
        self.submits += 1
        await response.aread()  # slurmrestd answered: the job exists
        await response.aclose()
        if self.left <= 0:
            return httpx.Response(
                response.status_code, headers=response.headers, content=response.content
            )
        self.left -= 1
        if self.spoil == "timeout":
            raise httpx.ReadTimeout("timed out waiting for the reply", request=request)
        if self.spoil == "dropped":
            raise httpx.RemoteProtocolError("Server disconnected", request=request)
        return httpx.Response(502, text="<html><body>Bad Gateway</body></html>", request=request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _client(slurm: SlurmCluster, transport: httpx.AsyncBaseTransport) -> SlurmRestClient:
    return SlurmRestClient(
        base_url=slurm.url,
        user=slurm.user,
        api=SlurmApi.for_version(slurm.api_version),
        tokens=TokenManager(
            CommandTokenSource(slurm.token_command, lifespan_s=600, user=slurm.user), margin_s=1.0
        ),
        transport=transport,
    )


async def _deliver(gateway: Gateway, req: object, tries: int = 20) -> int:
    """What the delivery wrapper does: retry while the handler raises a TransientError."""
    for attempt in range(1, tries + 1):
        try:
            await gateway.handle_request(req)  # type: ignore[arg-type]
            return attempt
        except TransientError:
            await asyncio.sleep(0.2)
    raise AssertionError("the request never went through")


async def _jobs_of(client: SlurmRestClient, prefix: str) -> Counter[str]:
    listing = await client.list()
    return Counter(
        j.tag.job_request_id
        for j in listing.jobs or []
        if j.tag is not None and j.tag.instance == prefix
    )


@pytest.mark.parametrize("spoil", ["timeout", "not-json", "dropped"])
async def test_an_unclear_submit_yields_one_slurm_job(
    slurm: SlurmCluster, job_dir: Path, spoil: Spoil
) -> None:
    prefix = f"unclear-{job_dir.name}"
    settings = Settings(
        backend="slurm",
        slurm=SlurmRestSettings(url=slurm.url, user=slurm.user, unclear_submit_wait_s=30),
        job=JobSettings(command_prefix=["/bin/true"], time="1"),
    )
    settings.kafka.topic_prefix = prefix
    transport = SpoilingTransport(spoil)
    client = _client(slurm, transport)
    events: list[JobStateChanged] = []

    async def publish(message: JobStateChanged) -> None:
        events.append(message)

    async def append(path: str, line: str) -> None:
        return None

    proposals = ProposalSettingsView()
    proposals.loaded.set()
    gateway = Gateway(
        backend=SlurmBackend(client),
        publish=publish,
        append_line=append,
        settings=settings,
        proposals=proposals,
    )
    req = job_request(77, 1, str(job_dir))
    try:
        await _deliver(gateway, req)
        assert transport.submits == 1, "submitted again although the first job existed"
        jobs = await _jobs_of(client, prefix)
        assert jobs == Counter({req.job_request_id: 1})
        tracked = gateway.by_request(req.job_request_id)
        assert tracked is not None
        assert tracked.info.state in (JobState.PENDING, JobState.RUNNING, JobState.COMPLETED)
        assert not [e for e in events if e.state is JobState.SUBMIT_FAILED]
        # the request delivered again (a restart) still finds that one job
        await _deliver(gateway, req)
        assert transport.submits == 1
    finally:
        listing = await client.list()
        for job in listing.jobs or []:
            if job.tag is not None and job.tag.instance == prefix:
                await client.cancel(job.job_id)
        await client.aclose()


async def test_a_submit_that_never_left_is_not_unclear() -> None:
    """A refused connection means slurmrestd did nothing: no lookup is needed."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    class Tokens:
        async def get(self) -> str:
            return "token"

    client = SlurmRestClient(
        base_url="http://127.0.0.1:9",
        user="u",
        api=SlurmApi.for_version("v0.0.38"),
        tokens=Tokens(),  # type: ignore[arg-type]
        transport=httpx.MockTransport(refuse),
    )
    from runstream_slurm_gateway.jobspec import JobSpec, job_name

    spec = JobSpec(
        job_request_id="x",
        proposal=1,
        run=1,
        name=job_name(1, 1),
        argv=("true",),
        environment={},
        working_dir="/tmp",
        log_path="/tmp/x.out",
        time_limit_min=1,
    )
    with pytest.raises(ServiceUnavailable) as caught:
        await client.submit(spec, "#!/bin/sh\ntrue\n", hold=True)
    assert not isinstance(caught.value, SubmitOutcomeUnclear)
    await client.aclose()
