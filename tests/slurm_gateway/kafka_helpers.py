"""Run the gateway app in-process against the real broker and watch its job states."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer
from faststream.kafka import KafkaBroker
from runstream_common import parsers
from runstream_common.kafka import make_broker, publish
from runstream_common.messages import JobStateChanged, ProposalSettingsSet
from runstream_common.settings import KafkaSettings
from runstream_common.topics import proposal_key, run_key
from runstream_slurm_gateway.app import GatewayRuntime, build_app
from runstream_slurm_gateway.settings import Settings


class StateWatcher:
    """Collects every JobStateChanged on the job state topic, from the beginning."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.events: list[JobStateChanged] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            self.kafka.topics.job_state,
            bootstrap_servers=self.kafka.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed",
            metadata_max_age_ms=1000,
        )
        await consumer.start()
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        self.events.append(parsers.JOB_STATE.parse(record.value))
        finally:
            await consumer.stop()

    async def __aenter__(self) -> StateWatcher:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def gateway(settings: Settings) -> AsyncIterator[GatewayRuntime]:
    service = build_app(settings)
    await service.app.start()
    try:
        yield service.runtime
    finally:
        await service.app.stop()


@contextlib.asynccontextmanager
async def producer(kafka: KafkaSettings) -> AsyncIterator[KafkaBroker]:
    broker = make_broker(kafka, client_id="test-producer")
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.stop()


async def send(broker: KafkaBroker, kafka: KafkaSettings, message: object) -> None:
    topics = kafka.topics
    if isinstance(message, ProposalSettingsSet):
        await publish(broker, topics.proposal_settings, message, key=proposal_key(message.proposal))
        return
    proposal, run = message.proposal, message.run  # type: ignore[attr-defined]
    topic = topics.job_requests if message.type == "job_requested" else topics.job_control  # type: ignore[attr-defined]
    await publish(broker, topic, message, key=run_key(proposal, run))
