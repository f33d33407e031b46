"""OpenTelemetry set-up: tracer and meter providers for one service.

Spans cross every Kafka hop through W3C trace context in the record headers
(FastStream's KafkaTelemetryMiddleware injects and extracts them). Nothing is
exported unless an OTLP endpoint is configured; tests pass their own exporter.
With neither, spans are not recorded (the trace context still travels with every
record): nobody would read them.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_NAMESPACE, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

from .settings import TelemetrySettings


@dataclass(frozen=True)
class Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def setup_telemetry(
    service: str,
    settings: TelemetrySettings,
    *,
    span_processors: tuple[SpanProcessor, ...] = (),
    metric_readers: tuple[MetricReader, ...] = (),
) -> Telemetry:
    """Providers for ``service``; not installed globally (each app owns its own)."""
    resource = Resource.create(
        {SERVICE_NAME: f"runstream-{service}", SERVICE_NAMESPACE: settings.service_namespace}
    )
    exported = bool(settings.otlp_endpoint or span_processors)
    # Unexported: spans are created non-recording (ids and context propagate, nothing more).
    sampler = None if exported else ParentBased(ALWAYS_OFF)
    tracer_provider = TracerProvider(resource=resource, sampler=sampler)
    readers = list(metric_readers)
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otlp_endpoint.rstrip("/")
        tracer_provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"))
        )
        readers.append(
            PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"))
        )
    for processor in span_processors:
        tracer_provider.add_span_processor(processor)
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    return Telemetry(tracer_provider, meter_provider)
