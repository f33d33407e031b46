"""W3C trace context crosses the real broker: the consumer's span is a child of the producer's trace."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from runstream_common import parsers
from runstream_common.admin import ensure_topics
from runstream_common.kafka import Delivery, make_broker, publish, subscribe
from runstream_common.messages import RunRequested
from runstream_common.settings import KafkaSettings, ServiceSettings, TelemetrySettings
from runstream_common.telemetry import setup_telemetry

pytestmark = pytest.mark.integration


async def test_consumer_span_is_a_child_of_the_producer_trace(
    kafka_settings: KafkaSettings,
) -> None:
    topic = kafka_settings.topics.runs
    await ensure_topics(kafka_settings, [topic])
    exporter = InMemorySpanExporter()
    producer_tel = setup_telemetry(
        "ingest", TelemetrySettings(), span_processors=(SimpleSpanProcessor(exporter),)
    )
    consumer_tel = setup_telemetry(
        "executor", TelemetrySettings(), span_processors=(SimpleSpanProcessor(exporter),)
    )
    settings = ServiceSettings(kafka=kafka_settings)
    handled = asyncio.Event()

    async def handler(message: RunRequested, delivery: Delivery) -> None:
        handled.set()

    consumer = make_broker(kafka_settings, consumer_tel, client_id="executor")
    subscribe(
        consumer,
        topic,
        group_id=f"{kafka_settings.topic_prefix}-g",
        parser=parsers.RUNS,
        handler=handler,
        settings=settings,
    )
    producer = make_broker(kafka_settings, producer_tel, client_id="ingest")
    await consumer.start()
    await producer.connect()
    try:
        tracer = producer_tel.tracer_provider.get_tracer("test")
        with tracer.start_as_current_span("facility event") as root:
            await publish(
                producer,
                topic,
                RunRequested(
                    request_id="r",
                    proposal=1,
                    run=1,
                    trigger="raw",
                    context_dir="/c",
                    proposal_dir="/p",
                ),
                key=b"1/1",
            )
        await asyncio.wait_for(handled.wait(), 60)
        await asyncio.sleep(0.5)  # the process span ends after the handler returns
    finally:
        await consumer.stop()
        await producer.stop()

    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    trace_id = root.get_span_context().trace_id
    process = [s for s in spans if s.name == f"{topic} process"]
    publish_spans = [s for s in spans if s.name == f"{topic} publish"]
    assert process, [s.name for s in spans]
    assert publish_spans, [s.name for s in spans]
    consumer_span = process[0]
    assert consumer_span.context.trace_id == trace_id
    assert consumer_span.resource.attributes["service.name"] == "runstream-executor"
    # Walk up from the consumer span: it descends from the producer's publish span.
    ancestors = []
    parent = consumer_span.parent
    while parent is not None and parent.span_id in by_id:
        ancestors.append(by_id[parent.span_id])
        parent = by_id[parent.span_id].parent
    # FastStream links the consumer to the producer's "create" span (the message's own context),
    # which is also the parent of the "publish" span.
    assert ancestors[0].name == f"{topic} create"
    assert ancestors[0].kind.name == "PRODUCER"
    assert ancestors[0].resource.attributes["service.name"] == "runstream-ingest"
    assert publish_spans[0].parent.span_id == ancestors[0].context.span_id
    assert ancestors[-1].name == "facility event"
