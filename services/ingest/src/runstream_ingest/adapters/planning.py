"""Deciding one batch: polled records and watched folders in, the contents of one transaction out.

Runs in a worker thread (the handlers may stat folders). Nothing here talks to
Kafka; :class:`Plan` (a :class:`~runstream_common.transactional.Decision`) is what
the loop then writes in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import ConsumerRecord
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import SpanKind, Tracer
from runstream_common import parsers
from runstream_common.errors import MessageFormatError
from runstream_common.inbox import Records
from runstream_common.messages import FacilityEvent, RunRequested, Trigger
from runstream_common.topics import run_key
from runstream_common.transactional import Decision, Output, dead_letter_output, failure_of

from ..effects import DeadLetter, Effect, EmitRun, Ignore, Verdict, Wait, outcome_of
from ..handlers import Disk, handle_facility, handle_reprocess, handle_watched
from ..retry import RetryInfo, parse_retry_headers, retry_headers
from ..settings import Settings
from ..tables import CatalogTxn, ProposalTable

log = logging.getLogger("runstream.ingest.loop")

JSON = [("content-type", b"application/json")]
WRITER_HEADER = "x-ingest-writer"
"""On catalog records: the transactional id that wrote them (its own catalog already has them)."""


@dataclass(frozen=True, slots=True)
class Watched:
    """A complete new run folder the watcher found."""

    proposal: int
    run: int
    path: Path


@dataclass
class Plan(Decision):
    """What one transaction writes, and what the consumer does afterwards.

    ``replay_safe``: deciding the same inputs again after this plan committed
    writes nothing (every output is a run message whose catalog entry makes the
    repeat a duplicate). Only such batches may leave their consumer offsets to a
    later transaction; dead letters, waits and reprocess requests may not.
    ``raw_sent``: runs whose raw pass this plan starts; ``outcomes``: one verdict per
    effect, with the topic of its input; ``txn``: the catalog changes it made (they
    count once its transaction commits); ``watched``: the folders it decided.
    """

    raw_sent: set[tuple[int, int]] = field(default_factory=set)
    outcomes: list[tuple[str, Verdict]] = field(default_factory=list)
    txn: CatalogTxn | None = None
    watched: list[Watched] = field(default_factory=list)

    def inputs(self) -> int:
        return len(self.outcomes)


class _RawInFlight:
    """Runs whose raw pass runs: those committed before, plus raw messages of the plan at hand."""

    def __init__(self, *parts: Container[tuple[int, int]]) -> None:
        self._parts = parts

    def __contains__(self, key: object) -> bool:
        return any(key in part for part in self._parts)


class Planner:
    """Turns records into a :class:`Plan` with the pure handlers."""

    def __init__(
        self,
        settings: Settings,
        proposals: ProposalTable,
        disk: Disk,
        raw_in_flight: Container[tuple[int, int]],
        tracer: Tracer | None = None,
    ) -> None:
        self.settings = settings
        self.proposals = proposals
        self.disk = disk
        self.raw_in_flight = raw_in_flight
        self.topics = settings.kafka.topics
        self.retry_topic = settings.retry_topic()
        self.facility_topics = frozenset(settings.facility_topics)
        self._tracer = tracer

    def touches_disk(self, batch: Records, watched: list[Watched]) -> bool:
        """Whether deciding this may touch the file system (then it must run in a worker thread).

        False only for facility events that need no folder: malformed, unknown or
        unregistered ones, and raw events of proposals whose folder is already
        known (a raw event's only file-system question). Proc events, retries,
        reprocess requests and watched folders all stat folders.
        """
        if watched:
            return True
        if any(tp.topic not in self.facility_topics for tp in batch):
            return True
        for event in self._facility_events(batch):
            trigger = self.settings.event_triggers.get(event.event)
            registration = self.proposals.get(event.proposal)
            if trigger is None or registration is None:
                continue
            if trigger is not Trigger.RAW or not self.disk.knows_proposal_dir(registration):
                return True
        return False

    def _facility_events(self, batch: Records) -> Iterator[FacilityEvent]:
        """The well-formed facility events of ``batch`` (malformed ones are skipped here)."""
        for tp, records in batch.items():
            if tp.topic not in self.facility_topics:
                continue
            for record in records:
                try:
                    yield parsers.FACILITY.parse(
                        record.value, max_bytes=self.settings.max_event_bytes
                    )
                except MessageFormatError:
                    continue

    def plan(
        self,
        batch: Records,
        watched: list[Watched],
        txn: CatalogTxn,
        now: float,
    ) -> Plan:
        """Decide ``batch``, then ``watched``."""
        plan = Plan(txn=txn, watched=watched)
        kw: dict[str, Any] = {
            "settings": self.settings,
            "proposals": self.proposals,
            "catalog": txn,
            "disk": self.disk,
        }
        # a raw message of this very batch counts as running too
        in_flight = _RawInFlight(self.raw_in_flight, plan.raw_sent)
        facility_kw = {**kw, "raw_in_flight": in_flight}
        for tp, records in batch.items():
            for record in records:
                source = record.topic
                try:
                    if record.topic == self.retry_topic:
                        info = parse_retry_headers(record.headers or ())
                        if info.not_before > now:
                            plan.pauses[tp] = (record.offset, info.not_before)
                            break
                        source = info.source_topic or record.topic
                        effects = handle_facility(
                            record.value, now=now, attempt=info.attempt, **facility_kw
                        )
                    elif record.topic == self.topics.reprocess:
                        plan.replay_safe = False  # a repeat would be a new deliberate reprocess
                        effects = self._reprocess(record, kw)
                    else:
                        effects = handle_facility(record.value, now=now, **facility_kw)
                except OSError:
                    raise  # transient: the whole batch is decided again
                except Exception as exc:  # the error tree: dead-lettered (or rolled back)
                    effects = [DeadLetter(*failure_of(exc, record))]
                for effect in effects:
                    self._carry_out(effect, record, source, plan)
                plan.positions[tp] = record.offset + 1
        for item in watched:
            for effect in handle_watched(item.proposal, item.run, item.path, **kw):
                self._carry_out(effect, None, "watcher", plan)
        return plan

    def _trace_headers(
        self, msg: RunRequested, record: ConsumerRecord[Any, Any] | None, source: str
    ) -> list[tuple[str, bytes]]:
        """A producer span per run message, continuing the input's trace if it carried one."""
        if self._tracer is None:
            return []
        parent = None
        if record is not None and record.headers:
            parent = extract({k: v.decode(errors="replace") for k, v in record.headers})
        with self._tracer.start_as_current_span(
            f"{self.topics.runs} publish",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": self.topics.runs,
                "messaging.source.name": source,
                "runstream.proposal": msg.proposal,
                "runstream.run": msg.run,
                "runstream.trigger": msg.trigger.value,
                "runstream.request_id": msg.request_id,
                "runstream.reason": msg.reason,
            },
        ):
            carrier: dict[str, str] = {}
            inject(carrier)
        return [(k, v.encode()) for k, v in carrier.items()]

    def _reprocess(self, record: ConsumerRecord[Any, Any], kw: dict[str, Any]) -> list[Effect]:
        try:
            request = parsers.REPROCESS.parse(record.value)
        except MessageFormatError as exc:
            return [DeadLetter(str(exc), type(exc).__name__)]
        return handle_reprocess(request, **kw)

    def _carry_out(
        self, effect: Effect, record: ConsumerRecord[Any, Any] | None, source: str, plan: Plan
    ) -> None:
        plan.outcomes.append((source, outcome_of(effect)))
        if isinstance(effect, EmitRun):
            msg = effect.run
            key = run_key(msg.proposal, msg.run)
            headers = JSON + self._trace_headers(msg, record, source)
            if msg.trigger is Trigger.RAW and msg.reason != "reprocess":
                plan.raw_sent.add((msg.proposal, msg.run))
            plan.outputs.append(Output(self.topics.runs, key, parsers.encode(msg), headers))
            if effect.catalog is not None:
                plan.outputs.append(
                    Output(
                        self.topics.run_catalog,
                        key,
                        parsers.encode(effect.catalog),
                        [*JSON, (WRITER_HEADER, self.settings.transactional_id.encode())],
                    )
                )
            if effect.note:
                log.warning("p%d r%d %s: %s", msg.proposal, msg.run, msg.trigger, effect.note)
        elif isinstance(effect, DeadLetter):
            assert record is not None
            plan.replay_safe = False
            plan.outputs.append(
                dead_letter_output(
                    record,
                    reason=effect.reason,
                    error_class=effect.error_class,
                    group_id=self.settings.group_id,
                    max_bytes=self.settings.kafka.max_request_size,
                )
            )
        elif isinstance(effect, Wait):
            assert record is not None
            plan.replay_safe = False
            state = effect.state
            key = run_key(state.proposal, state.run)
            plan.outputs.append(Output(self.topics.processing, key, parsers.encode(state), JSON))
            info = RetryInfo(effect.attempt, effect.not_before, source)
            plan.outputs.append(
                Output(self.retry_topic, key, record.value or b"", retry_headers(info))
            )
            log.info("p%d r%d proc waits: %s", state.proposal, state.run, state.reason)
        elif isinstance(effect, Ignore):
            level = logging.DEBUG if effect.outcome is Verdict.DUPLICATE else logging.INFO
            log.log(level, "ignored (%s): %s", effect.outcome.value, effect.detail)
