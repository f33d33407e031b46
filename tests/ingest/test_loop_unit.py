"""The loop's batch planning without a broker: records in, transaction contents out."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from runstream_common import parsers
from runstream_common.kafka import DLQ_REASON, DLQ_SOURCE_OFFSET
from runstream_common.messages import ReprocessRequested, RunKnown
from runstream_common.settings import KafkaSettings
from runstream_common.topics import dlq, run_key
from runstream_ingest.adapters.loop import IngestLoop
from runstream_ingest.retry import RetryInfo, parse_retry_headers, retry_headers
from runstream_ingest.settings import Settings
from runstream_ingest.tables import ProposalTable, RunCatalog

from .helpers import disk_for, facility_event, make_run_folder, registered

pytestmark = pytest.mark.unit

FAC = "fac.r2d2"


def rec(
    topic: str,
    offset: int,
    value: bytes | None,
    headers: list[tuple[str, bytes]] | None = None,
    key: bytes = b"k",
) -> ConsumerRecord:
    return ConsumerRecord(
        topic=topic,
        partition=0,
        offset=offset,
        timestamp=int(time.time() * 1000),
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key),
        serialized_value_size=len(value or b""),
        headers=headers or [],
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        kafka=KafkaSettings(topic_prefix="u"),
        facility_topics=[FAC],
        data_root=str(tmp_path),
        proc_waits_for_raw=False,
        settle_s=0.0,
    )


async def test_plan_writes_runs_catalog_dlq_and_offsets(tmp_path: Path, settings: Settings) -> None:
    proposals, _ = registered(tmp_path, 2212)
    loop = IngestLoop(settings, proposals, RunCatalog(), disk_for(settings))
    tp = TopicPartition(FAC, 0)
    batch = {
        tp: [
            rec(FAC, 10, facility_event("migration_complete", 2212, 1)),
            rec(FAC, 11, b"{oops"),
            rec(FAC, 12, facility_event("migration_complete", 2212, 1)),
        ]
    }
    catalog_txn = loop.catalog.begin()
    plan = loop.planner.plan(batch, [], catalog_txn, time.time())
    assert plan.positions == {tp: 13}
    topics = [r.topic for r in plan.outputs]
    assert topics == ["u.runs", "u.run-catalog", dlq(FAC)]
    run_msg = parsers.RUNS.parse(plan.outputs[0].value)
    assert run_msg.run == 1
    assert plan.outputs[0].key == run_key(2212, 1)
    dead = plan.outputs[2]
    assert dead.value == b"{oops"
    assert dead.key == b"k"
    headers = dict(dead.headers)
    assert headers[DLQ_SOURCE_OFFSET] == b"11"
    assert b"facility event" in headers[DLQ_REASON]
    assert [o.value for _, o in plan.outcomes] == ["emitted", "dead_lettered", "duplicate"]


async def test_retry_record_not_yet_due_pauses_its_partition(
    tmp_path: Path, settings: Settings
) -> None:
    proposals, dirs = registered(tmp_path, 2212)
    catalog = RunCatalog()
    catalog.merge(RunKnown(proposal=2212, run=1, raw_seen=True))
    make_run_folder(dirs[2212], 1, "proc")
    loop = IngestLoop(settings, proposals, catalog, disk_for(settings))
    tp = TopicPartition(loop.retry_topic, 0)
    now = time.time()
    due = retry_headers(RetryInfo(2, now - 1, FAC))
    later = retry_headers(RetryInfo(2, now + 60, FAC))
    value = facility_event("run_corrections_complete", 2212, 1)
    batch = {
        tp: [
            rec(loop.retry_topic, 5, value, due),
            rec(loop.retry_topic, 6, value, later),
            rec(loop.retry_topic, 7, value, due),
        ]
    }
    plan = loop.planner.plan(batch, [], catalog.begin(), now)
    assert plan.positions == {tp: 6}  # 5 done; 6 and everything after it wait
    assert plan.pauses == {tp: (6, now + 60)}
    [run] = [parsers.RUNS.parse(r.value) for r in plan.outputs if r.topic == "u.runs"]
    assert run.trigger.value == "proc"
    assert run.attempt == 2


async def test_waiting_proc_event_goes_to_retry_topic_with_state(
    tmp_path: Path, settings: Settings
) -> None:
    proposals, _ = registered(tmp_path, 2212)
    loop = IngestLoop(settings, proposals, RunCatalog(), disk_for(settings))
    tp = TopicPartition(FAC, 0)
    value = facility_event("run_corrections_complete", 2212, 4)
    plan = loop.planner.plan({tp: [rec(FAC, 0, value)]}, [], loop.catalog.begin(), time.time())
    assert [r.topic for r in plan.outputs] == ["u.processing", loop.retry_topic]
    assert plan.outputs[1].value == value
    info = parse_retry_headers(plan.outputs[1].headers)
    assert info.attempt == 2
    assert info.source_topic == FAC
    assert plan.positions == {tp: 1}


async def test_reprocess_record_expands_and_bad_one_is_dead_lettered(
    tmp_path: Path, settings: Settings
) -> None:
    proposals, dirs = registered(tmp_path, 2212)
    make_run_folder(dirs[2212], 3)
    loop = IngestLoop(settings, proposals, RunCatalog(), disk_for(settings))
    topic = loop.topics.reprocess
    tp = TopicPartition(topic, 0)
    good = parsers.encode(ReprocessRequested(proposal=2212, runs=(3, 4)))
    plan = loop.planner.plan(
        {tp: [rec(topic, 0, good), rec(topic, 1, b'{"type": "nope"}')]},
        [],
        loop.catalog.begin(),
        time.time(),
    )
    assert [r.topic for r in plan.outputs] == ["u.runs", "u.run-catalog", dlq(topic)]
    assert [o.value for _, o in plan.outcomes] == ["emitted", "missing_run", "dead_lettered"]


async def test_run_messages_carry_trace_context(tmp_path: Path, settings: Settings) -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from runstream_common.settings import TelemetrySettings
    from runstream_common.telemetry import setup_telemetry

    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(
        "ingest", TelemetrySettings(), span_processors=(SimpleSpanProcessor(exporter),)
    )
    proposals, _ = registered(tmp_path, 2212)
    loop = IngestLoop(
        settings,
        proposals,
        RunCatalog(),
        disk_for(settings),
        tracer=telemetry.tracer_provider.get_tracer("t"),
    )
    tp = TopicPartition(FAC, 0)
    plan = loop.planner.plan(
        {tp: [rec(FAC, 0, facility_event("migration_complete", 2212, 9))]},
        [],
        loop.catalog.begin(),
        time.time(),
    )
    headers = dict(plan.outputs[0].headers)
    [span] = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["runstream.run"] == 9
    trace_id = format(span.context.trace_id, "032x")
    assert trace_id in headers["traceparent"].decode()


async def test_catalog_follower_skips_only_its_own_writes_after_loading() -> None:
    from runstream_ingest.adapters.compacted import CompactedReader
    from runstream_ingest.adapters.planning import WRITER_HEADER

    catalog = RunCatalog()
    own = (WRITER_HEADER, b"me")
    reader = CompactedReader(
        KafkaSettings(),
        "u.run-catalog",
        parsers.RUN_CATALOG,
        catalog.merge,
        skip_when_following=lambda r: own in (r.headers or ()),
    )

    def entry(run: int, headers: list[tuple[str, bytes]]) -> ConsumerRecord:
        return rec(
            "u.run-catalog",
            run,
            parsers.encode(RunKnown(proposal=1, run=run, raw_seen=True)),
            headers,
        )

    reader._apply_record(entry(1, [own]))  # loading: everything counts, own writes included
    reader._following = True
    reader._apply_record(entry(2, [own]))  # following: already in memory since the commit
    reader._apply_record(entry(3, [(WRITER_HEADER, b"another-instance")]))
    reader._apply_record(entry(4, []))
    assert catalog.runs(1) == [1, 3, 4]
    await reader.stop()


async def test_a_handler_bug_dead_letters_the_record_and_an_os_error_retries(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runstream_ingest.adapters.planning as loop_module

    proposals, _ = registered(tmp_path, 2212)
    loop = IngestLoop(settings, proposals, RunCatalog(), disk_for(settings))
    tp = TopicPartition(FAC, 0)
    batch = {tp: [rec(FAC, 0, facility_event("migration_complete", 2212, 1))]}

    def boom(*_a: object, **_k: object) -> list:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(loop_module, "handle_facility", boom)
    plan = loop.planner.plan(batch, [], loop.catalog.begin(), time.time())
    assert [r.topic for r in plan.outputs] == [dlq(FAC)]
    assert dict(plan.outputs[0].headers)[DLQ_REASON] == b"ZeroDivisionError: bug"
    assert plan.positions == {tp: 1}

    def stale(*_a: object, **_k: object) -> list:
        raise OSError("Stale file handle")

    monkeypatch.setattr(loop_module, "handle_facility", stale)
    with pytest.raises(OSError, match="Stale"):
        loop.planner.plan(batch, [], loop.catalog.begin(), time.time())


async def test_processing_follower_releases_a_run_when_its_raw_pass_ends() -> None:
    from runstream_common.messages import ProcessingStateChanged, ProcessingStatus, Trigger
    from runstream_ingest.adapters.processing import ProcessingFollower
    from runstream_ingest.ids import facility_request_id
    from runstream_ingest.tables import RawInFlight

    in_flight = RawInFlight()
    in_flight.add(1, 5)
    in_flight.add(1, 6)
    follower = ProcessingFollower(in_flight)

    def state(
        run: int,
        status: ProcessingStatus,
        trigger: Trigger = Trigger.RAW,
        request_id: str | None = None,
    ):
        msg = ProcessingStateChanged(
            processing_id="x",
            request_id=request_id or facility_request_id(1, run, trigger),
            proposal=1,
            run=run,
            trigger=trigger,
            status=status,
        )
        return rec("u.processing", 0, parsers.encode(msg), key=run_key(1, run))

    # a record of a run not in flight is not even parsed
    follower.apply(rec("u.processing", 0, b"not json", key=run_key(1, 7)))
    follower.apply(state(5, ProcessingStatus.RUNNING))
    follower.apply(state(5, ProcessingStatus.FINISHED, Trigger.PROC))
    follower.apply(state(5, ProcessingStatus.FINISHED, request_id="a-reprocess"))
    assert (1, 5) in in_flight
    follower.apply(state(5, ProcessingStatus.FAILED))
    assert (1, 5) not in in_flight
    assert (1, 6) in in_flight


async def test_only_batches_whose_repeat_writes_nothing_are_replay_safe(
    tmp_path: Path, settings: Settings
) -> None:
    proposals, dirs = registered(tmp_path, 2212)
    make_run_folder(dirs[2212], 3)
    loop = IngestLoop(settings, proposals, RunCatalog(), disk_for(settings))

    def plan_of(*values: bytes, topic: str = FAC):
        records = [rec(topic, i, v) for i, v in enumerate(values)]
        txn = loop.catalog.begin()
        plan = loop.planner.plan({TopicPartition(topic, 0): records}, [], txn, time.time())
        loop.catalog.commit(txn)
        return plan

    emit = facility_event("migration_complete", 2212, 1)
    first = plan_of(
        emit, facility_event("nonsense", 2212, 2), facility_event("migration_complete", 9999, 1)
    )
    assert [o.value for _, o in first.outcomes] == ["emitted", "dead_lettered", "unregistered"]
    assert not first.replay_safe  # the unknown event's dead letter
    quiet = plan_of(facility_event("migration_complete", 9999, 2))
    assert [o.value for _, o in quiet.outcomes] == ["unregistered"]
    assert quiet.replay_safe
    again = plan_of(emit)  # the replay after a crash: a duplicate, nothing written
    assert again.outputs == []
    assert again.replay_safe
    assert not plan_of(emit, b"{oops").replay_safe  # a dead letter would be written twice
    assert not plan_of(facility_event("run_corrections_complete", 2212, 7)).replay_safe  # waits
    request = parsers.encode(ReprocessRequested(proposal=2212, runs=(3,)))
    assert not plan_of(request, topic=loop.topics.reprocess).replay_safe


async def test_proc_event_in_the_same_batch_as_its_raw_event_waits_for_the_raw_pass(
    tmp_path: Path, settings: Settings
) -> None:
    proposals, dirs = registered(tmp_path, 2212)
    make_run_folder(dirs[2212], 4, "proc")
    waits_for_raw = settings.model_copy(update={"proc_waits_for_raw": True})
    loop = IngestLoop(waits_for_raw, proposals, RunCatalog(), disk_for(waits_for_raw))
    tp = TopicPartition(FAC, 0)
    batch = {
        tp: [
            rec(FAC, 0, facility_event("migration_complete", 2212, 4)),
            rec(FAC, 1, facility_event("run_corrections_complete", 2212, 4)),
        ]
    }
    plan = loop.planner.plan(batch, [], loop.catalog.begin(), time.time())
    assert [o.value for _, o in plan.outcomes] == ["emitted", "waiting"]
    assert plan.raw_sent == {(2212, 4)}
    state = parsers.PROCESSING.parse(plan.outputs[2].value)
    assert state.reason is not None
    assert "raw processing" in state.reason


async def test_aiokafka_concurrent_transactions_backoff_is_shortened(settings: Settings) -> None:
    import aiokafka.producer.sender as sender
    from runstream_ingest.adapters.loop import set_concurrent_transactions_backoff

    before = sender.BACKOFF_OVERRIDE
    try:
        assert set_concurrent_transactions_backoff(0.003)
        assert sender.BACKOFF_OVERRIDE == 0.003
        IngestLoop(settings, ProposalTable(), RunCatalog(), disk_for(settings))
        assert settings.concurrent_transactions_backoff_ms / 1000 == sender.BACKOFF_OVERRIDE
    finally:
        sender.BACKOFF_OVERRIDE = before


async def test_inbox_takes_in_offset_order_and_forgets_dropped_partitions() -> None:
    from runstream_common.inbox import Inbox

    class FakeConsumer:
        def __init__(self, batches: list[dict]) -> None:
            self.batches = batches

        async def getmany(self, timeout_ms: int, max_records: int) -> dict:
            if self.batches:
                return self.batches.pop(0)
            await asyncio.sleep(timeout_ms / 1000)
            return {}

    a, b = TopicPartition(FAC, 0), TopicPartition(FAC, 1)
    consumer = FakeConsumer(
        [
            {a: [rec(FAC, 0, b"1"), rec(FAC, 1, b"2")]},
            {a: [rec(FAC, 2, b"3")], b: [rec(FAC, 7, b"x")]},
        ]
    )
    inbox = Inbox(consumer, batch_max=2, poll_timeout_ms=10)  # type: ignore[arg-type]
    await inbox.wait(1.0)
    await asyncio.sleep(0.05)  # the fake answers at once: both batches are in by now
    assert len(inbox) == 4
    assert inbox.first_offsets() == {a: 0, b: 7}
    first = inbox.take()
    assert [r.offset for r in first[a]] == [0, 1]
    assert b not in first
    inbox.drop(b)
    second = inbox.take()
    assert [r.offset for r in second[a]] == [2]
    assert b not in second
    assert len(inbox) == 0
    await inbox.halt()


async def test_batches_that_need_no_file_system_are_recognised(
    tmp_path: Path, settings: Settings
) -> None:
    from runstream_ingest.adapters.disk import LocalDisk

    class RecordingDisk(LocalDisk):
        """Counts the calls that would touch the file system."""

        blocking = 0

        def proposal_dir(self, registration):  # type: ignore[no-untyped-def]
            if not self.knows_proposal_dir(registration):
                self.blocking += 1
            return super().proposal_dir(registration)

        def folder(self, path):  # type: ignore[no-untyped-def]
            self.blocking += 1
            return super().folder(path)

        def exists(self, path):  # type: ignore[no-untyped-def]
            self.blocking += 1
            return super().exists(path)

    proposals, _ = registered(tmp_path, 2212)
    disk = RecordingDisk(settings.layout(), settings.settle_s)
    loop = IngestLoop(settings, proposals, RunCatalog(), disk)
    tp = TopicPartition(FAC, 0)

    def batch(*values: bytes) -> dict:
        return {tp: [rec(FAC, i, v) for i, v in enumerate(values)]}

    raw = batch(facility_event("migration_complete", 2212, 1))
    assert loop.planner.touches_disk(raw, [])  # the proposal folder is not known yet
    loop.planner.plan(raw, [], loop.catalog.begin(), time.time())
    assert disk.blocking == 1
    cheap = batch(
        facility_event("migration_complete", 2212, 2),
        facility_event("daq_run_complete", 2212, 3),
        b"{oops",
        facility_event("nonsense", 2212, 4),
        facility_event("migration_complete", 9999, 1),
    )
    assert not loop.planner.touches_disk(cheap, [])
    loop.planner.plan(cheap, [], loop.catalog.begin(), time.time())
    assert disk.blocking == 1  # deciding it asked the file system nothing
    assert loop.planner.touches_disk(batch(facility_event("run_corrections_complete", 2212, 2)), [])
    retry = {TopicPartition(loop.retry_topic, 0): [rec(loop.retry_topic, 0, b"{}")]}
    assert loop.planner.touches_disk(retry, [])
    reprocess = {TopicPartition(loop.topics.reprocess, 0): [rec(loop.topics.reprocess, 0, b"{}")]}
    assert loop.planner.touches_disk(reprocess, [])
    assert loop._decide_inline(cheap, [])
    small = settings.model_copy(update={"inline_max_records": 2})
    assert not IngestLoop(small, proposals, RunCatalog(), disk)._decide_inline(cheap, [])


def test_followers_let_the_broker_gather_records() -> None:
    from runstream_ingest.adapters.compacted import follower_fetch

    assert follower_fetch(None) == {}
    options = follower_fetch(200)
    assert options["fetch_max_wait_ms"] == 200
    assert options["fetch_min_bytes"] >= 1 << 20  # more than ingest's own trickle of writes
