"""Small helpers for tests that talk to the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from runstream_common.settings import KafkaSettings


async def committed_offsets(settings: KafkaSettings, group_id: str) -> dict[tuple[str, int], int]:
    """Committed offsets of a group, read through the admin API (no group join)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group_id)
    finally:
        await admin.close()
    return {
        (tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0
    }


async def wait_for(predicate: Any, timeout: float = 60.0, interval: float = 0.2) -> Any:
    """Poll an async predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def read_all(
    settings: KafkaSettings, topic: str, expected: int, timeout: float = 60.0
) -> list[Any]:
    """Read ``expected`` committed records of ``topic`` from the beginning, without a group."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        records: list[Any] = []
        while len(records) < expected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            batch = await consumer.getmany(timeout_ms=int(min(remaining, 1.0) * 1000))
            for recs in batch.values():
                records.extend(recs)
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


def delete_topics(bootstrap_servers: str, prefix: str) -> None:
    """Delete every topic named ``<prefix>.*`` (best effort, never raises).

    Each test makes a few dozen partitions under its own prefix; left behind, a whole
    run's thousands of topics exhaust the broker's open files (one per segment).
    """
    from confluent_kafka.admin import AdminClient

    try:
        admin = AdminClient({"bootstrap.servers": bootstrap_servers})
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{prefix}.")]
        if not names:
            return
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # already gone, broker busy: clutter only
                future.result(timeout=30)
    except Exception:  # a broker that is down has nothing to clean
        return


def topic_counts(bootstrap_servers: str, prefix: str) -> str:
    """``topic: records`` for every topic named ``<prefix>.*`` (diagnostics of a failed test)."""
    from confluent_kafka import Consumer, TopicPartition

    try:
        consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": f"{prefix}-diag"})
        try:
            topics = consumer.list_topics(timeout=10).topics
            lines = []
            for name in sorted(t for t in topics if t.startswith(f"{prefix}.")):
                total = 0
                for partition in topics[name].partitions:
                    low, high = consumer.get_watermark_offsets(
                        TopicPartition(name, partition), timeout=10
                    )
                    total += high - low
                lines.append(f"{name}: {total}")
            return "\n".join(lines)
        finally:
            consumer.close()
    except Exception as exc:  # diagnostics must never hide the real failure
        return f"(topic counts unavailable: {exc!r})"
