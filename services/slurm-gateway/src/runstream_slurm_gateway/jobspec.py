"""What the gateway asks a backend to run, and what a backend reports back (pure data)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from runstream_common.errors import InvalidCommand
from runstream_common.messages import JobState

COMMENT_PREFIX = "runstream"


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One batch job, independent of the backend and API version."""

    job_request_id: str
    proposal: int
    run: int
    name: str
    argv: tuple[str, ...]
    environment: dict[str, str]
    working_dir: str
    log_path: str
    time_limit_min: int
    cpus: int = 1
    memory_mb: int | None = None
    partition: str | None = None
    reservation: str | None = None
    instance: str = "runstream"

    @property
    def comment(self) -> str:
        return job_comment(self.job_request_id, self.proposal, self.run, self.instance)


@dataclass(frozen=True, slots=True)
class JobInfo:
    """One job as a backend sees it, already decoded into runstream's terms."""

    job_id: int
    name: str
    comment: str
    state: JobState
    held: bool = False
    exit_status: int | None = None
    signal: int | None = None
    reason: str | None = None
    log_path: str | None = None
    raw_state: str = ""

    @property
    def tag(self) -> JobTag | None:
        return parse_comment(self.comment)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True, slots=True)
class JobTag:
    """What the job's comment says about where it came from."""

    job_request_id: str
    proposal: int
    run: int
    instance: str = "runstream"


TERMINAL = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.VANISHED,
        JobState.SUBMIT_FAILED,
    }
)

_COMMENT = re.compile(
    rf"^{COMMENT_PREFIX}:(?P<ns>\S+) job_request_id=(?P<id>\S+) proposal=(?P<p>\d+) run=(?P<r>\d+)$"
)


def job_name(proposal: int, run: int) -> str:
    return f"r{run}-p{proposal}-runstream"


def job_comment(job_request_id: str, proposal: int, run: int, instance: str = "runstream") -> str:
    """``runstream:<instance> job_request_id=<id> proposal=<P> run=<R>``.

    ``instance`` (the Kafka topic prefix) keeps installations that share a cluster
    (or tests that share one) from adopting each other's jobs.
    """
    for what, value in (("job_request_id", job_request_id), ("instance", instance)):
        if not value or any(c.isspace() for c in value):
            raise InvalidCommand(f"{what} {value!r} must be non-empty, without spaces")
    return (
        f"{COMMENT_PREFIX}:{instance} job_request_id={job_request_id} proposal={proposal} run={run}"
    )


def parse_comment(comment: str | None) -> JobTag | None:
    """The tag of a job runstream submitted, None for anybody else's job."""
    match = _COMMENT.match(comment or "")
    if not match:
        return None
    return JobTag(match["id"], int(match["p"]), int(match["r"]), match["ns"])


def slurm_state(raw: str) -> JobState:
    """Map a Slurm job state (base state, flags dropped) to runstream's."""
    base = raw.split("+")[0].split()[0].upper() if raw.strip() else "PENDING"
    if base in {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"}:
        return JobState.PENDING
    if base in {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING"}:
        return JobState.RUNNING
    if base == "COMPLETED":
        return JobState.COMPLETED
    if base in {"CANCELLED", "REVOKED"}:
        return JobState.CANCELLED
    if base in {"TIMEOUT", "DEADLINE"}:
        return JobState.TIMEOUT
    return JobState.FAILED  # FAILED, NODE_FAIL, BOOT_FAIL, OUT_OF_MEMORY, PREEMPTED, ...


_TIME = re.compile(r"^(?:(?P<d>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")


def time_limit_minutes(text: str | int) -> int:
    """Slurm's time formats -> whole minutes (rounded up, at least 1).

    ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S`` as in sbatch(1).
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 1:
            raise InvalidCommand(f"slurm_time must be at least 1 minute, got {text}")
        return text
    value = str(text).strip()
    match = _TIME.match(value)
    if not match:
        raise InvalidCommand(f"slurm_time {value!r} is not a Slurm time (e.g. 02:00:00)")
    d, a, b, c = (match[k] for k in ("d", "a", "b", "c"))
    days = int(d or 0)
    if d is not None:  # D-H[:M[:S]]
        seconds = int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # H:M:S
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # M:S
        seconds = int(a) * 60 + int(b)
    else:  # M
        seconds = int(a) * 60
    seconds += days * 86400
    minutes = -(-seconds // 60)
    if minutes < 1:
        raise InvalidCommand(f"slurm_time {value!r} is shorter than a minute")
    return minutes
