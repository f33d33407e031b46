"""Helpers for end-to-end tests: a GUI-like feed follower, waiting, reading values back."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from runstream_common import parsers
from runstream_common.messages import ValuesUpdated, ValueView
from runstream_common.settings import KafkaSettings


def scalar(row: asyncpg.Record) -> Any:
    """The inline value of a run_values row, by its kind."""
    kind = row["kind"]
    if kind in ("int", "bigint"):
        return row["value_int"]
    if kind == "float":
        return row["value_float"]
    if kind == "bool":
        return row["value_bool"]
    if kind == "str":
        return row["value_text"]
    return None


class Gui:
    """Follows the updates topic like a GUI: no group, no database, only the feed."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.latest: dict[tuple[int, str], ValueView] = {}
        self.updates: dict[tuple[int, str], int] = defaultdict(int)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            self.kafka.topics.updates,
            bootstrap_servers=self.kafka.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            metadata_max_age_ms=1000,
        )
        await self.consumer.start()
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        async for record in self.consumer:
            update = parsers.UPDATES.parse(record.value)
            if isinstance(update, ValuesUpdated):
                for name, view in update.values.items():
                    self.latest[(update.run, name)] = view
                    self.updates[(update.run, name)] += 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.consumer.stop()


async def wait_until(predicate: Any, *, timeout: float, what: str, logs: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await predicate()
        if isinstance(last, list | set | dict):
            if not last:  # nothing missing any more
                return last
        elif last:
            return last
        await asyncio.sleep(0.5)
    detail = f"; still missing: {sorted(last)[:20]}" if isinstance(last, list | set | dict) else ""
    raise AssertionError(f"timed out waiting for {what}{detail}\n{logs() if logs else ''}")


async def dead_letters(kafka: KafkaSettings) -> dict[str, int]:
    """Record counts of every dead-letter topic of this test's prefix."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        topics = [
            t
            for t in await admin.list_topics()
            if t.startswith(kafka.topic_prefix) and t.endswith(".dlq")
        ]
    finally:
        await admin.close()
    if not topics:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        from aiokafka import TopicPartition

        counts: dict[str, int] = {}
        for topic in topics:
            partitions = [
                TopicPartition(topic, p)
                for p in (consumer.partitions_for_topic(topic) or {0, 1, 2})
            ]
            begin = await consumer.beginning_offsets(partitions)
            end = await consumer.end_offsets(partitions)
            counts[topic] = sum(end[tp] - begin[tp] for tp in partitions)
        return counts
    finally:
        await consumer.stop()
