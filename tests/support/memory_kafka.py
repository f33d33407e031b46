"""An in-memory Kafka for the transactional delivery mode and ingest's contract tier.

Each topic is one partition, a list of records whose offsets are their positions.
What the loop's producers write lands only when their transaction commits (so the
logs are what a ``read_committed`` reader sees), and a commit that carries consumer
offsets moves the group's offsets in the same step. Tests write inputs with
:meth:`MemoryKafka.append` and read outputs from :meth:`MemoryKafka.records`.

- :meth:`MemoryKafka.clients`: a ``runstream_common.transactional.TransactionalClients``
  (two transactional producers, one group consumer);
- :meth:`MemoryKafka.readers`: ingest's ``Readers`` port (compacted tables read to
  their end, then followed; a tail from the end).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka import ConsumerRecord, TopicPartition
from runstream_common.errors import MessageFormatError
from runstream_common.parsers import Parser

T = TypeVar("T")
Headers = Sequence[tuple[str, bytes]]


def record(
    topic: str,
    offset: int,
    value: bytes | None,
    *,
    key: bytes | None = None,
    headers: Headers = (),
) -> ConsumerRecord[bytes, bytes]:
    """One record of partition 0 of ``topic``, stamped now."""
    return ConsumerRecord(
        topic=topic, partition=0, offset=offset, timestamp=int(time.time() * 1000),
        timestamp_type=0, key=key, value=value, checksum=None,
        serialized_key_size=len(key or b""), serialized_value_size=len(value or b""),
        headers=list(headers),
    )  # fmt: skip


@dataclass
class Transaction:
    """One committed transaction: the records it wrote, the group offsets it carried."""

    records: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    group_id: str | None = None

    def topics(self) -> list[str]:
        return [r.topic for r in self.records]


class MemoryKafka:
    """Topic logs, committed transactions and group offsets, shared by the in-memory clients.

    ``fail_sends``: that many of the next sends raise ``ConnectionError`` (a broker blip).
    """

    def __init__(self) -> None:
        self.logs: defaultdict[str, list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
        self.transactions: list[Transaction] = []
        self.group_offsets: defaultdict[str, dict[TopicPartition, int]] = defaultdict(dict)
        self.aborted = 0
        self.fail_sends = 0

    def append(
        self, topic: str, value: bytes | None, *, key: bytes | None = None, headers: Headers = ()
    ) -> ConsumerRecord[bytes, bytes]:
        """Write one record outside any transaction (what a facility's producer does)."""
        log = self.logs[topic]
        log.append(record(topic, len(log), value, key=key, headers=headers))
        return log[-1]

    def records(self, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
        return list(self.logs.get(topic, []))

    def transaction_of(self, rec: ConsumerRecord[bytes, bytes]) -> Transaction:
        """The committed transaction that wrote ``rec``."""
        for txn in self.transactions:
            if any(r is rec for r in txn.records):
                return txn
        raise LookupError(f"{rec.topic}@{rec.offset} was not written by a transaction")

    def clients(self) -> MemoryClients:
        return MemoryClients(self)

    def readers(self) -> MemoryReaders:
        return MemoryReaders(self)


class MemoryProducer:
    """A transactional producer whose records land in :class:`MemoryKafka` on commit."""

    def __init__(self, kafka: MemoryKafka) -> None:
        self.kafka = kafka
        self._open: Transaction | None = None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def begin_transaction(self) -> None:
        assert self._open is None, "a transaction is already open"
        self._open = Transaction()

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Headers | None = None
    ) -> asyncio.Future[None]:
        assert self._open is not None, "send outside a transaction"
        if self.kafka.fail_sends:
            self.kafka.fail_sends -= 1
            raise ConnectionError("broker went away")
        self._open.records.append(record(topic, -1, value, key=key, headers=headers or ()))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def send_offsets_to_transaction(
        self, offsets: dict[TopicPartition, int], group_id: str
    ) -> None:
        assert self._open is not None, "offsets outside a transaction"
        self._open.offsets = dict(offsets)
        self._open.group_id = group_id

    async def commit_transaction(self) -> None:
        txn, self._open = self._open, None
        assert txn is not None, "commit without a transaction"
        written = []
        for r in txn.records:
            log = self.kafka.logs[r.topic]
            log.append(record(r.topic, len(log), r.value, key=r.key, headers=r.headers))
            written.append(log[-1])
        txn.records = written
        if txn.group_id is not None:
            self.kafka.group_offsets[txn.group_id].update(txn.offsets)
        self.kafka.transactions.append(txn)

    async def abort_transaction(self) -> None:
        self.kafka.aborted += 1
        self._open = None


class MemoryConsumer:
    """A group consumer of :class:`MemoryKafka`: starts at the group's committed offsets."""

    def __init__(self, kafka: MemoryKafka, group_id: str) -> None:
        self.kafka = kafka
        self.group_id = group_id
        self.topics: list[str] = []
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.sought: list[int] = []

    def subscribe(self, topics: Sequence[str], listener: object = None) -> None:
        """Every partition is this member's, from the group's committed offset on."""
        self.topics = list(topics)
        committed = self.kafka.group_offsets[self.group_id]
        self.positions = {tp: committed.get(tp, 0) for tp in self.assignment()}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(topic, 0) for topic in self.topics}

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        room = max_records if max_records is not None else 1 << 30
        out: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        for tp in sorted(self.positions):
            if tp in self.paused or room <= 0:
                continue
            position = self.positions[tp]
            taken = self.kafka.logs[tp.topic][position : position + room]
            if taken:
                out[tp] = taken
                self.positions[tp] = position + len(taken)
                room -= len(taken)
        if not out:
            await asyncio.sleep(timeout_ms / 1000)
        return out

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.sought.append(offset)
        self.positions[tp] = offset

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)


class MemoryClients:
    """``TransactionalClients`` of a :class:`MemoryKafka` (what the loop's ``clients`` port takes)."""

    def __init__(self, kafka: MemoryKafka) -> None:
        self.kafka = kafka

    def producers(self, settings: Any, client_id: str) -> list[Any]:
        return [MemoryProducer(self.kafka), MemoryProducer(self.kafka)]

    def consumer(self, settings: Any, client_id: str) -> Any:
        return MemoryConsumer(self.kafka, settings.group_id)


class MemoryReader:
    """One topic of a :class:`MemoryKafka`, record by record to ``on_record``."""

    def __init__(
        self,
        kafka: MemoryKafka,
        topic: str,
        on_record: Callable[[ConsumerRecord[bytes, bytes], bool], None],
        *,
        from_end: bool = False,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self._on_record = on_record
        self._from_end = from_end
        self.position = 0
        self.stopped = False

    async def load(self) -> int:
        if self._from_end:
            self.position = len(self.kafka.logs[self.topic])
            return 0
        return self._apply_new(following=False)

    async def follow(self) -> None:
        while True:
            self._apply_new(following=True)
            await asyncio.sleep(0.005)

    async def caught_up(self, timeout_s: float) -> bool:
        self._apply_new(following=True)
        return True

    async def stop(self) -> None:
        self.stopped = True

    def _apply_new(self, *, following: bool) -> int:
        new = self.kafka.logs[self.topic][self.position :]
        self.position += len(new)
        for rec in new:
            self._on_record(rec, following)
        return len(new)


class MemoryReaders:
    """Ingest's ``Readers`` port over a :class:`MemoryKafka` (as the Kafka adapter reads)."""

    def __init__(self, kafka: MemoryKafka) -> None:
        self.kafka = kafka
        self.opened: list[MemoryReader] = []

    def table(
        self,
        topic: str,
        parser: Parser[T],
        apply: Callable[[T], None],
        *,
        skip_when_following: Callable[[Any], bool] | None = None,
    ) -> MemoryReader:
        def on_record(rec: ConsumerRecord[bytes, bytes], following: bool) -> None:
            if rec.value is None or (
                following and skip_when_following and skip_when_following(rec)
            ):
                return
            try:
                apply(parser.parse(rec.value))
            except MessageFormatError:
                return  # the Kafka reader logs and skips it too

        return self._open(MemoryReader(self.kafka, topic, on_record))

    def tail(self, topic: str, apply: Callable[[Any], None]) -> MemoryReader:
        return self._open(
            MemoryReader(self.kafka, topic, lambda rec, _f: apply(rec), from_end=True)
        )

    def _open(self, reader: MemoryReader) -> MemoryReader:
        self.opened.append(reader)
        return reader
