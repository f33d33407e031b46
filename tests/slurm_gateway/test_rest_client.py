"""The REST client's auth retry and error mapping, against a scripted HTTP server."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from runstream_common.errors import ServiceUnavailable
from runstream_slurm_gateway.adapters.slurm_rest import SlurmRejected, SlurmRestClient
from runstream_slurm_gateway.jobspec import JobSpec
from runstream_slurm_gateway.slurm_api import SlurmApi
from runstream_slurm_gateway.tokens import Token, TokenManager

pytestmark = pytest.mark.unit


class Minted:
    description = "minted"

    def __init__(self) -> None:
        self.n = 0

    def fetch(self) -> Token:
        self.n += 1
        return Token(f"h.p{self.n}.s", None)


Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler) -> tuple[SlurmRestClient, Minted, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    source = Minted()
    c = SlurmRestClient(
        base_url="http://slurm.test",
        user="slurmtest",
        api=SlurmApi.for_version("v0.0.38"),
        tokens=TokenManager(source, margin_s=1),
        transport=httpx.MockTransport(record),
    )
    return c, source, seen


def spec() -> JobSpec:
    return JobSpec("jr", 1, 2, "r2-p1-runstream", ("true",), {"PATH": "/bin"}, "/w", "/w/l.out", 5)


AUTH_500 = {"errors": [{"error_number": -1, "error": "Unspecified error"}], "jobs": []}


@pytest.mark.parametrize(
    "first",
    [
        httpx.Response(500, json=AUTH_500),
        httpx.Response(500, json={"errors": [{"error_code": 5005, "error": "Zero Bytes"}]}),
        httpx.Response(401, text="Authentication failure"),
    ],
)
async def test_auth_failure_refreshes_and_retries_once(first: httpx.Response) -> None:
    answers = [first, httpx.Response(200, json={"errors": [], "jobs": []})]
    c, source, seen = client(lambda r: answers.pop(0))
    listing = await c.list()
    assert listing.jobs == []
    assert [r.headers["X-SLURM-USER-TOKEN"] for r in seen] == ["h.p1.s", "h.p2.s"]
    assert all(r.headers["X-SLURM-USER-NAME"] == "slurmtest" for r in seen)
    assert c.auth_retries == 1
    assert source.n == 2


async def test_auth_failure_twice_is_unavailable_not_a_loop() -> None:
    c, _source, seen = client(lambda r: httpx.Response(500, json=AUTH_500))
    with pytest.raises(ServiceUnavailable):
        await c.ping()
    assert len(seen) == 2


async def test_held_notice_is_not_an_error_and_rejections_are_permanent() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body["job"].get("partition") == "nope":
            return httpx.Response(
                500,
                json={
                    "errors": [{"error_code": 2000, "error": "Invalid partition name specified"}]
                },
            )
        return httpx.Response(
            200, json={"job_id": 9, "errors": [{"error_code": 2042, "error": "held"}]}
        )

    c, _, _ = client(handler)
    assert await c.submit(spec(), "#!/bin/sh\n", hold=True) == 9
    from dataclasses import replace

    with pytest.raises(SlurmRejected, match="Invalid partition"):
        await c.submit(replace(spec(), partition="nope"), "#!/bin/sh\n", hold=True)


async def test_not_modified_and_unknown_jobs() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/jobs"):
            assert request.url.params["update_time"] == "123"
            return httpx.Response(304)
        return httpx.Response(
            500, json={"errors": [{"error_number": 2017, "error": "Invalid job id specified"}]}
        )

    c, _, _ = client(handler)
    assert (await c.list(update_time=123)).jobs is None
    assert await c.get(99) is None
    assert await c.cancel(99) is False


async def test_connection_refused_is_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    c, _, _ = client(handler)
    with pytest.raises(ServiceUnavailable, match="not answering"):
        await c.list()
