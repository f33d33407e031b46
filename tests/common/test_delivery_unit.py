"""The delivery wrapper's decisions, in memory (FastStream's TestKafkaBroker)."""

from __future__ import annotations

from typing import Any

import pytest
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from runstream_common import parsers
from runstream_common.errors import PermanentError, TransientError
from runstream_common.kafka import Delivery, RetryPolicy, make_broker, subscribe
from runstream_common.messages import RunRequested
from runstream_common.settings import KafkaSettings, ServiceSettings

pytestmark = pytest.mark.unit

FAST = RetryPolicy(max_attempts=3, backoff_s=0.001, backoff_max_s=0.001, transient_window_s=5)


def _run(run: int) -> RunRequested:
    return RunRequested(
        request_id=f"r{run}",
        proposal=1,
        run=run,
        trigger="raw",
        context_dir="/c",
        proposal_dir="/p",
    )


async def _exercise(
    handler: Any, payloads: list[bytes]
) -> tuple[list[Any], list[tuple[bytes, dict[str, str]]]]:
    settings = ServiceSettings(kafka=KafkaSettings(topic_prefix="u"))
    broker = make_broker(settings.kafka)
    seen: list[Any] = []

    async def wrapped(message: RunRequested, delivery: Delivery) -> None:
        seen.append((message.run, delivery.attempt))
        await handler(message, delivery)

    subscribe(
        broker,
        "u.runs",
        group_id="g",
        parser=parsers.RUNS,
        handler=wrapped,
        settings=settings,
        retry=FAST,
    )
    dead: list[tuple[bytes, dict[str, str]]] = []

    @broker.subscriber("u.runs.dlq")
    async def on_dlq(message: KafkaMessage) -> None:
        dead.append((message.body, dict(message.headers)))

    async with TestKafkaBroker(broker) as test_broker:
        for payload in payloads:
            await test_broker.publish(payload, "u.runs", key=b"k")
    return seen, dead


async def test_transient_errors_are_retried_until_they_heal() -> None:
    failures = {"left": 2}

    async def handler(message: RunRequested, delivery: Delivery) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise TransientError("database restarting")

    seen, dead = await _exercise(handler, [parsers.encode(_run(1))])
    assert seen == [(1, 1), (1, 2), (1, 3)]
    assert dead == []


async def test_unexpected_errors_are_retried_then_dead_lettered_and_the_next_message_flows() -> (
    None
):
    async def handler(message: RunRequested, delivery: Delivery) -> None:
        if message.run == 1:
            raise RuntimeError("bug in handler")

    seen, dead = await _exercise(handler, [parsers.encode(_run(1)), parsers.encode(_run(2))])
    assert seen == [(1, 1), (1, 2), (1, 3), (2, 1)]
    assert len(dead) == 1
    body, headers = dead[0]
    assert parsers.RUNS.parse(body).request_id == "r1"
    assert headers["x-dlq-reason"] == "bug in handler"
    assert headers["x-dlq-error-class"] == "RuntimeError"
    assert headers["x-dlq-attempts"] == "3"


async def test_permanent_errors_go_straight_to_the_dead_letter_topic() -> None:
    async def handler(message: RunRequested, delivery: Delivery) -> None:
        raise PermanentError(f"run {message.run} does not exist")

    seen, dead = await _exercise(handler, [parsers.encode(_run(7))])
    assert seen == [(7, 1)]
    assert [headers["x-dlq-reason"] for _, headers in dead] == ["run 7 does not exist"]


async def test_delivery_metrics_count_outcomes() -> None:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from runstream_common.settings import TelemetrySettings
    from runstream_common.telemetry import setup_telemetry

    reader = InMemoryMetricReader()
    telemetry = setup_telemetry("test", TelemetrySettings(), metric_readers=(reader,))
    settings = ServiceSettings(kafka=KafkaSettings(topic_prefix="m"))
    broker = make_broker(settings.kafka, telemetry)

    async def handler(message: RunRequested, delivery: Delivery) -> None:
        if message.run == 2:
            raise PermanentError("nope")

    subscribe(
        broker,
        "m.runs",
        group_id="g",
        parser=parsers.RUNS,
        handler=handler,
        settings=settings,
        retry=FAST,
    )
    async with TestKafkaBroker(broker) as test_broker:
        for payload in (
            parsers.encode(_run(1)),
            parsers.encode(_run(2)),
            b"garbage",
            parsers.encode(_run(3)),
        ):
            await test_broker.publish(payload, "m.runs")

    points: dict[str, float] = {}
    data = reader.get_metrics_data()
    for resource_metrics in data.resource_metrics:
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                if metric.name.startswith("runstream."):
                    total = 0.0
                    for point in metric.data.data_points:
                        total += getattr(point, "value", None) or getattr(point, "count", 0)
                    points[metric.name] = total
    assert points["runstream.records.processed"] == 2
    assert points["runstream.records.dead_lettered"] == 2
    assert points["runstream.records.failed"] == 1
    assert points["runstream.handler.duration"] == 3  # histogram count: two ok + one permanent
