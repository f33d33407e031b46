"""Per-topic delivery metrics (OpenTelemetry): counts, handler latency and consumer lag.

FastStream's telemetry middleware already records ``messaging.process.duration``;
these add what operators ask first: how many records each consumer processed,
failed or dead-lettered, how long handlers took end to end (retries included),
and how far behind the consumer is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opentelemetry.metrics import (
    Counter,
    Histogram,
    Meter,
    MeterProvider,
    get_meter_provider,
)


@dataclass(frozen=True)
class DeliveryMetrics:
    processed: Counter
    failed: Counter
    dead_lettered: Counter
    handler_seconds: Histogram
    lag: Any  # a synchronous Gauge (opentelemetry exports no public name for its type)

    @classmethod
    def create(cls, provider: MeterProvider | None = None) -> DeliveryMetrics:
        meter: Meter = (provider or get_meter_provider()).get_meter("runstream.delivery")
        return cls(
            processed=meter.create_counter(
                "runstream.records.processed",
                unit="{record}",
                description="Records whose handler returned",
            ),
            failed=meter.create_counter(
                "runstream.records.failed",
                unit="{attempt}",
                description="Handler attempts that raised",
            ),
            dead_lettered=meter.create_counter(
                "runstream.records.dead_lettered",
                unit="{record}",
                description="Records sent to a .dlq topic",
            ),
            handler_seconds=meter.create_histogram(
                "runstream.handler.duration",
                unit="s",
                description="Time from receiving a record to its final decision, retries included",
            ),
            lag=meter.create_gauge(
                "runstream.consumer.lag",
                unit="{record}",
                description="Records behind the partition's high watermark after this one",
            ),
        )
