"""A hostile facility: every bad event is refused at the edge, with its reason, and nothing else moves.

The four services run as real processes on the real stack. Between two valid
runs the facility topic gets out-of-range numbers, an oversized event (one at
the broker's own size limit among them), broken JSON, wrong types and unknown
events. Each must land in the facility topic's dead-letter topic with a reason;
no other dead-letter topic, no run message, no catalog entry and no database row
may come from any of them; the valid runs around them are processed in full.
"""

from __future__ import annotations

import json

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from runstream_common import parsers
from runstream_common.kafka import DLQ_ERROR_CLASS, DLQ_REASON, DLQ_SOURCE_OFFSET
from runstream_common.limits import DLQ_TRUNCATED
from runstream_common.settings import KafkaSettings
from runstream_common.topics import dlq

from .conftest import E2E, PROPOSAL, RAW_NAMES
from .helpers import dead_letters, wait_until

pytestmark = pytest.mark.e2e

BROKER_SIZED = 1_048_000  # accepted by the broker; its dead letter plus headers would not be


def _event(**fields: object) -> bytes:
    return json.dumps({"event": "migration_complete", "proposal": PROPOSAL, **fields}).encode()


# (what, raw value, error class, a piece of the reason)
HOSTILE: list[tuple[str, bytes, str, str]] = [
    ("run 2^31", _event(run=2**31), "MessageFormatError", "less than or equal to 2147483647"),
    ("run 10^20", _event(run=10**20), "MessageFormatError", "less than or equal to 2147483647"),
    ("run as a long string", _event(run="99999999999"), "MessageFormatError", "run"),
    ("negative run", _event(run=-5), "MessageFormatError", "greater than or equal to 0"),
    ("proposal 2^31", _event(run=1, proposal=2**31), "MessageFormatError", "proposal"),
    ("1 MB note", _event(run=3, note="x" * 1_000_000), "MessageTooLarge", "limit of 65536 bytes"),
    (
        "at the broker's limit",
        _event(run=3, note="y" * (BROKER_SIZED - 80)),
        "MessageTooLarge",
        "limit of 65536 bytes",
    ),
    ("broken JSON", b'{"event": "migration_complete", "proposal": ', "MessageFormatError", "JSON"),
    ("not UTF-8", b"\xff\xfe\xfd", "MessageFormatError", "facility event"),
    ("empty", b"", "MessageFormatError", "facility event"),
    ("a JSON array", b'["migration_complete", 4242, 3]', "MessageFormatError", "facility event"),
    ("run true", _event(run=True), "MessageFormatError", "true/false"),
    ("run 1.5", _event(run=1.5), "MessageFormatError", "run"),
    ("proposal a list", _event(run=3, proposal=[PROPOSAL]), "MessageFormatError", "proposal"),
    ("event a number", _event(run=3, event=7), "MessageFormatError", "event"),
    ("unknown event", _event(run=3, event="run_started"), "UnknownEvent", "'run_started'"),
    ("renamed event", _event(run=4, event="migration_done"), "UnknownEvent", "migration_complete"),
]


def _send(e2e: E2E, values: list[bytes]) -> None:
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": e2e.kafka.bootstrap_servers,
            "acks": "all",
            "message.max.bytes": 1_048_588,
        }
    )
    for value in values:  # one partition, so the order is the order sent
        producer.produce(e2e.raw_topic, value, key=b"hostile", partition=0)
    assert producer.flush(30) == 0


async def _read(kafka: KafkaSettings, topic: str, *, at_least: int) -> list:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        fetch_max_bytes=8 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    records: list = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=2000)
            if not batch and len(records) >= at_least:
                return records
            for recs in batch.values():
                records.extend(recs)
    finally:
        await consumer.stop()


@pytest.mark.timeout(600)
async def test_hostile_events_are_refused_at_the_edge_and_valid_runs_flow(e2e: E2E) -> None:
    e2e.make_runs(range(1, 3))
    await e2e.system.start()
    _send(e2e, [_event(run=1), *(value for _, value, _, _ in HOSTILE), _event(run=2)])

    async def raw_done() -> list[str]:
        values = await e2e.values()
        return [f"{r}:{n}" for r in (1, 2) for n in RAW_NAMES if (r, n) not in values]

    await wait_until(raw_done, timeout=300, what="raw values of runs 1 and 2", logs=e2e.system.logs)

    dead = await _read(e2e.kafka, dlq(e2e.raw_topic), at_least=len(HOSTILE))
    dead.sort(key=lambda r: int(dict(r.headers)[DLQ_SOURCE_OFFSET]))
    assert len(dead) == len(HOSTILE), [dict(r.headers)[DLQ_REASON] for r in dead]
    for record, (what, value, error_class, reason) in zip(dead, HOSTILE, strict=True):
        headers = dict(record.headers)
        assert headers[DLQ_ERROR_CLASS].decode() == error_class, what
        assert reason in headers[DLQ_REASON].decode(), (what, headers[DLQ_REASON])
        assert record.key == b"hostile"
        if DLQ_TRUNCATED in headers:  # only the one at the broker's limit had to be cut
            assert what == "at the broker's limit"
            assert value.startswith(record.value)
        else:
            assert record.value == value, what
    assert sum(DLQ_TRUNCATED in dict(r.headers) for r in dead) == 1

    # Nothing derived from them anywhere: no other dead letters, no run message,
    # no catalog entry, no database row.
    counts = await dead_letters(e2e.kafka)  # offsets: the facility's also holds commit markers
    assert counts[dlq(e2e.raw_topic)] >= len(HOSTILE)
    assert {t: n for t, n in counts.items() if n and t != dlq(e2e.raw_topic)} == {}
    assert len(counts) > 5, counts  # the services' own dead-letter topics were looked at
    runs = await _read(e2e.kafka, e2e.kafka.topics.runs, at_least=2)
    assert sorted(parsers.RUNS.parse(r.value).run for r in runs) == [1, 2]
    catalog = await _read(e2e.kafka, e2e.kafka.topics.run_catalog, at_least=2)
    assert sorted({parsers.RUN_CATALOG.parse(r.value).run for r in catalog}) == [1, 2]
    conn = await asyncpg.connect(e2e.dsn)
    try:
        assert [r["run"] for r in await conn.fetch("SELECT run FROM runs ORDER BY run")] == [1, 2]
        value_runs = await conn.fetch("SELECT DISTINCT run FROM run_values ORDER BY run")
        assert [r["run"] for r in value_runs] == [1, 2]
        assert (
            await conn.fetchval("SELECT count(*) FROM proposals WHERE proposal <> $1", PROPOSAL)
            == 0
        )
    finally:
        await conn.close()
