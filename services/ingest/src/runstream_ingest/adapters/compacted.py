"""Read a compacted topic from the beginning (and optionally keep following it).

No consumer group: every partition is assigned, the consumer seeks to the
beginning and reads up to the end offsets it saw at start (``read_committed``, so
the end is the last stable offset). Records that do not parse are logged and
skipped: the state topics are written only by runstream itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from runstream_common.errors import MessageFormatError, ServiceUnavailable
from runstream_common.parsers import Parser
from runstream_common.settings import KafkaSettings

log = logging.getLogger("runstream.ingest.tables")

T = TypeVar("T")


async def partitions_of(
    consumer: AIOKafkaConsumer, topic: str, timeout_s: float
) -> list[TopicPartition]:
    """All partitions of ``topic`` (a group-less consumer tracks no topic until told)."""
    deadline = time.monotonic() + timeout_s
    client = consumer._client
    await client.add_topic(topic)
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return [TopicPartition(topic, p) for p in sorted(partitions)]
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"topic {topic} does not exist")
        await asyncio.sleep(0.2)
        await client.force_metadata_update()


def tail_consumer(
    kafka: KafkaSettings, client_id: str, batch_ms: int | None = None
) -> AIOKafkaConsumer:
    """A group-less ``read_committed`` consumer for :func:`start_at_end`."""
    return AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=client_id,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        **follower_fetch(batch_ms),
        **kafka.security_kwargs(),
    )


async def start_at_end(consumer: AIOKafkaConsumer, topic: str, timeout_s: float) -> None:
    """Start ``consumer`` on every partition of ``topic``, positioned at its current end."""
    await consumer.start()
    tps = await partitions_of(consumer, topic, timeout_s)
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:  # resolve the end offsets now, not lazily at the first fetch
        await consumer.position(tp)


async def caught_up(consumer: AIOKafkaConsumer, timeout_s: float) -> bool:
    """Wait until ``consumer``'s follower has passed the end its partitions have now.

    A consumer's position moves when ``getmany`` returns records, and a follower applies
    them before it awaits anything else, so a position at the end means every record
    that was in the topic when this was called is applied. False after ``timeout_s``
    (the follower is not running, or the broker is slow): the caller decides without.
    """
    tps = sorted(consumer.assignment(), key=lambda tp: (tp.topic, tp.partition))
    if not tps:
        return False
    deadline = time.monotonic() + timeout_s
    end = await consumer.end_offsets(tps)
    while True:
        positions = [await consumer.position(tp) for tp in tps]
        if all(pos >= end[tp] for pos, tp in zip(positions, tps, strict=True)):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)


def follower_fetch(batch_ms: int | None) -> dict[str, int]:
    """Consumer options of a follower that may see new records up to ``batch_ms`` late.

    With the defaults a follower's fetch returns as soon as one record arrives;
    the run-catalog follower would then wake up for each of ingest's own
    transactions. A large ``fetch_min_bytes`` makes the broker hold the fetch
    until ``batch_ms`` have passed (or 1 MiB gathered).
    """
    if batch_ms is None:
        return {}
    return {"fetch_min_bytes": 1 << 20, "fetch_max_wait_ms": batch_ms}


class CompactedReader(Generic[T]):
    """Loads ``topic`` into ``apply`` and then follows it until stopped."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        parser: Parser[T],
        apply: Callable[[T], None],
        *,
        client_id: str = "runstream-ingest-tables",
        skip_when_following: Callable[[Any], bool] | None = None,
        batch_ms: int | None = None,
    ) -> None:
        """``batch_ms``: let the broker gather new records this long per fetch (fewer wake-ups)."""
        self.topic = topic
        self._parser = parser
        self._apply = apply
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            **follower_fetch(batch_ms),
            **kafka.security_kwargs(),
        )
        self.records = 0
        self._following = False
        self._skip = skip_when_following

    async def load(self, timeout_s: float = 60.0) -> int:
        """Start, read everything up to the current end, return the number of records."""
        consumer = self._consumer
        await consumer.start()
        deadline = time.monotonic() + timeout_s
        tps = await partitions_of(consumer, self.topic, timeout_s)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        while True:
            positions = {tp: await consumer.position(tp) for tp in tps}
            if all(positions[tp] >= end[tp] for tp in tps):
                break
            if time.monotonic() > deadline:
                raise ServiceUnavailable(
                    f"could not read {self.topic} to its end within {timeout_s} s "
                    f"(at {positions}, end {end})"
                )
            await self.poll(timeout_ms=200)
        return self.records

    async def poll(self, timeout_ms: int = 1000) -> int:
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        n = 0
        for records in batch.values():
            for record in records:
                self._apply_record(record)
                n += 1
        return n

    def _apply_record(self, record: Any) -> None:
        self.records += 1
        if record.value is None:
            return  # a tombstone: nothing to keep
        if self._following and self._skip is not None and self._skip(record):
            return
        try:
            self._apply(self._parser.parse(record.value))
        except MessageFormatError as exc:
            log.warning(
                "skipping bad record %s[%d]@%d: %s",
                record.topic,
                record.partition,
                record.offset,
                exc,
            )

    async def follow(self) -> None:
        """Keep applying new records until cancelled."""
        self._following = True
        while True:
            await self.poll()

    async def caught_up(self, timeout_s: float) -> bool:
        """Wait until :meth:`follow` has applied what the topic holds now (see :func:`caught_up`)."""
        return await caught_up(self._consumer, timeout_s)

    async def stop(self) -> None:
        await self._consumer.stop()


async def read_table(
    kafka: KafkaSettings, topic: str, parser: Parser[T], timeout_s: float = 30.0
) -> list[T]:
    """Every message of a compacted topic, in partition order (one-shot, for the CLI)."""
    out: list[T] = []
    reader = CompactedReader(kafka, topic, parser, out.append, client_id="runstream-cli")
    try:
        await reader.load(timeout_s)
    finally:
        await reader.stop()
    return out
