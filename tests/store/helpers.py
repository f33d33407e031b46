"""Test doubles and builders for the store's tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import BaseModel
from runstream_common import parsers
from runstream_common.kafka import Delivery
from runstream_common.messages import ProposalSettingsSet
from runstream_common.settings import KafkaSettings

DELIVERY = Delivery(
    topic="t", partition=0, offset=0, key=None, timestamp_ms=0, headers=(), attempt=1
)


class RecordingFeed:
    """The Feed port, recording what the store would publish (topic, key, message)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, Any]] = []

    async def update(self, message: BaseModel, key: bytes) -> None:
        self.sent.append(("updates", key, message))

    async def settings(self, message: ProposalSettingsSet) -> None:
        key = str(message.proposal).encode()
        self.sent.append(("proposal-settings", key, message))
        self.sent.append(("updates", key, message))

    def of_type(self, type_: str) -> list[Any]:
        return [m for topic, _, m in self.sent if topic == "updates" and m.type == type_]

    def clear(self) -> None:
        self.sent.clear()


async def read_topic(
    kafka: KafkaSettings,
    topic: str,
    until: Callable[[list[Any]], bool],
    timeout: float = 60.0,
) -> list[Any]:
    """Parsed messages of ``topic`` from the beginning, until ``until(messages)`` holds.

    Returns ``(key, message)`` pairs; the parser is the topic's own (updates or settings).
    """
    parser = parsers.PROPOSAL_SETTINGS if topic.endswith("proposal-settings") else parsers.UPDATES
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",
        metadata_max_age_ms=500,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        partitions: set[int] = set()
        while not partitions:
            await consumer.topics()  # refreshes the metadata
            partitions = consumer.partitions_for_topic(topic) or set()
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} does not exist")
            if not partitions:
                await asyncio.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got: list[Any] = []
        while not until([m for _, m in got]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: condition not met; got {[m for _, m in got]}")
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                got.extend((r.key, parser.parse(r.value)) for r in records)
        return got
    finally:
        await consumer.stop()


def types_of(messages: list[Any]) -> list[str]:
    return [m.type for m in messages]
