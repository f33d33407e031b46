"""The REST client and token sources against the real slurmrestd (v0.0.38)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from runstream_common.messages import JobState
from runstream_slurm_gateway.adapters.slurm_rest import SlurmRejected, SlurmRestClient
from runstream_slurm_gateway.jobspec import JobSpec, job_name
from runstream_slurm_gateway.slurm_api import SlurmApi
from runstream_slurm_gateway.tokens import (
    CommandTokenSource,
    Hs256TokenSource,
    Token,
    TokenManager,
    TokenSource,
    token_expiry,
)

from .conftest import SlurmCluster

pytestmark = pytest.mark.integration


def make_client(slurm: SlurmCluster, source: TokenSource, margin: float = 1.0) -> SlurmRestClient:
    return SlurmRestClient(
        base_url=slurm.url,
        user=slurm.user,
        api=SlurmApi.for_version(slurm.api_version),
        tokens=TokenManager(source, margin_s=margin),
    )


@pytest.fixture
async def client(slurm: SlurmCluster) -> AsyncIterator[SlurmRestClient]:
    source = CommandTokenSource(slurm.token_command, lifespan_s=600, user=slurm.user)
    c = make_client(slurm, source)
    yield c
    await c.aclose()


def spec(job_dir: Path, run: int, **kw: object) -> JobSpec:
    base: dict[str, object] = dict(
        job_request_id=f"rest-{job_dir.name}-{run}",
        proposal=1,
        run=run,
        name=job_name(1, run),
        argv=("true",),
        environment={"PATH": "/usr/bin:/bin"},
        working_dir=str(job_dir),
        log_path=str(job_dir / f"r{run}.out"),
        time_limit_min=1,
    )
    base.update(kw)
    return JobSpec(**base)  # type: ignore[arg-type]


async def until_terminal(client: SlurmRestClient, job_id: int) -> list[JobState]:
    seen: list[JobState] = []
    for _ in range(300):
        info = await client.get(job_id)
        assert info is not None
        if not seen or seen[-1] is not info.state:
            seen.append(info.state)
        if info.terminal:
            return seen
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {seen}")


async def test_submit_hold_release_list_and_exit_codes(
    client: SlurmRestClient, job_dir: Path
) -> None:
    assert (await client.ping())[0]["ping"] == "UP"
    ok = await client.submit(spec(job_dir, 1), "#!/bin/bash\necho hello\n", hold=True)
    bad = await client.submit(spec(job_dir, 2), "#!/bin/bash\nexit 3\n", hold=False)
    killed = await client.submit(spec(job_dir, 3), "#!/bin/bash\nkill -KILL $$\n", hold=False)
    held = await client.get(ok)
    assert held is not None
    assert (held.held, held.state, held.reason) == (True, JobState.PENDING, "JobHeldUser")
    assert held.tag is not None
    assert held.tag.job_request_id == f"rest-{job_dir.name}-1"
    assert held.name == "r1-p1-runstream"

    await client.release(ok)
    for job_id in (ok, bad, killed):
        await until_terminal(client, job_id)
    infos = {j.job_id: j for j in (await client.list()).jobs or []}
    assert (infos[ok].state, infos[ok].exit_status, infos[ok].signal) == (
        JobState.COMPLETED,
        0,
        None,
    )
    assert (infos[bad].state, infos[bad].exit_status, infos[bad].signal) == (
        JobState.FAILED,
        3,
        None,
    )
    assert (infos[killed].state, infos[killed].exit_status, infos[killed].signal) == (
        JobState.FAILED,
        None,
        9,
    )
    assert (job_dir / "r1.out").read_text() == "hello\n"


# "Nothing changed" is cluster-wide: another test's job changing state in between would
# make Slurm answer with the list, so this one runs alone (after the parallel tests).
@pytest.mark.serial
async def test_update_time_gives_304_when_nothing_changed(client: SlurmRestClient) -> None:
    first = await client.list()
    assert first.jobs is not None
    await asyncio.sleep(1.1)
    # v0.0.38 reports no last_update: "since now" must answer Not Modified
    import time

    assert (await client.list(update_time=int(time.time()))).jobs is None


async def test_cancel_and_unknown_jobs(client: SlurmRestClient, job_dir: Path) -> None:
    job_id = await client.submit(spec(job_dir, 4), "#!/bin/bash\nsleep 60\n", hold=False)
    assert await client.cancel(job_id) is True
    assert (await until_terminal(client, job_id))[-1] is JobState.CANCELLED
    assert await client.get(10_000_000) is None
    assert await client.cancel(10_000_000) is False


async def test_bad_partition_is_rejected(client: SlurmRestClient, job_dir: Path) -> None:
    with pytest.raises(SlurmRejected, match="partition"):
        await client.submit(spec(job_dir, 5, partition="nosuch"), "#!/bin/bash\n", hold=False)


async def test_short_lived_tokens_never_fail_a_request(slurm: SlurmCluster) -> None:
    """Tokens live 3 s; 7 s of requests: every one succeeds, tokens are refreshed early."""
    source = CommandTokenSource(slurm.token_command, lifespan_s=3, user=slurm.user)
    c = make_client(slurm, source, margin=30)
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 7
        calls = 0
        while loop.time() < end:
            assert (await c.ping())[0]["ping"] == "UP"
            assert (await c.list()).jobs is not None
            calls += 2
            await asyncio.sleep(0.25)
        assert calls > 20
        assert c.tokens.refreshes >= 3
        assert c.auth_retries == 0  # refreshed before expiry, never after a failure
    finally:
        await c.aclose()


class ExpiredFirst:
    """Hands out an expired token first (as if it expired in flight), then fresh ones."""

    description = "expired-first"

    def __init__(self, slurm: SlurmCluster) -> None:
        self.slurm = slurm
        self.calls = 0

    def fetch(self) -> Token:
        self.calls += 1
        if self.calls == 1:
            value = self.slurm.mint(1)
            import time

            time.sleep(2.1)  # now expired, but we claim it is good for an hour
            return Token(value, time.time() + 3600)
        value = self.slurm.mint(600)
        return Token(value, token_expiry(value))


async def test_expired_token_is_refreshed_and_the_request_retried(slurm: SlurmCluster) -> None:
    source = ExpiredFirst(slurm)
    c = make_client(slurm, source)
    try:
        jobs = (await c.list()).jobs  # the server says 500/-1; the client refreshes once
        assert jobs is not None
        assert c.auth_retries == 1
        assert source.calls == 2
        job_id = jobs[0].job_id if jobs else None
        if job_id is not None:
            assert (await c.get(job_id)) is not None
    finally:
        await c.aclose()


async def test_hs256_tokens_signed_with_the_cluster_key(slurm: SlurmCluster) -> None:
    source = Hs256TokenSource(user=slurm.user, lifespan_s=60, key=slurm.jwt_key.read_bytes())
    c = make_client(slurm, source)
    try:
        assert (await c.ping())[0]["ping"] == "UP"
        assert c.auth_retries == 0
        bad = Hs256TokenSource(user=slurm.user, lifespan_s=60, key=b"x" * 32)
        c2 = make_client(slurm, bad)
        from runstream_common.errors import TransientError

        with pytest.raises(TransientError):  # rejected, and the signer can do no better
            await c2.list()
        assert c2.auth_retries == 1
        await c2.aclose()
    finally:
        await c.aclose()
