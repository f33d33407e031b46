"""DAMNIT's topics on Kafka: publishing the store's announcements, following GUI edits.

The store publishes on ``<prefix>.damnit.db-{db_id}`` (one partition, one key, so a GUI
sees the messages in the order they were sent) with the header
``x-runstream-origin: runstream-store``. GUIs publish there too (after writing a
comment or a user-variable value into ``runs.sqlite``); :class:`EditFollower` consumes
the topics of the databases this store keeps, skips its own messages and hands the
others to a handler. It subscribes to an explicit list of topics (extended whenever a
new database appears), commits each record's offset after its handler returned, and
retries a record whose handler failed transiently. It is not ``runstream_common.kafka.
subscribe``: the topics are DAMNIT's (no dead-letter twins; a bad message is answered
on runstream's feed by the handler) and appear while the service runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from faststream.kafka import KafkaBroker
from runstream_common.admin import ensure_topics
from runstream_common.errors import TransientError
from runstream_common.messages.damnit import ORIGIN_HEADER
from runstream_common.settings import KafkaSettings

log = logging.getLogger("runstream.store.damnit")

ORIGIN = "runstream-store"
_KEY = b"damnit"


class KafkaDamnitPublisher:
    def __init__(self, broker: KafkaBroker, kafka: KafkaSettings) -> None:
        self.broker = broker
        self.kafka = kafka
        self._ensured: set[str] = set()

    async def ensure_topic(self, topic: str) -> None:
        if topic in self._ensured:
            return
        await ensure_topics(self.kafka, [topic], with_dlq=False, partitions=1)
        self._ensured.add(topic)

    async def publish(self, topic: str, messages: list[bytes]) -> None:
        for message in messages:
            await self.broker.publish(
                message,
                topic=topic,
                key=_KEY,
                headers={ORIGIN_HEADER: ORIGIN, "content-type": "application/json"},
            )


Handler = Callable[[str, bytes | None, int], Awaitable[None]]
"""(topic, value, Kafka timestamp ms) -> None; raise TransientError to retry the record."""


class EditFollower:
    def __init__(
        self, kafka: KafkaSettings, group_id: str, handler: Handler, *, retry_s: float = 2.0
    ) -> None:
        self.kafka = kafka
        self.group_id = group_id
        self.handler = handler
        self.retry_s = retry_s
        self._topics: set[str] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap_servers,
            group_id=self.group_id,
            client_id=f"{self.kafka.client_id}-damnit-edits",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=5000,
            session_timeout_ms=self.kafka.session_timeout_ms,
            heartbeat_interval_ms=self.kafka.heartbeat_interval_ms,
            **self.kafka.security_kwargs(),
        )
        await self._consumer.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="damnit-edits")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    def follow(self, topic: str) -> None:
        if topic not in self._topics:
            self._topics.add(topic)
            self._changed.set()

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                if self._changed.is_set():
                    self._changed.clear()
                    consumer.subscribe(topics=sorted(self._topics))
                if not self._topics:
                    await self._changed.wait()
                    continue
                batch = await consumer.getmany(timeout_ms=500, max_records=50)
                for tp, records in batch.items():
                    for record in records:
                        if not await self._handle(consumer, tp, record):
                            break  # seeked back: the record comes again
            except asyncio.CancelledError:
                raise
            except Exception:  # Kafka trouble (commit during a rebalance, ...): go on
                log.exception("following GUI edits failed; trying again")
                await asyncio.sleep(self.retry_s)

    async def _handle(self, consumer: AIOKafkaConsumer, tp: TopicPartition, record: object) -> bool:
        headers = dict(getattr(record, "headers", ()) or ())
        value = getattr(record, "value", None)
        offset = getattr(record, "offset", 0)
        origin = headers.get(ORIGIN_HEADER)
        if origin is None or origin.decode(errors="replace") != ORIGIN:
            try:
                await self.handler(tp.topic, value, getattr(record, "timestamp", 0))
            except TransientError as exc:
                log.warning("GUI edit on %s@%d: %s; trying again", tp.topic, offset, exc)
                await asyncio.sleep(self.retry_s)
                consumer.seek(tp, offset)
                return False
            except Exception:
                log.exception("GUI edit on %s@%d could not be handled; skipped", tp.topic, offset)
        await consumer.commit({tp: offset + 1})
        return True
