"""The attempts ledger's cost per record: begin/end pairs, one record at a time (as the store).

    uv run python bench/throughput/ledger.py [PAIRS]      (needs the local stack)

Prints the wall time, this process's CPU and the local Kafka's CPU (its whole process
tree; shared, so an upper bound) per begin/end pair of ``CrashLedger``
(libs/common/src/runstream_common/poison.py), on a fresh topic prefix.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

from aiokafka import ConsumerRecord
from memory import cpu_seconds, tree
from runstream_common.admin import ensure_topics
from runstream_common.poison import CrashLedger
from runstream_common.settings import KafkaSettings

REPO = Path(__file__).resolve().parents[2]


def kafka_cpu() -> float:
    state = Path(os.environ.get("RUNSTREAM_STATE_DIR", REPO / ".state"))
    pid = int((state / "kafka" / "kafka.pid").read_text().split()[0])
    return sum(cpu_seconds(p) for p in tree(pid))


def record(offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("t", 0, offset, 0, 0, b"k", b"v", None, 1, 1, [])


async def main(pairs: int) -> None:
    kafka = KafkaSettings(topic_prefix=f"ledger{uuid.uuid4().hex[:6]}")
    topic = kafka.topics.attempts
    await ensure_topics(kafka, [topic], compacted={topic})
    ledger = CrashLedger(kafka, topic=topic, group_id="bench", max_crashes=3)
    await ledger.start()
    try:
        for offset in range(20):  # warm-up: connections, metadata
            await ledger.begin(record(offset))
            await ledger.end(record(offset))
        broker, wall, cpu = kafka_cpu(), time.perf_counter(), time.process_time()
        for offset in range(100, 100 + pairs):
            await ledger.begin(record(offset))
            await ledger.end(record(offset))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        broker = kafka_cpu() - broker
    finally:
        await ledger.stop()
    print(
        f"{pairs} begin/end pairs: {wall / pairs * 1000:.2f} ms wall, {cpu / pairs * 1000:.2f} ms "
        f"CPU here, {broker / pairs * 1000:.2f} ms CPU of Kafka (shared) per record; "
        f"load average {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
