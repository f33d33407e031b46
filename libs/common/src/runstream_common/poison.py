"""Poison records: a record that kills its consumer's process N times is dead-lettered.

A crash (kill -9, the kernel's OOM killer, a segfault in user code) never
returns from the handler, so :func:`~runstream_common.kafka.settle` cannot
count it: after the restart the record comes again and kills the process
again, for ever. The :class:`CrashLedger` counts such attempts *durably*:

- before a record's handling starts, ``crashes + 1`` is published (``acks=all``,
  awaited) to the compacted ``attempts`` topic, keyed by the record's identity
  (consumer group, topic, partition, offset);
- when the handling ends (handled, dead-lettered, or given back) the key gets a
  tombstone, sent without waiting for the broker's ack (it usually travels in the
  same request as the next record's count); when it is cancelled (drain,
  rebalance) the count goes back;
- the ledger is read back from the topic whenever partitions are assigned (the
  start of a process, and a takeover from another instance), so whatever was
  left behind by a process that died is there.

A tombstone that a crash loses leaves a count of one for a record that was
handled: if its offset was not committed yet it comes again as a suspect (it was
indeed in flight when the process died) and is cleared; if it was, nothing reads
the count again. Only ``begin`` must be durable before the handling starts, so it
alone is awaited: one round trip per record instead of two (per record 0.4 -> 0.25 ms of
client CPU, 0.3-0.6 -> 0.2 ms of broker CPU, 0.7-0.9 -> 0.45 ms of wall time;
``bench/throughput/ledger.py``, 2026-12-04).

A record whose count is not zero is a *suspect*: it ran while a process died.
:class:`~runstream_common.inflight.InFlight` runs a suspect alone (nothing else
in flight), so the records that merely ran beside the culprit are cleared on
their next attempt, and a record that reaches the limit has killed the process
on its own. It then goes to ``T.dlq`` with the reason instead of being handled
again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError
from pydantic import BaseModel, Field

from .errors import PermanentError
from .settings import KafkaSettings

log = logging.getLogger("runstream.kafka.poison")


class PoisonRecord(PermanentError):
    """A record that crashed the process handling it too many times."""


class CrashCount(BaseModel):
    """The value on the ``attempts`` topic: how often a record's handling began and never ended."""

    crashes: int = Field(ge=0)
    group: str
    topic: str
    partition: int
    offset: int
    key: str | None = None
    hostname: str = ""
    time: float = 0.0


def ledger_key(group: str, topic: str, partition: int, offset: int) -> str:
    return f"{group}/{topic}/{partition}/{offset}"


class CrashLedger:
    """Durable counts of unfinished handlings, per record (see the module docstring)."""

    def __init__(
        self, kafka: KafkaSettings, *, topic: str, group_id: str, max_crashes: int
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.group_id = group_id
        self.max_crashes = max(1, max_crashes)
        self.counts: dict[str, int] = {}
        self._producer: AIOKafkaProducer | None = None
        self._hostname = socket.gethostname()
        self._unacked: set[asyncio.Future[Any]] = set()  # tombstones on their way

    def _key(self, record: ConsumerRecord[Any, Any]) -> str:
        return ledger_key(self.group_id, record.topic, record.partition, record.offset)

    def crashes(self, record: ConsumerRecord[Any, Any]) -> int:
        """How often this record's handling began and never ended (as far as we know)."""
        return self.counts.get(self._key(record), 0)

    async def start(self) -> None:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.kafka.bootstrap_servers,
                acks="all",
                client_id=f"{self.group_id}-attempts",
                **self.kafka.security_kwargs(),
            )
            await producer.start()
            self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()  # flushes the tombstones not acknowledged yet
        self._unacked.clear()

    async def load(self) -> None:
        """Read the ledger from the topic (everything of our consumer group)."""
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.kafka.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            **self.kafka.security_kwargs(),
        )
        await consumer.start()
        try:
            for _ in range(100):  # without a group the consumer takes every partition itself
                partitions = list(consumer.assignment())
                if partitions:
                    break
                await asyncio.sleep(0.1)
            else:
                raise KafkaError(f"no partitions of {self.topic} (does the topic exist?)")
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            counts: dict[str, int] = {}
            prefix = f"{self.group_id}/"
            while True:
                behind = [tp for tp, end in ends.items() if await consumer.position(tp) < end]
                if not behind:
                    break
                batches = await consumer.getmany(*partitions, timeout_ms=1000)
                for records in batches.values():
                    for rec in records:
                        key = (rec.key or b"").decode(errors="replace")
                        if not key.startswith(prefix):
                            continue
                        if rec.value is None:
                            counts.pop(key, None)
                            continue
                        try:
                            counts[key] = CrashCount.model_validate_json(rec.value).crashes
                        except ValueError:
                            log.warning("ignoring a malformed attempts record %r", key)
            self.counts = {k: n for k, n in counts.items() if n > 0}
        finally:
            await consumer.stop()
        if self.counts:
            log.warning("records that were being handled when a process died: %s", self.counts)

    async def _put(self, key: str, value: bytes | None) -> None:
        await self.start()
        assert self._producer is not None
        await self._producer.send_and_wait(self.topic, value, key=key.encode())

    async def begin(self, record: ConsumerRecord[Any, Any]) -> int:
        """Count this attempt durably before it starts; returns the crashes before it."""
        key = self._key(record)
        before = self.counts.get(key, 0)
        count = CrashCount(
            crashes=before + 1,
            group=self.group_id,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key.decode(errors="replace") if isinstance(record.key, bytes) else None,
            hostname=self._hostname,
            time=time.time(),
        )
        await self._put(key, json.dumps(count.model_dump()).encode())
        self.counts[key] = before + 1
        return before

    async def end(self, record: ConsumerRecord[Any, Any]) -> None:
        """The handling ended without killing the process: forget the record.

        The tombstone is handed to the producer, not awaited (see the module docstring);
        a delivery that fails is logged.
        """
        key = self._key(record)
        await self.start()
        assert self._producer is not None
        delivery = await self._producer.send(self.topic, None, key=key.encode())
        self._unacked.add(delivery)
        delivery.add_done_callback(self._delivered)
        self.counts.pop(key, None)

    def _delivered(self, delivery: asyncio.Future[Any]) -> None:
        self._unacked.discard(delivery)
        if not delivery.cancelled() and delivery.exception() is not None:
            log.warning("attempts ledger: a tombstone was not delivered: %r", delivery.exception())

    async def undo(self, record: ConsumerRecord[Any, Any], before: int) -> None:
        """The handling was cancelled (not a crash): put the count back to ``before``."""
        if before <= 0:
            await self.end(record)
            return
        key = self._key(record)
        count = CrashCount(
            crashes=before,
            group=self.group_id,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            hostname=self._hostname,
            time=time.time(),
        )
        await self._put(key, json.dumps(count.model_dump()).encode())
        self.counts[key] = before

    def reason(self, record: ConsumerRecord[Any, Any], crashes: int, what: str) -> str:
        return (
            f"{record.topic}[{record.partition}]@{record.offset} crashed the {what} process "
            f"{crashes} times (it was being handled each time the process died); "
            "dead-lettered instead of being handled again"
        )


async def retry_kafka(action: Any, *, attempts: int = 0, pause_s: float = 1.0) -> Any:
    """Await ``action()`` until the broker takes it (``attempts`` 0: for ever)."""
    tries = 0
    while True:
        tries += 1
        try:
            return await action()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if attempts and tries >= attempts:
                raise
            log.warning("attempts ledger: %r; trying again", exc)
            await asyncio.sleep(min(30.0, pause_s * tries))


__all__ = ["CrashCount", "CrashLedger", "PoisonRecord", "ledger_key", "retry_kafka"]
