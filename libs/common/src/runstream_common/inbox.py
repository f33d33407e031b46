"""Records polled but not yet decided: a poller task keeps Kafka fetching while a batch commits.

aiokafka does not send the next fetch to a broker while records it fetched
from that broker are still unconsumed, so a loop that polls only between its
transactions lets an event that arrives mid-transaction wait for up to two of
them. The poller drains the consumer as records arrive (up to two batches
ahead); the loop takes from the inbox. Seeking and pausing happen only with the
poller halted, so no fetch of an old position lands afterwards.

Used by the transactional delivery mode (:mod:`runstream_common.transactional`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition

Records = dict[TopicPartition, list[ConsumerRecord[Any, Any]]]
"""Polled records per partition, in offset order."""


class Inbox:
    """Per partition, in offset order, the records the consumer returned and nobody took yet."""

    def __init__(self, consumer: AIOKafkaConsumer, batch_max: int, poll_timeout_ms: int) -> None:
        self.consumer = consumer
        self.batch_max = batch_max
        self.poll_timeout_ms = poll_timeout_ms
        self._records: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        self._size = 0
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return self._size

    async def _poll(self) -> None:
        limit = 2 * self.batch_max
        while True:
            while self._size >= limit:
                self._room.clear()
                await self._room.wait()
            batch = await self.consumer.getmany(
                timeout_ms=self.poll_timeout_ms, max_records=self.batch_max
            )
            for tp, records in batch.items():
                if records:
                    self._records.setdefault(tp, []).extend(records)
                    self._size += len(records)
            if self._size:
                self._arrived.set()

    def poller(self) -> asyncio.Task[None]:
        """The running poller (started if needed); raises what stopped a failed one."""
        if self._poller is not None and self._poller.done():
            failed, self._poller = self._poller, None
            if not failed.cancelled():
                failed.result()
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll(), name="transactional-poll")
        return self._poller

    async def halt(self) -> None:
        """Stop polling; :meth:`poller` starts it again."""
        poller, self._poller = self._poller, None
        if poller is None:
            return
        if not poller.done():
            poller.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await poller  # a failed poller's error was raised by wait(), or no longer matters

    async def wait(self, timeout_s: float) -> None:
        """Until records are here, the poller stopped (its error is raised), or the timeout."""
        poller = self.poller()
        if self._size:
            return
        arrived = asyncio.ensure_future(self._arrived.wait())
        try:
            await asyncio.wait(
                {arrived, poller}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            arrived.cancel()
        if poller.done():
            self.poller()  # raises what stopped it

    def take(self) -> Records:
        """Up to ``batch_max`` records, partition by partition in offset order."""
        room = self.batch_max
        batch: Records = {}
        for tp in list(self._records):
            if room <= 0:
                break
            records = self._records[tp]
            batch[tp], rest = records[:room], records[room:]
            room -= len(batch[tp])
            self._size -= len(batch[tp])
            if rest:
                self._records[tp] = rest
            else:
                del self._records[tp]
        if not self._size:
            self._arrived.clear()
        self._room.set()
        return batch

    def drop(self, tp: TopicPartition) -> None:
        dropped = self._records.pop(tp, [])
        self._size -= len(dropped)
        if not self._size:
            self._arrived.clear()
        self._room.set()

    def first_offsets(self) -> dict[TopicPartition, int]:
        return {tp: records[0].offset for tp, records in self._records.items() if records}

    def clear(self) -> None:
        for tp in list(self._records):
            self.drop(tp)


class DropRevoked(ConsumerRebalanceListener):  # type: ignore[misc]
    """On a rebalance, forget what belongs to partitions this instance no longer owns."""

    def __init__(self, inbox: Inbox, positions: dict[TopicPartition, int]) -> None:
        self._inbox = inbox
        self._positions = positions

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            self._inbox.drop(tp)
            self._positions.pop(tp, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        return None
