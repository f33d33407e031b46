"""Fan-out of the updates feed to browsers, with catch-up for reconnecting ones.

Every update the service reads from Kafka gets a sequence number and is kept in
a ring of the last ``capacity`` updates. A browser's position is a *cursor*
``"<epoch>:<seq>"`` (the epoch is per process, so a cursor from before a restart
is recognised): the table snapshot carries the cursor taken *before* the
database was read, so every change not in the snapshot comes after it. A
browser that reconnects with a cursor the ring still covers gets what it missed;
otherwise (restart, or too far behind) it is told to reload.

Pure asyncio, no I/O: the Kafka reader calls :meth:`Hub.publish`, each event
stream awaits its :class:`Subscription`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    proposal: int | None  # None: of interest to every proposal
    data: bytes  # one JSON document, no newline


class Gap(Exception):
    """The cursor cannot be continued: the browser must reload the table."""


class Closed(Exception):
    """The hub shut down."""


class Subscription:
    """The queue of one browser's event stream (one proposal)."""

    def __init__(self, proposal: int, limit: int) -> None:
        self.proposal = proposal
        self.limit = limit
        self.overflowed = False
        self.closed = False
        self._items: deque[Event] = deque()
        self._wake = asyncio.Event()

    def push(self, event: Event) -> None:
        if self.overflowed or self.closed:
            return
        if len(self._items) >= self.limit:
            self.overflowed = True  # this browser cannot keep up: it reloads instead
            self._items.clear()
        else:
            self._items.append(event)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._items)

    async def next_batch(self, timeout_s: float) -> list[Event]:
        """Everything queued (waiting up to ``timeout_s`` for something); [] on timeout.

        Raises Gap when this subscriber fell too far behind, Closed when the hub stopped.
        """
        if not self._items and not self.overflowed and not self.closed:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout_s)
            except TimeoutError:
                return []
        if self.overflowed:
            raise Gap(f"more than {self.limit} updates behind")
        if self._items:
            batch = list(self._items)
            self._items.clear()
            return batch
        if self.closed:
            raise Closed()
        return []


class Hub:
    """Numbered updates, a replay ring and the subscriptions per proposal."""

    def __init__(self, capacity: int = 20_000, queue_limit: int = 10_000, epoch: str = "") -> None:
        self.epoch = epoch or uuid.uuid4().hex[:12]
        self.queue_limit = queue_limit
        self._seq = 0
        self._ring: deque[Event] = deque(maxlen=capacity)
        self._subs: dict[int, set[Subscription]] = defaultdict(set)
        self.published = 0

    @property
    def seq(self) -> int:
        return self._seq

    def cursor(self) -> str:
        """The position after the last published update."""
        return f"{self.epoch}:{self._seq}"

    def publish(self, proposal: int | None, data: bytes) -> Event:
        self._seq += 1
        event = Event(self._seq, proposal, data)
        self._ring.append(event)
        self.published += 1
        targets = (
            self._subs.get(proposal, ())
            if proposal is not None
            else [s for subs in self._subs.values() for s in subs]
        )
        for sub in targets:
            sub.push(event)
        return event

    def _parse(self, cursor: str) -> int:
        epoch, sep, number = cursor.partition(":")
        if not sep or not number.isdigit():
            raise Gap(f"not a cursor: {cursor[:40]!r}")
        if epoch != self.epoch:
            raise Gap("the server restarted")
        seq = int(number)
        if seq > self._seq:
            raise Gap("cursor ahead of the server")
        oldest = self._ring[0].seq if self._ring else self._seq + 1
        if seq < oldest - 1:
            raise Gap("too far behind: older updates are no longer kept")
        return seq

    def subscribe(self, proposal: int, since: str | None) -> Subscription:
        """A subscription to ``proposal``'s updates after ``since`` (None: from now)."""
        sub = Subscription(proposal, self.queue_limit)
        if since:
            after = self._parse(since)
            missed = []
            for event in reversed(self._ring):
                if event.seq <= after:
                    break
                if event.proposal is None or event.proposal == proposal:
                    missed.append(event)
            for event in reversed(missed):
                sub.push(event)
            if sub.overflowed:
                raise Gap(f"more than {self.queue_limit} updates missed")
        self._subs[proposal].add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.proposal)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.proposal]

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def close(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub.close()
        self._subs.clear()
