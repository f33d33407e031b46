"""The proposal registry (compacted topic ``proposals``) as services that trust no path in a message see it.

A run or results message names folders (``context_dir``, ``proposal_dir``, a
fragment); whoever can write its topic could name any folder. The executor and
the store therefore take a proposal's folders from its registration only, and
refuse a message whose paths disagree (:class:`~runstream_common.errors.PathRefused`)
or whose proposal is not registered (:class:`~runstream_common.errors.UnknownProposal`).

:class:`ProposalRegistry` reads the topic group-less from the beginning to its
end before the service takes its first message, then follows it. A message
that disagrees with the table is judged again after reading the topic up to its
current end (the registration may be newer than the table); a message of a
proposal that is still not registered is judged again as registrations arrive
for a short while (``wait_s``), so a proposal registered a moment after its first
message is not refused. Only then is the message refused.

The path rules (:func:`checked_path`, :func:`same_folder`, :func:`within`) are
pure, blocking functions: callers run them in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from . import parsers
from .errors import (
    MessageFormatError,
    PathRefused,
    PermanentError,
    ServiceUnavailable,
    UnknownProposal,
)
from .messages import ProposalRegistered, ProposalRemoved
from .settings import KafkaSettings

log = logging.getLogger("runstream.registry")


@dataclass(frozen=True, slots=True)
class Registration:
    """Where one proposal's files are, as its latest registration says."""

    proposal: int
    context_dir: str
    data_root: str | None


# ---------------------------------------------------------------------------- path rules
def checked_path(path: str, what: str) -> str:
    """``path`` if it is absolute and has no ``..`` part; else :class:`PathRefused`."""
    if not path or not os.path.isabs(path):
        raise PathRefused(f"{what} {path!r} is not an absolute path")
    if ".." in path.split(os.sep):
        raise PathRefused(f"{what} {path!r} contains '..'")
    return path


def real(path: str) -> str:
    """The path with every symbolic link resolved (also for parts that do not exist yet)."""
    return os.path.realpath(path)


def same_folder(a: str, b: str) -> bool:
    """Whether two folder paths name the same place once symbolic links are resolved."""
    return real(a) == real(b)


def within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or inside it, symbolic links resolved on both sides."""
    inner, outer = real(path), real(folder)
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


# ---------------------------------------------------------------------------- the table
class RegistryTable:
    """Registered proposals; the latest record per proposal wins (removal drops it)."""

    def __init__(self) -> None:
        self._by_proposal: dict[int, Registration] = {}

    def apply(self, event: ProposalRegistered | ProposalRemoved) -> None:
        if isinstance(event, ProposalRegistered):
            self._by_proposal[event.proposal] = Registration(
                event.proposal, event.context_dir, event.data_root
            )
        else:
            self._by_proposal.pop(event.proposal, None)

    def forget(self, key: bytes | None) -> None:
        """A tombstone (compaction's delete) of the proposal keyed ``key``: refuse its messages."""
        try:
            proposal = int(key.decode()) if key is not None else None
        except ValueError:  # UnicodeDecodeError included
            return
        if proposal is not None:
            self._by_proposal.pop(proposal, None)

    def get(self, proposal: int) -> Registration | None:
        return self._by_proposal.get(proposal)

    def __len__(self) -> int:
        return len(self._by_proposal)


Verdict = Callable[[Registration | None], Awaitable[PermanentError | None]]
"""What is wrong with a message given the proposal's registration (None: nothing)."""


class Registry(Protocol):
    """What services ask of the registry (:class:`ProposalRegistry`; in memory in tests)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def judge(self, proposal: int, verdict: Verdict) -> Registration: ...


# ---------------------------------------------------------------------------- the follower
class ProposalRegistry:
    """The ``proposals`` topic, read to its end at start and followed while the service runs."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        client_id: str,
        wait_s: float = 10.0,
        poll_ms: int = 200,
    ) -> None:
        self.topic = kafka.topics.proposals
        self.table = RegistryTable()
        self.wait_s = wait_s
        self._poll_ms = poll_ms
        self._kafka = kafka
        self._client_id = client_id
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        self.records = 0

    # -- life cycle
    async def start(self, timeout_s: float = 60.0) -> None:
        """Read the topic from the beginning to its current end, then follow it."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._kafka.bootstrap_servers,
            client_id=self._client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            **self._kafka.security_kwargs(),
        )
        await consumer.start()
        self._consumer = consumer
        try:
            self._tps = await _partitions(consumer, self.topic, timeout_s)
            consumer.assign(self._tps)
            await consumer.seek_to_beginning(*self._tps)
            await asyncio.wait_for(self._read_to_end(), timeout_s)
        except TimeoutError:
            await self.stop()
            raise ServiceUnavailable(
                f"could not read the proposal registry ({self.topic}) within {timeout_s:g} s"
            ) from None
        except BaseException:
            await self.stop()
            raise
        log.info("proposal registry %s: %d proposals registered", self.topic, len(self.table))
        self._task = asyncio.create_task(self._follow(), name=f"follow {self.topic}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ServiceUnavailable("the proposal registry stopped"))
        self._waiters.clear()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    # -- reading
    def _apply(self, record: Any) -> None:
        self.records += 1
        if record.value is None:
            self.table.forget(record.key)
            return
        try:
            self.table.apply(parsers.PROPOSALS.parse(record.value))
        except MessageFormatError as exc:
            log.warning("skipping bad registration %s[%d]@%d: %s",
                        record.topic, record.partition, record.offset, exc)  # fmt: skip

    async def _poll(self, timeout_ms: int) -> None:
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        for records in batch.values():
            for record in records:
                self._apply(record)

    async def _read_to_end(self) -> None:
        """Apply every record up to the end offsets the broker reports now."""
        consumer = self._consumer
        assert consumer is not None
        end = await consumer.end_offsets(self._tps)
        for tp in self._tps:
            while await consumer.position(tp) < end[tp]:
                await self._poll(self._poll_ms)

    async def _follow(self) -> None:
        """Apply new records; between polls, answer :meth:`sync` requests."""
        while True:
            waiters, self._waiters = self._waiters, []
            try:
                if waiters:
                    await self._read_to_end()
                else:
                    await self._poll(self._poll_ms)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker away: tell the askers, keep following
                log.warning("proposal registry %s: %r", self.topic, exc)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(
                            ServiceUnavailable(f"cannot read {self.topic}: {exc!r}")
                        )
                await asyncio.sleep(1.0)
                continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def sync(self, timeout_s: float) -> None:
        """Return once every registration published before this call is in the table."""
        if self._task is None:
            raise ServiceUnavailable("the proposal registry is not running")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), max(timeout_s, 0.1))
        except TimeoutError:
            raise ServiceUnavailable(
                f"could not read the proposal registry ({self.topic}) to its end "
                f"within {timeout_s:g} s"
            ) from None

    # -- judging
    def get(self, proposal: int) -> Registration | None:
        return self.table.get(proposal)

    async def judge(self, proposal: int, verdict: Verdict) -> Registration:
        """The proposal's registration once ``verdict`` finds nothing wrong with the message.

        A disagreement is judged again after reading the registry up to its current end
        (everything registered before now). A proposal still not registered is waited
        for, as new registrations arrive, for ``wait_s``; a registered proposal whose
        folders still disagree is refused at once (waiting would let every forged
        message hold its partition back). Then ``verdict``'s error is raised.
        """
        problem = await verdict(self.get(proposal))
        if problem is None:
            return self._registered(proposal)
        deadline = time.monotonic() + self.wait_s
        await self.sync(max(self.wait_s, 10.0))
        seen = self.records
        problem = await verdict(self.get(proposal))
        while problem is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not isinstance(problem, UnknownProposal):
                raise problem
            await asyncio.sleep(min(0.2, left))
            if self.records != seen:  # something new: judge again
                seen = self.records
                problem = await verdict(self.get(proposal))
        return self._registered(proposal)

    def _registered(self, proposal: int) -> Registration:
        registration = self.get(proposal)
        assert registration is not None  # a verdict never passes an unregistered proposal
        return registration


async def _partitions(
    consumer: AIOKafkaConsumer, topic: str, timeout_s: float
) -> list[TopicPartition]:
    deadline = time.monotonic() + timeout_s
    client = consumer._client  # a group-less consumer asks for no topic's metadata by itself
    await client.add_topic(topic)
    while True:
        await client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return [TopicPartition(topic, p) for p in sorted(partitions)]
        if time.monotonic() > deadline:
            raise ServiceUnavailable(
                f"topic {topic} does not exist (runstream kafka acls --apply creates it)"
            )
        await asyncio.sleep(0.2)


def refuse_unless(condition: bool, reason: str) -> PathRefused | None:
    """A :class:`PathRefused` with ``reason`` unless ``condition`` holds."""
    return None if condition else PathRefused(reason)
