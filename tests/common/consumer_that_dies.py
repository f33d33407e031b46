"""A group member that receives one record and is SIGKILLed inside its handler."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from runstream_common import parsers
from runstream_common.kafka import Delivery, make_broker, subscribe
from runstream_common.messages import RunRequested
from runstream_common.settings import KafkaSettings, ServiceSettings


async def main(topic: str, group: str) -> None:
    kafka = KafkaSettings(session_timeout_ms=6000, heartbeat_interval_ms=500)
    settings = ServiceSettings(kafka=kafka)

    async def handler(message: RunRequested, delivery: Delivery) -> None:
        print(f"received run {message.run}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    broker = make_broker(kafka, client_id="victim")
    subscribe(
        broker, topic, group_id=group, parser=parsers.RUNS, handler=handler, settings=settings
    )
    await broker.start()
    await asyncio.sleep(90)
    print("never received anything", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
