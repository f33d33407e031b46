"""The transactional facility loop against the real broker, fed by an independent producer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from runstream_common import parsers
from runstream_common.kafka import (
    DLQ_ERROR_CLASS,
    DLQ_REASON,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_TOPIC,
)
from runstream_common.messages import (
    ProcessingStateChanged,
    ProcessingStatus,
    RunRequested,
    Trigger,
)
from runstream_common.settings import KafkaSettings
from runstream_common.topics import dlq, run_key
from runstream_ingest.adapters.publisher import publish_once
from runstream_ingest.ids import facility_request_id

from .helpers import make_run_folder
from .kafka_helpers import (
    create_topics,
    event,
    ingest_settings,
    produce,
    read_topic,
    register,
    running,
)

pytestmark = pytest.mark.integration


def _runs(records: list) -> list[RunRequested]:
    return [parsers.RUNS.parse(r.value) for r in records]


def _has_run(run: int, trigger: Trigger = Trigger.RAW):
    def check(records: list) -> bool:
        return any((m.run, m.trigger) == (run, trigger) for m in _runs(records))

    return check


async def _setup(kafka_settings: KafkaSettings, tmp_path: Path, proposal: int = 2212, **overrides):
    pdir = tmp_path / "exp" / "HED" / "202601" / f"p{proposal:06d}"
    (pdir / "raw").mkdir(parents=True)
    settings = ingest_settings(kafka_settings, tmp_path / "exp", **overrides)
    create_topics(kafka_settings.bootstrap_servers, settings.facility_topics)
    await register(kafka_settings, proposal, tmp_path / "ctx", tmp_path / "exp")
    return settings, pdir


async def test_every_event_twice_gives_one_run_message_each(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    settings, pdir = await _setup(kafka_settings, tmp_path)
    raw_topic, cal_topic = settings.facility_topics
    runs = list(range(1, 101))
    for r in runs:
        make_run_folder(pdir, r, "proc")
    burst = [
        event("migration_complete", 2212, r, path=f"/x/r{r:04d}", instrument="HED", cycle="202601")
        for r in runs
    ]
    async with running(settings) as service:
        produce(kafka_settings.bootstrap_servers, raw_topic, burst + burst)  # every event twice
        produce(
            kafka_settings.bootstrap_servers, raw_topic, [event("migration_complete", "2212", "1")]
        )
        produce(
            kafka_settings.bootstrap_servers,
            cal_topic,
            [event("run_corrections_complete", 2212, r) for r in runs] * 2,
        )
        produce(
            kafka_settings.bootstrap_servers, raw_topic, [event("migration_complete", 2212, 999)]
        )  # barrier
        produce(
            kafka_settings.bootstrap_servers,
            cal_topic,
            [event("run_corrections_complete", 2212, 100)],
        )
        records = await read_topic(
            kafka_settings,
            kafka_settings.topics.runs,
            until=lambda recs: (
                _has_run(999)(recs) and _has_run(100, Trigger.PROC)(recs) and len(recs) >= 201
            ),
        )
        stats = dict(service.loop.stats)
    msgs = _runs(records)
    raw = sorted(m.run for m in msgs if m.trigger is Trigger.RAW)
    proc = sorted(m.run for m in msgs if m.trigger is Trigger.PROC)
    assert raw == [*runs, 999]
    assert proc == runs
    assert all(m.request_id == facility_request_id(2212, m.run, m.trigger) for m in msgs)
    assert all(r.key == run_key(2212, parsers.RUNS.parse(r.value).run) for r in records)
    assert {m.proposal_dir for m in msgs} == {str(pdir)}
    assert stats["duplicate"] == 100 + 1 + 101
    catalog = [
        parsers.RUN_CATALOG.parse(r.value)
        for r in await read_topic(kafka_settings, kafka_settings.topics.run_catalog)
    ]
    latest = {(c.proposal, c.run): c for c in catalog}
    assert latest[(2212, 5)].raw_seen
    assert latest[(2212, 5)].proc_seen
    assert latest[(2212, 5)].source["instrument"] == "HED"


async def test_malformed_events_go_to_the_dead_letter_topic(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    settings, _ = await _setup(kafka_settings, tmp_path)
    raw_topic = settings.facility_topics[0]
    bad = [
        b"not json at all",
        event("migration_complete", 2212, "forty-two"),
        b'{"event": "migration_complete", "run": 3}',
    ]
    async with running(settings) as service:
        produce(kafka_settings.bootstrap_servers, raw_topic, bad, key=b"k1")
        produce(
            kafka_settings.bootstrap_servers,
            raw_topic,
            [event("run_started", 2212, 1), event("migration_complete", 7777, 1)],
        )
        produce(kafka_settings.bootstrap_servers, raw_topic, [event("migration_complete", 2212, 1)])
        await read_topic(kafka_settings, kafka_settings.topics.runs, until=_has_run(1))
        dead = await read_topic(kafka_settings, dlq(raw_topic), until=lambda recs: len(recs) >= 4)
        stats = dict(service.loop.stats)
    dead.sort(key=lambda r: int(dict(r.headers)[DLQ_SOURCE_OFFSET]))
    assert [r.value for r in dead[:3]] == bad
    assert all(r.key == b"k1" for r in dead[:3])
    headers = [dict(r.headers) for r in dead]
    assert all(h[DLQ_SOURCE_TOPIC] == raw_topic.encode() for h in headers)
    assert all(h[DLQ_ERROR_CLASS] == b"MessageFormatError" for h in headers[:3])
    assert b"run" in headers[1][DLQ_REASON]
    assert b"proposal" in headers[2][DLQ_REASON]
    assert headers[3][DLQ_ERROR_CLASS] == b"UnknownEvent"  # run_started: not an event we map
    assert b"'run_started'" in headers[3][DLQ_REASON]
    assert stats["unregistered"] == 1
    assert stats["dead_lettered"] == 4


async def test_a_failing_dead_letter_write_is_retried_and_nothing_is_skipped(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """The dead letter travels in the batch's transaction: while it cannot be written, the
    batch is rolled back and decided again; the offsets never move past the bad record."""
    settings, _ = await _setup(kafka_settings, tmp_path, retry_backoff_s=0.05)
    raw_topic = settings.facility_topics[0]
    async with running(settings) as service:
        failures = {"left": 3, "dlq_sends": 0}
        for producer in service.loop.producers:
            send = producer.send

            async def flaky_send(topic: str, *args: Any, _send: Any = send, **kw: Any) -> Any:
                if topic.endswith(".dlq"):
                    failures["dlq_sends"] += 1
                    if failures["left"]:
                        failures["left"] -= 1
                        raise KafkaConnectionError("broker blip")
                return await _send(topic, *args, **kw)

            producer.send = flaky_send  # type: ignore[method-assign]
        values = [
            event("migration_complete", 2212, 1),
            b"{oops",
            event("migration_complete", 2212, 2),
        ]
        produce(kafka_settings.bootstrap_servers, raw_topic, values, key=b"k")
        runs = await read_topic(
            kafka_settings, kafka_settings.topics.runs, until=lambda r: _has_run(2)(r)
        )
        dead = await read_topic(kafka_settings, dlq(raw_topic), until=lambda recs: len(recs) >= 1)
    assert failures == {"left": 0, "dlq_sends": 4}
    assert [r.value for r in dead] == [b"{oops"]  # once: the failed tries were rolled back
    assert sorted(m.run for m in _runs(runs)) == [1, 2]


async def test_proc_event_waits_for_its_folder_and_says_why(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    settings, pdir = await _setup(kafka_settings, tmp_path, proc_max_attempts=50)
    raw_topic, cal_topic = settings.facility_topics
    async with running(settings):
        # calibration reports before migration: proc waits for the raw run message first ...
        produce(
            kafka_settings.bootstrap_servers,
            cal_topic,
            [event("run_corrections_complete", 2212, 7)],
        )
        await read_topic(
            kafka_settings, kafka_settings.topics.processing, until=lambda recs: len(recs) >= 1
        )
        produce(kafka_settings.bootstrap_servers, raw_topic, [event("migration_complete", 2212, 7)])
        await read_topic(kafka_settings, kafka_settings.topics.runs, until=_has_run(7))

        def has_reason(text: str):
            def check(recs: list) -> bool:
                return any(text in (parsers.PROCESSING.parse(r.value).reason or "") for r in recs)

            return check

        # ... then for the raw pass to finish (the test plays the executor) ...
        await read_topic(
            kafka_settings,
            kafka_settings.topics.processing,
            until=has_reason("raw processing of this run has not finished"),
        )
        raw_done = ProcessingStateChanged(
            processing_id="exec-1",
            request_id=facility_request_id(2212, 7, Trigger.RAW),
            proposal=2212,
            run=7,
            trigger=Trigger.RAW,
            status=ProcessingStatus.FINISHED,
        )
        await publish_once(
            kafka_settings, [(kafka_settings.topics.processing, run_key(2212, 7), raw_done)]
        )

        # ... then for its proc folder, saying so on the processing topic
        folder_reason = has_reason("does not exist yet")
        waiting = await read_topic(
            kafka_settings, kafka_settings.topics.processing, until=folder_reason
        )
        states = [
            s
            for s in (parsers.PROCESSING.parse(r.value) for r in waiting)
            if s.processing_id != "exec-1"
        ]
        assert all(s.status is ProcessingStatus.WAITING for s in states)
        assert "no raw run message" in (states[0].reason or "")
        make_run_folder(pdir, 7, "proc", age_s=10)  # calibration finished
        records = await read_topic(
            kafka_settings, kafka_settings.topics.runs, until=_has_run(7, Trigger.PROC), timeout=30
        )
    [proc] = [m for m in _runs(records) if m.trigger is Trigger.PROC]
    assert proc.attempt >= 4
    assert proc.request_id == states[0].request_id


async def test_an_event_right_after_its_registration_gives_its_run_message(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """Registered while ingest runs, the event sent at once: ingest reads the registry to
    its end before it calls the proposal unregistered (the deterministic version of this
    race, with a follower that never reads by itself, is in test_app_contract.py)."""
    pdir = tmp_path / "exp" / "HED" / "202601" / "p002213"
    (pdir / "raw").mkdir(parents=True)
    settings = ingest_settings(kafka_settings, tmp_path / "exp")
    create_topics(kafka_settings.bootstrap_servers, settings.facility_topics)
    raw_topic = settings.facility_topics[0]
    async with running(settings) as service:
        await register(kafka_settings, 2213, tmp_path / "ctx", tmp_path / "exp")
        produce(kafka_settings.bootstrap_servers, raw_topic, [event("migration_complete", 2213, 4)])
        records = await read_topic(kafka_settings, kafka_settings.topics.runs, until=_has_run(4))
        stats = dict(service.loop.stats)
    assert [(m.proposal, m.run) for m in _runs(records)] == [(2213, 4)]
    assert stats == {"emitted": 1}
