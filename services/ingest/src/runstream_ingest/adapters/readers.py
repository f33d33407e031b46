"""The readers of the topics ingest keeps state from: a port, and its Kafka adapter.

Ingest reads three topics besides its transactional loop's inputs: the proposal
registry and its own run catalog (compacted: read to their end at start-up, then
followed) and the executor's processing states (followed from their end). The
service asks a :class:`Readers` for them; :class:`KafkaReaders` reads the broker,
tests pass in-memory ones (tests/support/memory_kafka.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from runstream_common.parsers import Parser
from runstream_common.settings import KafkaSettings

from .compacted import CompactedReader, caught_up, start_at_end, tail_consumer

T = TypeVar("T")


class TopicReader(Protocol):
    """One topic, applied record by record: ``load`` at start-up, then ``follow`` until stopped."""

    async def load(self) -> int:
        """Read what start-up needs (returns the records applied)."""
        ...

    async def follow(self) -> None:
        """Apply new records until cancelled."""
        ...

    async def caught_up(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until every record the topic held when this was
        called is applied; whether it was."""
        ...

    async def stop(self) -> None: ...


class Readers(Protocol):
    """Makes ingest's readers (a port of the service)."""

    def table(
        self,
        topic: str,
        parser: Parser[T],
        apply: Callable[[T], None],
        *,
        skip_when_following: Callable[[Any], bool] | None = None,
    ) -> TopicReader:
        """A compacted topic: ``load`` reads it from the beginning to its end, every record
        parsed and applied (bad ones logged and skipped); records for which
        ``skip_when_following`` is true are not applied once it follows."""
        ...

    def tail(self, topic: str, apply: Callable[[Any], None]) -> TopicReader:
        """A topic from its end: ``load`` only finds the end; each later record is applied raw."""
        ...


@dataclass(frozen=True)
class KafkaReaders:
    """:class:`Readers` of the broker; ``batch_ms``: see :func:`~.compacted.follower_fetch`."""

    kafka: KafkaSettings
    batch_ms: int | None = None

    def table(
        self,
        topic: str,
        parser: Parser[T],
        apply: Callable[[T], None],
        *,
        skip_when_following: Callable[[Any], bool] | None = None,
    ) -> TopicReader:
        return CompactedReader(
            self.kafka, topic, parser, apply,
            skip_when_following=skip_when_following, batch_ms=self.batch_ms,
        )  # fmt: skip

    def tail(self, topic: str, apply: Callable[[Any], None]) -> TopicReader:
        return TailReader(self.kafka, topic, apply, batch_ms=self.batch_ms)


class TailReader:
    """Reads ``topic`` from its end (no consumer group), every record to ``apply``."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        apply: Callable[[Any], None],
        *,
        batch_ms: int | None = None,
    ) -> None:
        self.topic = topic
        self._apply = apply
        self._consumer = tail_consumer(kafka, f"{kafka.client_id}-ingest-tail", batch_ms)

    async def load(self) -> int:
        await start_at_end(self._consumer, self.topic, 60.0)
        return 0

    async def follow(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    self._apply(record)

    async def caught_up(self, timeout_s: float) -> bool:
        return await caught_up(self._consumer, timeout_s)

    async def stop(self) -> None:
        await self._consumer.stop()
