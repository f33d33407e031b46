"""Liveness and readiness that reflect consumption, not just a turning event loop.

Every consumer a service runs is *watched*: :func:`health_of` gives the broker's
:class:`Health`, :func:`~runstream_common.kafka.subscribe` registers each
subscriber, and a service with its own consumer (ingest) registers that one.
:meth:`Health.report` looks at each consumer:

- **live** unless the application stopped polling it: aiokafka counts the time
  since the consumer was last inside ``getone``/``getmany`` (a handler, or a
  batch, that hangs); at ``max_poll_interval`` Kafka evicts the member from its
  group, so a consumer idle that long has left its group and is stuck. A
  service-side ``busy_since`` (ingest's batch) counts the same way.
- **ready** when every consumer is started, has joined its group (partitions
  assigned), has had an answer from the broker lately, and whose lag moves:
  records waiting while the position stays put for ``stall_after_s`` (a record
  retried forever, a dependency down) is not ready.

``runstream serve`` writes the report to the heartbeat file every few seconds;
``runstream health`` (the Kubernetes and compose probes) reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the probe command (judge) imports no Kafka client
    from aiokafka import AIOKafkaConsumer, TopicPartition

STALL_AFTER_S = 120.0
"""Records waiting and the position unchanged this long while polling: not ready."""

FETCH_STALE_AFTER_S = 60.0
"""No answer from the broker for any assigned partition this long: not ready."""


@dataclass
class ConsumerProbe:
    """One consumer, and how long it may go without polling before it counts as stuck."""

    name: str
    consumer: Callable[[], AIOKafkaConsumer | None]
    stuck_after_s: float
    grouped: bool = True
    busy_since: Callable[[], float | None] | None = None
    stall_after_s: float = STALL_AFTER_S
    _positions: dict[TopicPartition, int] = field(default_factory=dict)
    _moved_at: float = field(default_factory=time.monotonic)

    async def check(self) -> dict[str, Any]:
        """This consumer's state, with ``live``/``ready`` and the reasons when not."""
        now = time.monotonic()
        consumer = self.consumer()
        out: dict[str, Any] = {"name": self.name, "live": True, "ready": True, "problems": []}
        if consumer is None:
            out["ready"] = False
            out["problems"].append(f"{self.name}: not started")
            return out
        idle = _idle_s(consumer)
        busy = self.busy_since() if self.busy_since is not None else None
        busy_s = now - busy if busy is not None else 0.0
        out["not_polled_s"] = round(idle, 1)
        out["busy_s"] = round(busy_s, 1)
        if max(idle, busy_s) >= self.stuck_after_s:
            out["live"] = out["ready"] = False
            out["problems"].append(
                f"{self.name}: stuck, not polled for {max(idle, busy_s):.0f} s "
                f"(limit {self.stuck_after_s:.0f} s, the consumer's max poll interval)"
            )
        assigned = consumer.assignment()
        out["partitions"] = len(assigned)
        if self.grouped and not _joined(consumer):
            out["ready"] = False
            out["problems"].append(f"{self.name}: not a member of its consumer group")
        lag, fetched_s = await self._lag(consumer, assigned)
        out["lag"] = lag
        if fetched_s is not None:
            out["last_fetch_s"] = round(fetched_s, 1)
            if fetched_s > FETCH_STALE_AFTER_S:
                out["ready"] = False
                out["problems"].append(f"{self.name}: no answer from Kafka for {fetched_s:.0f} s")
        stalled_s = now - self._moved_at
        if lag and idle < 1.0 and busy is None and stalled_s >= self.stall_after_s:
            out["ready"] = False
            out["problems"].append(
                f"{self.name}: {lag} records waiting and none consumed for {stalled_s:.0f} s"
            )
        return out

    async def _lag(
        self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]
    ) -> tuple[int, float | None]:
        lag = 0
        newest_fetch: float | None = None
        positions: dict[TopicPartition, int] = {}
        for tp in assigned:
            with contextlib.suppress(Exception):  # revoked meanwhile, or no position yet
                position = await asyncio.wait_for(consumer.position(tp), 1.0)
                positions[tp] = position
                end = consumer.last_stable_offset(tp) or consumer.highwater(tp)
                if end is not None:
                    lag += max(0, end - position)
                stamp = consumer.last_poll_timestamp(tp)
                if stamp:
                    age = max(0.0, time.time() - stamp / 1000)
                    newest_fetch = age if newest_fetch is None else min(newest_fetch, age)
        if positions != self._positions or not lag:
            self._moved_at = time.monotonic()
        self._positions = positions
        return lag, newest_fetch


def _idle_s(consumer: AIOKafkaConsumer) -> float:
    """Seconds since the application last polled (0 while it waits in getone/getmany)."""
    subscription = getattr(consumer, "_subscription", None)
    idle = getattr(subscription, "fetcher_idle_time", 0.0)
    return float(idle) if isinstance(idle, int | float) else 0.0


def _joined(consumer: AIOKafkaConsumer) -> bool:
    coordinator = getattr(consumer, "_coordinator", None)
    member = getattr(coordinator, "member_id", None)
    return bool(member) and bool(
        consumer.assignment() or getattr(coordinator, "generation", -1) >= 0
    )


class Health:
    """The consumers of one service process."""

    def __init__(self) -> None:
        self.probes: list[ConsumerProbe] = []

    def watch(self, probe: ConsumerProbe) -> ConsumerProbe:
        self.probes.append(probe)
        return probe

    async def report(self) -> dict[str, Any]:
        consumers = [await probe.check() for probe in self.probes]
        return {
            "time": time.time(),
            "pid": os.getpid(),
            "live": all(c["live"] for c in consumers),
            "ready": all(c["ready"] for c in consumers),
            "problems": [p for c in consumers for p in c["problems"]],
            "consumers": consumers,
        }


def health_of(broker: Any) -> Health:
    """The :class:`Health` of a service, kept on its broker (created on first use)."""
    health = getattr(broker, "_runstream_health", None)
    if not isinstance(health, Health):
        health = Health()
        broker._runstream_health = health
    return health


def add_heartbeat(app: Any, path: Path, interval_s: float = 5.0) -> None:
    """Write the consumers' report to ``path`` every ``interval_s`` while ``app`` runs."""
    health = health_of(app.broker)
    tasks: list[asyncio.Task[None]] = []

    async def beat() -> None:
        while True:
            report = await health.report()
            await asyncio.to_thread(write_report, path, report)
            await asyncio.sleep(interval_s)

    async def start() -> None:
        tasks.append(asyncio.create_task(beat(), name="runstream-heartbeat"))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        tasks.clear()
        await asyncio.to_thread(path.unlink, missing_ok=True)

    app.after_startup(start)
    app.on_shutdown(stop)


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Replace ``path`` atomically with the report (blocking: call in a thread)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def judge(path: Path, *, max_age_s: float, ready: bool) -> tuple[bool, str]:
    """The probe's verdict on the heartbeat file: (ok, one line for the log)."""
    try:
        age = time.time() - path.stat().st_mtime
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return False, f"no heartbeat: {path} does not exist (service not started?)"
    if age > max_age_s:
        return False, f"stale heartbeat: last beat {age:.0f} s ago (limit {max_age_s:.0f} s)"
    try:
        report = json.loads(text) if text.strip() else {}
    except ValueError:
        report = {}
    if not isinstance(report, dict) or "live" not in report:
        return True, f"alive: last beat {age:.1f} s ago (no consumer report)"
    problems = "; ".join(report.get("problems") or []) or "no reason given"
    if not report["live"]:
        return False, f"not live: {problems}"
    if ready and not report.get("ready"):
        return False, f"not ready: {problems}"
    consumers = report.get("consumers") or []
    state = "ready" if report.get("ready") else "live"
    return True, f"{state}: last beat {age:.1f} s ago, {len(consumers)} consumers"
