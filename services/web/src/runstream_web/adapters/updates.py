"""Reading the store's ``updates`` topic from "now" on, without a consumer group.

Every web process reads every partition itself (no group, nothing committed):
browsers get their history from the database, and only what changes from now
on from here. Each record is checked against the topic's message models and
handed on as it came, with the proposal it concerns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from runstream_common import parsers
from runstream_common.errors import MessageFormatError, ServiceUnavailable
from runstream_common.settings import KafkaSettings

log = logging.getLogger("runstream.web.updates")

OnUpdate = Callable[[int | None, bytes], object]


def proposal_of(update: Any) -> int | None:
    """The proposal an update belongs to (job and processing states carry it inside)."""
    proposal = getattr(update, "proposal", None)
    if proposal is None:
        state = getattr(update, "state", None)
        proposal = getattr(state, "proposal", None)
    return proposal if isinstance(proposal, int) else None


def browser_payload(raw: bytes) -> bytes:
    """One line of JSON (an event-stream ``data:`` line cannot hold a newline)."""
    if b"\n" in raw or b"\r" in raw:
        return orjson.dumps(orjson.loads(raw))
    return raw


class UpdatesReader:
    """Positions itself at the end of every partition on :meth:`start`, then follows."""

    def __init__(self, kafka: KafkaSettings, on_update: OnUpdate, *, client_id: str) -> None:
        self.topic = kafka.topics.updates
        self._kafka = kafka
        self._client_id = client_id
        self._on_update = on_update
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.records = 0
        self.last_record_at: float | None = None

    async def start(self, timeout_s: float = 30.0) -> None:
        self._consumer = consumer = AIOKafkaConsumer(  # needs the running loop: made here
            bootstrap_servers=self._kafka.bootstrap_servers,
            client_id=self._client_id,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            metadata_max_age_ms=30_000,
            **self._kafka.security_kwargs(),
        )
        await consumer.start()
        deadline = time.monotonic() + timeout_s
        client = consumer._client  # a group-less consumer tracks no topic until told
        await client.add_topic(self.topic)
        while not (partitions := consumer.partitions_for_topic(self.topic)):
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"topic {self.topic} has no partitions")
            await asyncio.sleep(0.2)
            await client.force_metadata_update()
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # pin the end now: what is published from here on is ours
            await consumer.position(tp)
        self._task = asyncio.create_task(self._follow(consumer), name="updates-reader")

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=1000, max_records=2000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # aiokafka reconnects itself; do not die on a hiccup
                log.warning("reading %s failed, retrying: %s", self.topic, exc)
                await asyncio.sleep(1.0)
                continue
            for records in batch.values():
                for record in records:
                    self._handle(record.value)

    def _handle(self, raw: bytes | None) -> None:
        self.records += 1
        self.last_record_at = time.time()
        try:
            update = parsers.UPDATES.parse(raw)
        except MessageFormatError as exc:
            log.debug("ignoring an update I cannot read: %s", exc)
            return
        assert raw is not None
        self._on_update(proposal_of(update), browser_payload(raw))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
