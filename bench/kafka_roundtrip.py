"""Round-trip latency of one small message through the local broker.

Measures N sequential round trips (publish, wait until the consumer's handler
has it) two ways in the same run:

- baseline: bare aiokafka producer + consumer (no envelope, no validation,
  auto-commit);
- runstream: ``runstream_common.kafka.publish`` + ``subscribe`` (pydantic
  envelope, topic parser, at-least-once: a commit after every record).

Prints p50/p99 for each and the ratio runstream/baseline.
Usage: python bench/kafka_roundtrip.py [N]   (needs `./task infra:up`)
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from runstream_common import parsers
from runstream_common.admin import ensure_topics
from runstream_common.kafka import Delivery, make_broker, publish, subscribe
from runstream_common.messages import RunRequested
from runstream_common.settings import KafkaSettings, ServiceSettings


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def baseline(kafka: KafkaSettings, n: int) -> list[float]:
    topic = f"{kafka.topic_prefix}.baseline"
    await ensure_topics(kafka, [topic], with_dlq=False, partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=f"{topic}-g",
        auto_offset_reset="earliest",
    )
    await producer.start()
    await consumer.start()
    await asyncio.sleep(1)
    try:
        samples = []
        for i in range(n):
            started = time.perf_counter()
            await producer.send_and_wait(topic, f'{{"i": {i}}}'.encode())
            await consumer.getone()
            samples.append(time.perf_counter() - started)
        return samples
    finally:
        await consumer.stop()
        await producer.stop()


async def runstream(kafka: KafkaSettings, n: int) -> list[float]:
    topic = kafka.topics.runs
    await ensure_topics(kafka, [topic], partitions=1)
    settings = ServiceSettings(kafka=kafka)
    arrived: asyncio.Queue[float] = asyncio.Queue()

    async def handler(message: RunRequested, delivery: Delivery) -> None:
        arrived.put_nowait(time.perf_counter())

    consumer = make_broker(kafka, client_id="bench-consumer")
    subscribe(
        consumer,
        topic,
        group_id=f"{topic}-g",
        parser=parsers.RUNS,
        handler=handler,
        settings=settings,
    )
    producer = make_broker(kafka, client_id="bench-producer")
    await consumer.start()
    await producer.connect()
    try:
        message = RunRequested(
            request_id="bench",
            proposal=1,
            run=1,
            trigger="raw",
            context_dir="/c",
            proposal_dir="/p",
        )
        await publish(producer, topic, message)  # warm-up: group join
        await asyncio.wait_for(arrived.get(), 60)
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            await publish(producer, topic, message, key=b"1/1")
            done = await asyncio.wait_for(arrived.get(), 30)
            samples.append(done - started)
        return samples
    finally:
        await consumer.stop()
        await producer.stop()


async def main(n: int) -> None:
    kafka = KafkaSettings(topic_prefix=f"bench{uuid.uuid4().hex[:8]}")
    base = await baseline(kafka, n)
    ours = await runstream(kafka, n)
    print(f"round trips: {n} sequential small messages via {kafka.bootstrap_servers}")
    print(f"{'':10} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for name, samples in (("baseline", base), ("runstream", ours)):
        print(
            f"{name:10} {pct(samples, 0.5) * 1e3:8.2f} {pct(samples, 0.99) * 1e3:8.2f} "
            f"{statistics.fmean(samples) * 1e3:8.2f}"
        )
    print(
        f"ratio runstream/baseline: p50 {pct(ours, 0.5) / pct(base, 0.5):.2f}x, "
        f"p99 {pct(ours, 0.99) / pct(base, 0.99):.2f}x"
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000))
