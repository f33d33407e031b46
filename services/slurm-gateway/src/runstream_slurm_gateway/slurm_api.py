"""Request and response shapes of slurmrestd, per API version (pure, no I/O).

Two families:

- ``v0.0.37``/``v0.0.38`` (Slurm 22.05, Debian 12): ``environment`` is an object,
  numbers are plain integers, ``job_state`` a string, ``exit_code`` a raw wait status;
  paths without a trailing slash. Verified against the real daemon.
- ``v0.0.40`` and later (Slurm 23.11+): ``environment`` is a list of ``K=V``, many
  numbers are ``{"set", "infinite", "number"}`` objects, ``job_state`` and
  ``open_mode`` are lists, ``exit_code`` is ``{"status": [...], "return_code",
  "signal": {"id", "name"}}``; collection paths end in ``/``. Taken from the
  published OpenAPI documents (see docs/slurm-gateway.md for sources).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runstream_common.errors import ConfigurationError
from runstream_common.messages import JobState

from .exitcodes import decode_wait_status, is_wait_status
from .jobspec import JobInfo, JobSpec, slurm_state

LEGACY_VERSIONS = frozenset({"v0.0.37", "v0.0.38"})
_VERSION = re.compile(r"^v0\.0\.(\d+)$")
_HELD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin"})
_BASE_STATES = (
    "PENDING",
    "RUNNING",
    "SUSPENDED",
    "COMPLETED",
    "CANCELLED",
    "FAILED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "OUT_OF_MEMORY",
)


def _no_val(value: Any) -> int | None:
    """A v0.0.40+ ``*_no_val_struct`` (or a plain int) -> int, None when unset/infinite."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        if value.get("infinite") or not value.get("set", False):
            return None
        number = value.get("number")
        return int(number) if isinstance(number, int) else None
    return None


def _set(number: int) -> dict[str, Any]:
    return {"set": True, "infinite": False, "number": number}


@dataclass(frozen=True, slots=True)
class SlurmApi:
    """Paths and bodies of one slurmrestd API version."""

    version: str

    @classmethod
    def for_version(cls, version: str) -> SlurmApi:
        match = _VERSION.match(version)
        if not match or not (version in LEGACY_VERSIONS or int(match[1]) >= 40):
            raise ConfigurationError(
                f"Slurm REST API version {version!r} is not supported; "
                "use v0.0.37, v0.0.38 or v0.0.40 and later"
            )
        return cls(version)

    @property
    def legacy(self) -> bool:
        return self.version in LEGACY_VERSIONS

    # ------------------------------------------------------------------ paths
    def _p(self, tail: str) -> str:
        return f"/slurm/{self.version}/{tail}"

    @property
    def ping_path(self) -> str:
        return self._p("ping" if self.legacy else "ping/")

    @property
    def jobs_path(self) -> str:
        return self._p("jobs" if self.legacy else "jobs/")

    @property
    def submit_path(self) -> str:
        return self._p("job/submit")

    def job_path(self, job_id: int) -> str:
        return self._p(f"job/{int(job_id)}")

    # ------------------------------------------------------------------ requests
    def submit_body(self, spec: JobSpec, script: str, *, hold: bool) -> dict[str, Any]:
        job: dict[str, Any] = {
            "name": spec.name,
            "comment": spec.comment,
            "current_working_directory": spec.working_dir,
            "standard_output": spec.log_path,
            "cpus_per_task": spec.cpus,
            "hold": hold,
        }
        if spec.reservation:
            job["reservation"] = spec.reservation
        elif spec.partition:
            job["partition"] = spec.partition
        if self.legacy:
            job["environment"] = dict(spec.environment)
            job["time_limit"] = spec.time_limit_min
            job["open_mode"] = "append"
            if spec.memory_mb is not None:
                job["memory_per_node"] = spec.memory_mb
            return {"script": script, "job": job}
        job["environment"] = [f"{k}={v}" for k, v in spec.environment.items()]
        job["time_limit"] = _set(spec.time_limit_min)
        job["open_mode"] = ["APPEND"]
        job["script"] = script
        if spec.memory_mb is not None:
            job["memory_per_node"] = _set(spec.memory_mb)
        return {"job": job}

    def release_body(self) -> dict[str, Any]:
        """Body of ``POST job/{id}`` that releases a held job."""
        return {"hold": False}

    # ------------------------------------------------------------------ responses
    def submitted_job_id(self, body: Mapping[str, Any]) -> int | None:
        job_id = body.get("job_id")
        if isinstance(job_id, int):
            return job_id
        result = body.get("result")
        if isinstance(result, Mapping) and isinstance(result.get("job_id"), int):
            return int(result["job_id"])
        return None

    def decode_job(self, raw: Mapping[str, Any]) -> JobInfo:
        """One element of ``jobs`` -> :class:`JobInfo`."""
        reason = raw.get("state_reason") or None
        if reason == "None":
            reason = None
        if self.legacy:
            raw_state = str(raw.get("job_state") or "")
            state = slurm_state(raw_state)
            raw_exit = _no_val(raw.get("exit_code"))
            exit_info = decode_wait_status(raw_exit)
            exit_status, signal = exit_info.exit_status, exit_info.signal
            if raw_exit is not None and not is_wait_status(raw_exit):
                reason = f"{reason or 'failed'} (Slurm exit code {raw_exit})"
            priority = _no_val(raw.get("priority"))
            held_flag = False
        else:
            states = [str(s) for s in raw.get("job_state") or []]
            base = next((s for s in states if s in _BASE_STATES), states[0] if states else "")
            raw_state = "+".join(states)
            state = slurm_state(base)
            exit_status, signal = _decode_verbose_exit(raw.get("exit_code"))
            priority = _no_val(raw.get("priority"))
            held_flag = bool(raw.get("hold", False))
        if "COMPLETING" in raw_state.split("+"):
            state = JobState.RUNNING  # not finished until its processes are gone
        held = state is JobState.PENDING and (
            held_flag or priority == 0 or (reason in _HELD_REASONS)
        )
        if state is JobState.PENDING or state is JobState.RUNNING:
            exit_status, signal = None, None
        return JobInfo(
            job_id=int(raw["job_id"]),
            name=str(raw.get("name") or ""),
            comment=str(raw.get("comment") or ""),
            state=state,
            held=held,
            exit_status=exit_status,
            signal=signal,
            reason=reason,
            log_path=(raw.get("standard_output") or None),
            raw_state=raw_state,
        )

    def decode_jobs(self, body: Mapping[str, Any]) -> list[JobInfo]:
        return [self.decode_job(j) for j in body.get("jobs") or [] if "job_id" in j]


def _decode_verbose_exit(value: Any) -> tuple[int | None, int | None]:
    """v0.0.40+ ``process_exit_code_verbose`` -> (exit status, signal)."""
    if isinstance(value, int) and not isinstance(value, bool):
        info = decode_wait_status(value)
        return info.exit_status, info.signal
    if not isinstance(value, Mapping):
        return None, None
    status = {str(s) for s in value.get("status") or []}
    signal_obj = value.get("signal") or {}
    signal = _no_val(signal_obj.get("id")) if isinstance(signal_obj, Mapping) else None
    if status & {"SIGNALED", "CORE_DUMPED"}:
        return None, signal
    return _no_val(value.get("return_code")), None
