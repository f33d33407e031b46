"""What the pure handlers decide; the transactional loop carries these out."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from runstream_common.messages import ProcessingStateChanged, RunKnown, RunRequested


class Verdict(StrEnum):
    """Why an input produced no run message (also the metric label)."""

    EMITTED = "emitted"
    DUPLICATE = "duplicate"
    UNKNOWN_EVENT = "unknown_event"
    UNREGISTERED = "unregistered"
    MISSING_RUN = "missing_run"
    WAITING = "waiting"
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True, slots=True)
class EmitRun:
    """Send a run message; publish ``catalog`` (the run's new catalog entry) if set."""

    run: RunRequested
    catalog: RunKnown | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    error_class: str


@dataclass(frozen=True, slots=True)
class Ignore:
    outcome: Verdict
    detail: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Look again later: publish ``state`` (status waiting) and a retry record."""

    state: ProcessingStateChanged
    attempt: int
    not_before: float


Effect = EmitRun | DeadLetter | Ignore | Wait


def outcome_of(effect: Effect) -> Verdict:
    if isinstance(effect, EmitRun):
        return Verdict.EMITTED
    if isinstance(effect, DeadLetter):
        return Verdict.DEAD_LETTERED
    if isinstance(effect, Wait):
        return Verdict.WAITING
    return effect.outcome
