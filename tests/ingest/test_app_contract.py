"""Contract tier: ingest's app, built by ``build_app``, driven in memory.

Ingest consumes through the shared transactional delivery mode, not a FastStream
subscriber, so its Kafka is the in-memory one of tests/support/memory_kafka.py: the
loop's producers and group consumer and the readers of its state topics all work on
the same topic logs, and what a transaction writes lands there only when it commits.
The app's own start-up and shutdown hooks run (``support.ports.in_memory``); facility
events go in with ``kafka.append`` and what comes out is read from the topic logs.
The run folders are real, on disk (``tmp_path``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from runstream_common import parsers
from runstream_common.kafka import DLQ_ERROR_CLASS, DLQ_REASON, DLQ_SOURCE_TOPIC
from runstream_common.messages import (
    ProcessingStateChanged,
    ProcessingStatus,
    ProposalRegistered,
    RunRequested,
    Trigger,
)
from runstream_common.service import Service
from runstream_common.settings import KafkaSettings
from runstream_common.topics import dlq, proposal_key, run_key
from runstream_ingest.app import IngestRuntime, Ports, build_app
from runstream_ingest.ids import facility_request_id
from runstream_ingest.settings import Settings
from support.memory_kafka import MemoryKafka, MemoryReader
from support.ports import MemoryTopics, in_memory

from .helpers import facility_event, make_run_folder

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="session")]

P = 2212
RAW, CAL = "fac.r2d2", "fac.cal"
RAW_TP = TopicPartition(RAW, 0)


class Wired:
    """Ingest's app on an in-memory Kafka, a registered proposal with its folder on disk."""

    def __init__(self, tmp_path: Path, kafka: MemoryKafka | None = None) -> None:
        self.settings = Settings(
            kafka=KafkaSettings(topic_prefix="ct"),
            facility_topics=[RAW, CAL],
            data_root=str(tmp_path / "exp"),
            settle_s=0.0,
            proc_retry_delay_s=0.05,
            # a raw pass counts as under way for 0.05 * 400 = 20 s: longer than any wait here,
            # so only the processing state the test sends can end it
            proc_max_attempts=400,
            poll_timeout_ms=10,
            retry_backoff_s=0.01,
            gc_freeze_interval_s=None,  # never gc.freeze() the test process
        )
        self.topics = self.settings.kafka.topics
        self.proposal_dir = tmp_path / "exp" / "HED" / "202601" / f"p{P:06d}"
        self.context_dir = tmp_path / "ctx"
        if kafka is None:  # a fresh cluster: the proposal registered before ingest starts
            kafka = MemoryKafka()
            (self.proposal_dir / "raw").mkdir(parents=True)
            self.context_dir.mkdir()
            registered = ProposalRegistered(
                proposal=P, context_dir=str(self.context_dir), data_root=str(tmp_path / "exp")
            )
            kafka.append(self.topics.proposals, parsers.encode(registered), key=proposal_key(P))
        self.kafka = kafka
        self.admin = MemoryTopics()
        ports = Ports(topics=self.admin, clients=kafka.clients(), readers=kafka.readers())
        self.service: Service[IngestRuntime] = build_app(self.settings, ports=ports)

    def runs(self) -> list[RunRequested]:
        return [parsers.RUNS.parse(r.value) for r in self.kafka.records(self.topics.runs)]

    def states(self) -> list[ProcessingStateChanged]:
        return [
            parsers.PROCESSING.parse(r.value) for r in self.kafka.records(self.topics.processing)
        ]

    def decided(self) -> dict[str, int]:
        """Inputs decided so far (committed), by outcome."""
        return dict(self.service.runtime.service.get().loop.stats)

    def send(self, topic: str, value: bytes) -> None:
        self.kafka.append(topic, value, key=b"k")


def counted(wired: Wired, n: int) -> Callable[[], bool]:
    return lambda: sum(wired.decided().values()) >= n


async def test_a_raw_event_gives_one_run_message_with_its_catalog_entry_once(
    tmp_path: Path,
) -> None:
    wired = Wired(tmp_path)
    topics = wired.topics
    migrated = facility_event("migration_complete", P, 5, instrument="HED", cycle="202601")
    async with in_memory(wired.service) as app:
        wired.send(RAW, migrated)
        await app.until(lambda: wired.runs(), "a run message")
        wired.send(RAW, migrated)  # the facility sends it again
        wired.send(RAW, facility_event("migration_complete", str(P), "5"))  # strings: the same run
        await app.until(counted(wired, 3), "three events decided")
    # start-up created what ingest touches, the state topics compacted
    assert {topics.runs, topics.run_catalog, topics.processing, RAW, CAL} <= wired.admin.ensured
    assert {topics.proposals, topics.run_catalog} <= wired.admin.compacted

    [run] = wired.runs()
    assert (run.proposal, run.run, run.trigger) == (P, 5, Trigger.RAW)
    assert run.request_id == facility_request_id(P, 5, Trigger.RAW)
    assert (run.proposal_dir, run.context_dir) == (str(wired.proposal_dir), str(wired.context_dir))
    [record] = wired.kafka.records(topics.runs)
    assert record.key == run_key(P, 5)
    [entry] = wired.kafka.records(topics.run_catalog)
    known = parsers.RUN_CATALOG.parse(entry.value)
    assert (known.proposal, known.run, known.raw_seen) == (P, 5, True)
    assert known.source["instrument"] == "HED"
    # the run message and its catalog entry are one transaction: visible together or not at all
    assert wired.kafka.transaction_of(record) is wired.kafka.transaction_of(entry)
    assert wired.decided() == {"emitted": 1, "duplicate": 2}
    # stopping committed the offsets of everything decided (replay-safe batches left them)
    assert wired.kafka.group_offsets[wired.settings.group_id] == {RAW_TP: 3}

    # a restart reads the catalog back: the same event once more is still a duplicate
    again = Wired(tmp_path, wired.kafka)
    async with in_memory(again.service) as app:
        again.send(RAW, migrated)
        await app.until(counted(again, 1), "the event decided")
    assert again.decided() == {"duplicate": 1}
    assert len(again.runs()) == 1


async def test_malformed_and_unmapped_events_are_dead_lettered_with_the_reason(
    tmp_path: Path,
) -> None:
    wired = Wired(tmp_path)
    bad = [
        b"not json at all",
        facility_event("migration_complete", P, "forty-two"),
        facility_event("run_started", P, 1),  # not an event ingest maps
    ]
    async with in_memory(wired.service) as app:
        for value in bad:
            wired.send(RAW, value)
        wired.send(RAW, facility_event("migration_complete", 7777, 1))  # nobody registered it
        wired.send(RAW, facility_event("migration_complete", P, 1))
        await app.until(counted(wired, 5), "five events decided")
    dead = wired.kafka.records(dlq(RAW))
    assert [r.value for r in dead] == bad
    assert all(r.key == b"k" for r in dead)
    headers = [dict(r.headers) for r in dead]
    assert all(h[DLQ_SOURCE_TOPIC] == RAW.encode() for h in headers)
    assert [h[DLQ_ERROR_CLASS] for h in headers] == [
        b"MessageFormatError",
        b"MessageFormatError",
        b"UnknownEvent",
    ]
    assert b"run" in headers[1][DLQ_REASON]
    assert b"'run_started'" in headers[2][DLQ_REASON]
    # a dead letter is not replay-safe: its transaction carries the offsets past it
    offsets = [wired.kafka.transaction_of(r).offsets.get(RAW_TP) for r in dead]
    assert all(o is not None and o > r.offset for o, r in zip(offsets, dead, strict=True))
    assert [m.run for m in wired.runs()] == [1]
    assert wired.decided() == {"dead_lettered": 3, "unregistered": 1, "emitted": 1}


async def test_a_proc_event_waits_for_the_raw_pass_and_its_folder_and_says_why(
    tmp_path: Path,
) -> None:
    wired = Wired(tmp_path)
    topics = wired.topics

    def waiting_because(text: str) -> Callable[[], bool]:
        return lambda: any(text in (s.reason or "") for s in wired.states())

    async with in_memory(wired.service) as app:
        wired.send(RAW, facility_event("migration_complete", P, 7))
        await app.until(lambda: wired.runs(), "the raw run message")
        wired.send(CAL, facility_event("run_corrections_complete", P, 7))
        await app.until(waiting_because("raw processing of this run has not finished"), "a wait")
        # the executor reports the raw pass finished (on the processing topic ingest follows)
        raw_done = ProcessingStateChanged(
            processing_id="exec-1",
            request_id=facility_request_id(P, 7, Trigger.RAW),
            proposal=P,
            run=7,
            trigger=Trigger.RAW,
            status=ProcessingStatus.FINISHED,
        )
        wired.kafka.append(topics.processing, parsers.encode(raw_done), key=run_key(P, 7))
        await app.until(waiting_because("does not exist yet"), "a wait for the proc folder")
        make_run_folder(wired.proposal_dir, 7, "proc")  # calibration finished
        await app.until(lambda: len(wired.runs()) == 2, "the proc run message")
    waits = [s for s in wired.states() if s.processing_id != "exec-1"]
    assert waits
    assert all(s.status is ProcessingStatus.WAITING for s in waits)
    assert {s.request_id for s in waits} == {facility_request_id(P, 7, Trigger.PROC)}
    raw, proc = wired.runs()
    assert (raw.trigger, proc.trigger) == (Trigger.RAW, Trigger.PROC)
    assert proc.request_id == facility_request_id(P, 7, Trigger.PROC)
    assert proc.attempt >= 3  # looked at again after each wait
    # each wait went out with its look-again record, in one transaction
    retries = wired.kafka.records(wired.settings.retry_topic())
    assert len(retries) == len(waits)
    assert all(topics.processing in wired.kafka.transaction_of(r).topics() for r in retries)


async def test_an_event_just_after_its_proposal_is_registered_is_not_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry's follower lags behind the event (here: it never reads by itself):
    before calling a proposal unregistered, ingest reads the registry to its end."""
    wired = Wired(tmp_path, MemoryKafka())  # nothing registered when ingest starts
    (wired.proposal_dir / "raw").mkdir(parents=True)
    wired.context_dir.mkdir()
    follow = MemoryReader.follow

    async def lagging(reader: MemoryReader) -> None:
        if reader.topic == wired.topics.proposals:
            await asyncio.Event().wait()
        await follow(reader)

    monkeypatch.setattr(MemoryReader, "follow", lagging)
    registered = ProposalRegistered(
        proposal=P, context_dir=str(wired.context_dir), data_root=str(tmp_path / "exp")
    )
    async with in_memory(wired.service) as app:
        wired.kafka.append(wired.topics.proposals, parsers.encode(registered), key=proposal_key(P))
        wired.send(RAW, facility_event("migration_complete", P, 3, instrument="HED"))
        wired.send(RAW, facility_event("migration_complete", 7777, 1))  # never registered
        await app.until(counted(wired, 2), "both events decided")
    assert [(m.proposal, m.run) for m in wired.runs()] == [(P, 3)]
    assert wired.decided() == {"emitted": 1, "unregistered": 1}
