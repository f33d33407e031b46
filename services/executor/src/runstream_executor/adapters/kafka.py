"""Publishing through the shared Kafka wrapper (awaited: acks=all)."""

from __future__ import annotations

from faststream.kafka import KafkaBroker
from pydantic import BaseModel
from runstream_common.kafka import publish


class KafkaPublisher:
    """The :class:`runstream_executor.processing.Publisher` port over a FastStream broker."""

    def __init__(self, broker: KafkaBroker) -> None:
        self.broker = broker

    async def publish(self, topic: str, message: BaseModel, key: bytes) -> None:
        await publish(self.broker, topic, message, key=key)
