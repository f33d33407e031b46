"""Pure decisions: a facility event, a watched folder or a reprocess request in, effects out.

Nothing here talks to Kafka. The file system is reached only through the
:class:`Disk` port (its real implementation is blocking; the loop runs these
handlers in a worker thread). The de-duplication rule: one run message per
(proposal, run, trigger) ever, remembered in the run catalog (``raw_seen`` /
``proc_seen``); a reprocess request always produces new run messages.
"""

from __future__ import annotations

import logging
from collections.abc import Container
from pathlib import Path
from typing import Protocol
from uuid import UUID

from runstream_common import parsers
from runstream_common.errors import MessageFormatError
from runstream_common.messages import (
    ProcessingStateChanged,
    ProcessingStatus,
    ReprocessRequested,
    RunKnown,
    RunRequested,
    Trigger,
)

from .effects import DeadLetter, Effect, EmitRun, Ignore, Verdict, Wait
from .ids import FACILITY_NAMESPACE, facility_request_id, reprocess_request_id
from .layout import FolderState
from .settings import Settings
from .tables import CatalogTxn, ProposalTable, Registration

log = logging.getLogger("runstream.ingest")

WATCHER_EVENT = "run_folder_complete"


class Disk(Protocol):
    """The file-system questions the handlers ask."""

    def proposal_dir(self, registration: Registration) -> Path | None: ...

    def knows_proposal_dir(self, registration: Registration) -> bool:
        """Whether :meth:`proposal_dir` would answer without touching the file system."""
        ...

    def run_dir(self, proposal_dir: Path, run: int, kind: Trigger) -> Path: ...

    def folder(self, path: Path) -> FolderState: ...

    def exists(self, path: Path) -> bool: ...


def _seen(entry: RunKnown | None, trigger: Trigger) -> bool:
    if entry is None:
        return False
    if trigger is Trigger.RAW:
        return entry.raw_seen
    if trigger is Trigger.PROC:
        return entry.proc_seen
    return entry.raw_seen and entry.proc_seen


def _catalog_entry(
    proposal: int, run: int, trigger: Trigger, source: dict[str, object]
) -> RunKnown:
    clean = {
        k: v for k, v in source.items() if v is None or isinstance(v, str | int | float | bool)
    }
    return RunKnown(
        proposal=proposal,
        run=run,
        raw_seen=trigger in (Trigger.RAW, Trigger.ALL),
        proc_seen=trigger in (Trigger.PROC, Trigger.ALL),
        source=clean,
    )


def _run_message(
    proposal: int,
    run: int,
    trigger: Trigger,
    registration: Registration,
    proposal_dir: Path,
    reason: str,
    attempt: int = 1,
) -> RunRequested:
    request_id = facility_request_id(proposal, run, trigger)
    return RunRequested(
        event_id=UUID(request_id),
        correlation_id=request_id,
        request_id=request_id,
        proposal=proposal,
        run=run,
        trigger=trigger,
        context_dir=registration.context_dir,
        proposal_dir=str(proposal_dir),
        reason=reason,
        attempt=attempt,
    )


def _no_proposal_dir(registration: Registration, settings: Settings) -> DeadLetter:
    root = registration.data_root or settings.data_root
    return DeadLetter(
        f"proposal directory of p{registration.proposal} not found under {root} "
        f"(glob {settings.proposal_dir_glob!r})",
        "UnknownProposal",
    )


def handle_facility(
    value: bytes | None,
    *,
    settings: Settings,
    proposals: ProposalTable,
    catalog: CatalogTxn,
    disk: Disk,
    now: float,
    attempt: int = 1,
    raw_in_flight: Container[tuple[int, int]] = frozenset(),
) -> list[Effect]:
    """One facility event (or a retry of one) -> effects.

    ``raw_in_flight``: runs whose raw pass is still running; a proc event for one
    of them waits (see ``proc_waits_for_raw``).
    """
    try:
        event = parsers.FACILITY.parse(value, max_bytes=settings.max_event_bytes)
    except MessageFormatError as exc:
        return [DeadLetter(str(exc), type(exc).__name__)]
    trigger = settings.event_triggers.get(event.event)
    if trigger is None:
        return [_not_mapped(event.event, settings)]
    registration = proposals.get(event.proposal)
    if registration is None:
        return [Ignore(Verdict.UNREGISTERED, f"p{event.proposal}")]
    known = catalog.get(event.proposal, event.run)
    if _seen(known, trigger):
        return [Ignore(Verdict.DUPLICATE, f"p{event.proposal} r{event.run} {trigger}")]
    proposal_dir = disk.proposal_dir(registration)
    if proposal_dir is None:
        return [_no_proposal_dir(registration, settings)]

    note = None
    if trigger is Trigger.PROC:
        reason = _proc_not_ready(
            event.proposal, event.run, known, proposal_dir, settings, disk, raw_in_flight
        )
        if reason is not None and attempt < settings.proc_max_attempts:
            return [_look_again(event.proposal, event.run, reason, attempt, now, settings)]
        if reason is not None:
            note = f"sent after {attempt} looks although {reason}"

    source: dict[str, object] = {**event.extras(), f"{trigger.value}_event": event.event}
    run_msg = _run_message(
        event.proposal, event.run, trigger, registration, proposal_dir, "facility", attempt
    )
    entry = catalog.put(_catalog_entry(event.proposal, event.run, trigger, source))
    return [EmitRun(run_msg, entry, note)]


def _not_mapped(name: str, settings: Settings) -> Effect:
    """An event no trigger is mapped to: skipped quietly if listed, dead-lettered otherwise."""
    if name in settings.ignored_events:
        return Ignore(Verdict.UNKNOWN_EVENT, name)
    return DeadLetter(_unknown_event(name, settings), "UnknownEvent")


def _look_again(
    proposal: int, run: int, reason: str, attempt: int, now: float, settings: Settings
) -> Wait:
    """A proc event whose run is not ready: a waiting state now, another look later."""
    request_id = facility_request_id(proposal, run, Trigger.PROC)
    state = ProcessingStateChanged(
        correlation_id=request_id,
        processing_id=request_id,
        request_id=request_id,
        proposal=proposal,
        run=run,
        trigger=Trigger.PROC,
        status=ProcessingStatus.WAITING,
        reason=f"{reason}; look {attempt + 1} of {settings.proc_max_attempts} "
        f"in {settings.proc_retry_delay_s:g} s",
    )
    return Wait(state, attempt + 1, now + settings.proc_retry_delay_s)


def _unknown_event(name: str, settings: Settings) -> str:
    known = ", ".join(sorted(settings.event_triggers)) or "none"
    return (
        f"unknown facility event {name[:200]!r}: ingest maps only {known} "
        "(RUNSTREAM_INGEST_EVENT_TRIGGERS); list events to skip quietly in "
        "RUNSTREAM_INGEST_IGNORED_EVENTS"
    )


def _proc_not_ready(
    proposal: int,
    run: int,
    known: RunKnown | None,
    proposal_dir: Path,
    settings: Settings,
    disk: Disk,
    raw_in_flight: Container[tuple[int, int]],
) -> str | None:
    if settings.proc_waits_for_raw:
        if not (known is not None and known.raw_seen):
            return "no raw run message yet for this run"
        if (proposal, run) in raw_in_flight:
            return "raw processing of this run has not finished"
    state = disk.folder(disk.run_dir(proposal_dir, run, Trigger.PROC))
    if not state.complete:
        return state.describe(disk.run_dir(proposal_dir, run, Trigger.PROC), settings.settle_s)
    return None


def handle_watched(
    proposal: int,
    run: int,
    path: Path,
    *,
    settings: Settings,
    proposals: ProposalTable,
    catalog: CatalogTxn,
    disk: Disk,
) -> list[Effect]:
    """A complete new raw run folder found by the watcher -> a raw run message (once)."""
    registration = proposals.get(proposal)
    if registration is None:
        return [Ignore(Verdict.UNREGISTERED, f"p{proposal}")]
    if _seen(catalog.get(proposal, run), Trigger.RAW):
        return [Ignore(Verdict.DUPLICATE, f"p{proposal} r{run} raw")]
    proposal_dir = disk.proposal_dir(registration)
    if proposal_dir is None:
        return [Ignore(Verdict.MISSING_RUN, f"p{proposal}: proposal directory gone")]
    run_msg = _run_message(proposal, run, Trigger.RAW, registration, proposal_dir, "watcher")
    source: dict[str, object] = {"raw_event": WATCHER_EVENT, "path": str(path)}
    entry = catalog.put(_catalog_entry(proposal, run, Trigger.RAW, source))
    return [EmitRun(run_msg, entry)]


def handle_reprocess(
    request: ReprocessRequested,
    *,
    settings: Settings,
    proposals: ProposalTable,
    catalog: CatalogTxn,
    disk: Disk,
) -> list[Effect]:
    """Expand a reprocess request into one run message per run that exists on disk."""
    registration = proposals.get(request.proposal)
    if registration is None:
        return [DeadLetter(f"proposal {request.proposal} is not registered", "UnknownProposal")]
    proposal_dir = disk.proposal_dir(registration)
    if proposal_dir is None:
        return [_no_proposal_dir(registration, settings)]
    runs = catalog.runs(request.proposal) if request.runs == "all" else sorted(set(request.runs))
    kind = Trigger.PROC if request.trigger is Trigger.PROC else Trigger.RAW
    effects: list[Effect] = []
    for run in runs:
        folder = disk.run_dir(proposal_dir, run, kind)
        if not disk.exists(folder):
            effects.append(
                Ignore(Verdict.MISSING_RUN, f"p{request.proposal} r{run}: {folder} not found")
            )
            continue
        request_id = reprocess_request_id(request.event_id, request.proposal, run, request.trigger)
        run_msg = RunRequested(
            event_id=UUID(request_id),
            correlation_id=str(request.event_id),
            request_id=request_id,
            proposal=request.proposal,
            run=run,
            trigger=request.trigger,
            selection=request.selection,
            context_dir=registration.context_dir,
            proposal_dir=str(proposal_dir),
            reason="reprocess",
        )
        entry = None
        if catalog.get(request.proposal, run) is None:
            entry = catalog.put(RunKnown(proposal=request.proposal, run=run))
        effects.append(EmitRun(run_msg, entry))
    return effects


__all__ = [
    "FACILITY_NAMESPACE",
    "WATCHER_EVENT",
    "Disk",
    "handle_facility",
    "handle_reprocess",
    "handle_watched",
]
