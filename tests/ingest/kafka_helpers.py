"""Independent Kafka clients for the ingest integration tests.

Events are produced with confluent-kafka (librdkafka), not with our code; run
messages are read back with a group-less ``read_committed`` consumer.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from runstream_common.admin import ensure_topics
from runstream_common.messages import ProposalRegistered
from runstream_common.settings import KafkaSettings
from runstream_common.topics import proposal_key
from runstream_ingest.adapters.compacted import partitions_of
from runstream_ingest.adapters.publisher import publish_once
from runstream_ingest.service import IngestService
from runstream_ingest.settings import Settings


def create_topics(bootstrap: str, topics: list[str], partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics]
    )
    for future in futures.values():
        future.result(timeout=30)


def produce(bootstrap: str, topic: str, values: list[bytes], key: bytes | None = None) -> None:
    """Send ``values`` in order with librdkafka (idempotent, acks=all) and wait for delivery."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    errors: list[Any] = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    for value in values:
        producer.produce(topic, value=value, key=key, on_delivery=report)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors, errors


def event(name: str, proposal: Any, run: Any, **extra: Any) -> bytes:
    return json.dumps({"event": name, "proposal": proposal, "run": run, **extra}).encode()


async def register(kafka: KafkaSettings, proposal: int, context_dir: Path, data_root: Path) -> None:
    await ensure_topics(kafka, [kafka.topics.proposals], compacted={kafka.topics.proposals})
    await publish_once(
        kafka,
        [
            (
                kafka.topics.proposals,
                proposal_key(proposal),
                ProposalRegistered(
                    proposal=proposal, context_dir=str(context_dir), data_root=str(data_root)
                ),
            )
        ],
    )


async def read_topic(
    kafka: KafkaSettings,
    topic: str,
    until: Callable[[list[Any]], bool] = lambda _r: True,
    timeout: float = 60.0,
) -> list[Any]:
    """Records of ``topic`` from the beginning: first until ``until(records)``, then to the end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        tps = await partitions_of(consumer, topic, timeout)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        while not until(records):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{topic}: condition not met within {timeout} s ({len(records)} records; "
                    f"last: {records[-1].value[-400:] if records else None!r})"
                )
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
        end = await consumer.end_offsets(tps)
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: could not read to the end")
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
        return records
    finally:
        await consumer.stop()


def ingest_settings(kafka: KafkaSettings, data_root: Path, **overrides: Any) -> Settings:
    prefix = kafka.topic_prefix
    values: dict[str, Any] = {
        "kafka": kafka,
        "facility_topics": [f"{prefix}.fac.r2d2", f"{prefix}.fac.cal"],
        "group_id": f"{prefix}-ingest",
        "transactional_id": f"{prefix}-ingest",
        "data_root": str(data_root),
        "settle_s": 0.5,
        "proc_retry_delay_s": 0.5,
        "proc_max_attempts": 4,
        "poll_timeout_ms": 50,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[IngestService]:
    service = IngestService(settings)
    await service.prepare()
    service.launch()
    try:
        yield service
    finally:
        await service.stop()
        assert service.failed is None, service.failed
