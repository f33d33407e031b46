"""In-memory ports for the contract tier: a service's ``build_app`` with no Kafka admin,
no proposal-registry reader (tests/<service>/test_app_contract.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import Any
from unittest import mock

from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.message import FakeConsumer
from runstream_common.errors import PermanentError
from runstream_common.registry import Registration, Verdict
from runstream_common.service import Service


class MemoryTopics:
    """A :class:`TopicAdmin` that only remembers what it was asked to create."""

    def __init__(self) -> None:
        self.ensured: set[str] = set()
        self.compacted: set[str] = set()

    async def ensure(self, topics: Sequence[str], *, compacted: Collection[str] = ()) -> None:
        self.ensured.update(topics)
        self.compacted.update(compacted)


class MemoryRegistry:
    """A :class:`Registry` of the registrations given: judged like the real one, no waiting."""

    def __init__(self, *registrations: Registration) -> None:
        self.table = {r.proposal: r for r in registrations}
        self.running = False

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False

    async def judge(self, proposal: int, verdict: Verdict) -> Registration:
        registration = self.table.get(proposal)
        problem: PermanentError | None = await verdict(registration)
        if problem is not None:
            raise problem
        assert registration is not None
        return registration


Published = dict[str, list[tuple[dict[str, Any], dict[str, str]]]]
"""Per topic, what the app published there: (JSON body, headers), in order."""


def published(service: Service[Any], *topics: str) -> Published:
    """Subscribe to ``topics`` on the service's broker (before it starts) and keep what comes."""
    out: Published = {}
    for topic in topics:
        service.broker.subscriber(topic)(_collector(out.setdefault(topic, [])))
    return out


def _collector(got: list[tuple[dict[str, Any], dict[str, str]]]) -> Any:
    async def collect(message: KafkaMessage) -> None:
        got.append((json.loads(message.body), dict(message.headers)))

    return collect


class Running:
    """A service started in memory: publish with ``broker``; ``commits`` are the offsets
    that in-flight consumers (runstream_common.inflight) committed, in order."""

    def __init__(self, broker: TestKafkaBroker, commits: list[dict[Any, int]]) -> None:
        self.broker = broker
        self.commits = commits

    async def send(self, topic: str, body: bytes, key: bytes | None = None) -> None:
        """Publish and return once subscribers that handle records one at a time are done."""
        await self.broker.publish(body, topic, key=key)

    async def until(self, condition: Callable[[], object], what: str, timeout: float = 10) -> None:
        """Wait for what in-flight consumers do after :meth:`send` returned."""
        try:
            async with asyncio.timeout(timeout):
                while not condition():  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise AssertionError(f"no {what} within {timeout} s") from None


@contextlib.asynccontextmanager
async def in_memory(service: Service[Any]) -> AsyncIterator[Running]:
    """``service``'s app on FastStream's TestKafkaBroker, its start-up and shutdown hooks run.

    FastStream's fake consumer commits take no offsets; the in-flight consumers commit
    explicit ones, which are recorded here instead.
    """
    commits: list[dict[Any, int]] = []

    async def commit(self: FakeConsumer, offsets: dict[Any, int] | None = None) -> None:
        if offsets is not None:
            commits.append(dict(offsets))

    with mock.patch.object(FakeConsumer, "commit", commit):
        async with TestKafkaBroker(service.broker) as broker:
            await service.app.start()
            try:
                yield Running(broker, commits)
            finally:
                await service.app.stop()
