"""One shape for every service: ``build_app`` returns a :class:`Service`.

A service is its FastStream app plus a typed :class:`Runtime`: the objects the
app runs besides its subscribers (handlers, readers, pools, servers), held in
one place where tests and the CLI can reach them. ``build_app`` creates what
needs no event loop at once; what needs the loop or a connection (a database
pool, a Kafka reader) is a :class:`Part`, filled by :meth:`Runtime.start`. The
runtime's four stages are the app's four hooks, in this order:

========================  =========================================================
``Runtime.start``         before the broker connects: topics, database, readers
``Runtime.started``       after the subscribers run: background tasks, servers
``Runtime.stop``          before the broker stops: drain what is in flight (it may
                          still publish), stop readers
``Runtime.stopped``       after the broker stopped: close pools, flush telemetry
========================  =========================================================

Dependencies that tests replace (the topic admin, the proposal registry, the
database, worker pools) are ports: ``build_app`` takes them as arguments, and
defaults to the real adapters built from the settings. Test-only hooks (fault
injection) are arguments too, never settings.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from .admin import ensure_topics
from .errors import ServiceUnavailable
from .settings import KafkaSettings

T = TypeVar("T")


class Runtime:
    """What a service runs besides its subscribers. Override the stages it needs."""

    _app: FastStream | None = None

    def exit(self) -> None:
        """Ask the app to stop (e.g. a background task failed for good)."""
        if self._app is not None:
            self._app.exit()

    async def start(self) -> None:
        """Before the broker connects (FastStream ``on_startup``)."""

    async def started(self) -> None:
        """After the broker and its subscribers started (``after_startup``)."""

    async def stop(self) -> None:
        """Before the broker stops (``on_shutdown``)."""

    async def stopped(self) -> None:
        """After the broker stopped (``after_shutdown``)."""


R = TypeVar("R", bound=Runtime)


@dataclass(frozen=True)
class Service(Generic[R]):
    """A built service: ``app`` to run, ``runtime`` to look into."""

    app: FastStream
    runtime: R

    @property
    def broker(self) -> KafkaBroker:
        broker = self.app.broker
        assert isinstance(broker, KafkaBroker)
        return broker


def assemble(
    broker: KafkaBroker,
    runtime: R,
    *,
    title: str,
    version: str,
    description: str | None = None,
    logger: logging.Logger | None = None,
) -> Service[R]:
    """The FastStream app of ``broker`` with ``runtime``'s stages as its hooks."""
    spec = AsyncAPI(title=title, version=version, description=description)
    app = (
        FastStream(broker, specification=spec)
        if logger is None
        else FastStream(broker, specification=spec, logger=logger)
    )
    app.on_startup(runtime.start)
    app.after_startup(runtime.started)
    app.on_shutdown(runtime.stop)
    app.after_shutdown(runtime.stopped)
    runtime._app = app
    return Service(app, runtime)


class Part(Generic[T]):
    """A part of a runtime that exists only once the service started (it needs the loop)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._value: T | None = None

    def set(self, value: T) -> T:
        self._value = value
        return value

    def get(self) -> T:
        """The part; :class:`ServiceUnavailable` (retried, never dead-lettered) before start."""
        if self._value is None:
            raise ServiceUnavailable(f"{self.what} is still starting")
        return self._value

    @property
    def ready(self) -> bool:
        return self._value is not None

    def take(self) -> T | None:
        """The part, removed (to close it at shutdown); None if it never started."""
        value, self._value = self._value, None
        return value


class TopicAdmin(Protocol):
    """Creates the topics a service touches (and their dead-letter twins) at start-up."""

    async def ensure(self, topics: Sequence[str], *, compacted: Collection[str] = ()) -> None: ...


@dataclass(frozen=True)
class KafkaTopicAdmin:
    """:class:`TopicAdmin` through Kafka's admin API (:func:`~.admin.ensure_topics`)."""

    settings: KafkaSettings

    async def ensure(self, topics: Sequence[str], *, compacted: Collection[str] = ()) -> None:
        await ensure_topics(self.settings, list(topics), compacted=set(compacted))


__all__ = [
    "KafkaTopicAdmin",
    "Part",
    "Runtime",
    "Service",
    "TopicAdmin",
    "assemble",
]
