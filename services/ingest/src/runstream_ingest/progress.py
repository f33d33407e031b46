"""Following a reprocess request to its end: which runs are done, and how they ended."""

from __future__ import annotations

from dataclasses import dataclass, field

from runstream_common.messages import TERMINAL_STATUSES, ProcessingStateChanged, ProcessingStatus


@dataclass
class RunOutcome:
    run: int
    status: ProcessingStatus | None = None
    reason: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass
class Summary:
    ok: list[int]
    failed: list[int]
    skipped: list[int]
    pending: list[int]
    variables: dict[str, int]


class RequestTracker:
    """Processing states of the run messages one reprocess request produced (by request id)."""

    def __init__(self, expected: dict[str, int], skipped: list[int] | None = None) -> None:
        self._by_request = {rid: RunOutcome(run) for rid, run in expected.items()}
        self.skipped = sorted(skipped or [])

    def observe(self, state: ProcessingStateChanged) -> RunOutcome | None:
        """Record ``state``; return the run's outcome if this state just finished it."""
        outcome = self._by_request.get(state.request_id)
        if outcome is None or outcome.finished:
            return None
        if state.status in (ProcessingStatus.VARIABLE_DONE, ProcessingStatus.VARIABLE_FAILED):
            return None
        outcome.status = state.status
        outcome.reason = state.reason
        if state.counts:
            outcome.counts = dict(state.counts)
        return outcome if outcome.finished else None

    @property
    def total(self) -> int:
        return len(self._by_request)

    @property
    def done(self) -> int:
        return sum(o.finished for o in self._by_request.values())

    @property
    def complete(self) -> bool:
        return self.done == self.total

    def outcomes(self) -> list[RunOutcome]:
        return sorted(self._by_request.values(), key=lambda o: o.run)

    def summary(self) -> Summary:
        ok: list[int] = []
        failed: list[int] = []
        pending: list[int] = []
        variables: dict[str, int] = {}
        for o in self.outcomes():
            if o.status is ProcessingStatus.FINISHED:
                ok.append(o.run)
            elif o.status is ProcessingStatus.FAILED:
                failed.append(o.run)
            else:
                pending.append(o.run)
            for k, v in o.counts.items():
                variables[k] = variables.get(k, 0) + v
        return Summary(ok, failed, self.skipped, pending, variables)
