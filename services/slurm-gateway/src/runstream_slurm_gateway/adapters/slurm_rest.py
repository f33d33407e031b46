"""An async client of slurmrestd: submit, get, list (``update_time``, 304), release, cancel.

Auth: every request carries ``X-SLURM-USER-NAME`` and ``X-SLURM-USER-TOKEN``.
slurmrestd forwards the token to slurmctld, which rejects a bad or expired one;
slurmrestd then answers **HTTP 500 with error number -1 or 5005**, not 401. A 401
(headers missing or refused) and those 500s are treated alike: get a new token
and try once more. Connection failures and other 5xx become ``ServiceUnavailable``.

A submit whose request may have reached slurmrestd without a readable answer
(the reply timed out or the connection dropped after sending, or the reply is
not JSON or has no job id) raises :class:`SubmitOutcomeUnclear`: the job may
exist, so the caller looks it up (by the request id in its comment) before it
submits again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from runstream_common.errors import PermanentError, ServiceUnavailable

from ..backend import SubmitOutcomeUnclear
from ..jobspec import JobInfo, JobSpec
from ..slurm_api import SlurmApi
from ..tokens import TokenManager

log = logging.getLogger("runstream.slurm_gateway.rest")

AUTH_ERROR_NUMBERS = frozenset({-1, 5005})
HELD_NOTICE = 2042  # "Job is in held state, pending scheduler release": not a failure
INVALID_JOB_ID = 2017


class NoAnswer(ServiceUnavailable):
    """The request was sent, but no answer came back: it may have been carried out."""


# Failures before slurmrestd could have read the request: it certainly did nothing.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class SlurmRejected(PermanentError):
    """Slurm refused the request itself (bad partition, bad time limit, ...)."""

    def __init__(self, message: str, numbers: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.numbers = numbers


def error_numbers(body: Mapping[str, Any]) -> tuple[int, ...]:
    """Both error shapes: ``{"error_number"}`` (GET/DELETE) and ``{"error_code"}`` (submit)."""
    out: list[int] = []
    for err in body.get("errors") or []:
        if isinstance(err, Mapping):
            number = err.get("error_number", err.get("error_code"))
            if isinstance(number, int):
                out.append(number)
    return tuple(out)


def error_text(body: Mapping[str, Any]) -> str:
    parts = []
    for err in body.get("errors") or []:
        if isinstance(err, Mapping):
            text = err.get("description") or err.get("error") or ""
            number = err.get("error_number", err.get("error_code"))
            parts.append(f"{text} ({number})" if number is not None else str(text))
    return "; ".join(parts) or "no error text"


@dataclass(frozen=True, slots=True)
class Listing:
    """``GET jobs``: ``jobs`` is None when Slurm said 304 Not Modified."""

    jobs: list[JobInfo] | None
    last_update: int | None


class SlurmRestClient:
    def __init__(
        self,
        *,
        base_url: str,
        user: str,
        api: SlurmApi,
        tokens: TokenManager,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.api = api
        self.user = user
        self.tokens = tokens
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport
        )
        self.auth_retries = 0

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ core
    async def _send(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        token = await self.tokens.get()
        response = await self._once(method, path, token, json=json, params=params)
        if self._auth_failed(response):
            self.auth_retries += 1
            log.info("slurmrestd refused the token (HTTP %d); refreshing", response.status_code)
            token = await self.tokens.invalidate(token)
            response = await self._once(method, path, token, json=json, params=params)
            if self._auth_failed(response):
                raise ServiceUnavailable(
                    f"slurmrestd {method} {path}: HTTP {response.status_code} "
                    f"({self._describe(response)}) with a fresh token; "
                    "slurmctld may be down or the token not accepted"
                )
        return response

    async def _once(
        self,
        method: str,
        path: str,
        token: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        headers = {"X-SLURM-USER-NAME": self.user, "X-SLURM-USER-TOKEN": token}
        try:
            return await self._http.request(method, path, json=json, params=params, headers=headers)
        except _NOT_SENT as exc:
            raise ServiceUnavailable(
                f"slurmrestd at {self._http.base_url} is not answering: {type(exc).__name__}: {exc}"
            ) from exc
        except httpx.HTTPError as exc:
            raise NoAnswer(
                f"slurmrestd at {self._http.base_url} took {method} {path} but gave no answer: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    @staticmethod
    def _body(response: httpx.Response) -> dict[str, Any]:
        if not response.content:
            return {}
        try:
            body = response.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    def _describe(self, response: httpx.Response) -> str:
        body = self._body(response)
        return error_text(body) if body else (response.text[:200] or "empty body")

    def _auth_failed(self, response: httpx.Response) -> bool:
        if response.status_code == 401:
            return True
        if response.status_code == 500:
            return bool(set(error_numbers(self._body(response))) & AUTH_ERROR_NUMBERS)
        return False

    def _raise_for(self, method: str, path: str, response: httpx.Response) -> dict[str, Any]:
        body = self._body(response)
        numbers = tuple(n for n in error_numbers(body) if n != HELD_NOTICE)
        if response.status_code == 200 and not numbers:
            return body
        message = (
            f"slurmrestd {method} {path}: HTTP {response.status_code}: {self._describe(response)}"
        )
        if response.status_code == 400 or any(2000 <= n < 3000 for n in numbers):
            raise SlurmRejected(message, numbers)
        if response.status_code == 200:  # 200 with errors: Slurm did not do it
            raise SlurmRejected(message, numbers)
        raise ServiceUnavailable(message)

    # ------------------------------------------------------------------ operations
    async def ping(self) -> list[dict[str, Any]]:
        path = self.api.ping_path
        body = self._raise_for("GET", path, await self._send("GET", path))
        pings = body.get("pings") or []
        return [p for p in pings if isinstance(p, dict)]

    async def submit(self, spec: JobSpec, script: str, *, hold: bool) -> int:
        """The new job's id. :class:`SubmitOutcomeUnclear` if the job may exist all the same."""
        path = self.api.submit_path
        try:
            response = await self._send(
                "POST", path, json=self.api.submit_body(spec, script, hold=hold)
            )
        except NoAnswer as exc:
            raise SubmitOutcomeUnclear(str(exc)) from exc
        if response.content and not self._is_json(response):
            raise SubmitOutcomeUnclear(
                f"slurmrestd POST {path}: HTTP {response.status_code} with a reply that is not "
                f"JSON ({response.text[:200]!r}); the job may have been submitted"
            )
        body = self._raise_for("POST", path, response)
        job_id = self.api.submitted_job_id(body)
        if job_id is None:
            raise SubmitOutcomeUnclear(
                f"slurmrestd POST {path}: no job_id in the answer; the job may have been submitted"
            )
        return job_id

    @staticmethod
    def _is_json(response: httpx.Response) -> bool:
        try:
            response.json()
        except ValueError:
            return False
        return True

    async def get(self, job_id: int) -> JobInfo | None:
        """One job, or None when Slurm does not know it (never existed or purged)."""
        path = self.api.job_path(job_id)
        response = await self._send("GET", path)
        if response.status_code == 500 and INVALID_JOB_ID in error_numbers(self._body(response)):
            return None
        body = self._raise_for("GET", path, response)
        jobs = self.api.decode_jobs(body)
        return jobs[0] if jobs else None

    async def list(self, *, update_time: int | None = None) -> Listing:
        """All jobs; with ``update_time``, ``jobs`` is None if nothing changed since (304)."""
        path = self.api.jobs_path
        params = {"update_time": str(update_time)} if update_time else None
        response = await self._send("GET", path, params=params)
        if response.status_code == 304:
            return Listing(None, update_time)
        body = self._raise_for("GET", path, response)
        last = body.get("last_update")
        last_update = last if isinstance(last, int) else None
        if isinstance(last, Mapping) and isinstance(last.get("number"), int):
            last_update = int(last["number"])
        return Listing(self.api.decode_jobs(body), last_update)

    async def release(self, job_id: int) -> None:
        path = self.api.job_path(job_id)
        self._raise_for("POST", path, await self._send("POST", path, json=self.api.release_body()))

    async def cancel(self, job_id: int, *, signal: str | None = None) -> bool:
        """Cancel (default SIGKILL, Slurm's own default). False if Slurm does not know the job."""
        path = self.api.job_path(job_id)
        response = await self._send("DELETE", path, params={"signal": signal} if signal else None)
        if response.status_code == 500 and INVALID_JOB_ID in error_numbers(self._body(response)):
            return False
        self._raise_for("DELETE", path, response)
        return True
