"""Publishing through the shared Kafka wrapper (awaited: acks=all)."""

from __future__ import annotations

from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker
from pydantic import BaseModel
from runstream_common.errors import ServiceUnavailable
from runstream_common.kafka import publish


class KafkaPublisher:
    """The :class:`runstream_executor.handlers.Publisher` port over a FastStream broker.

    Broker trouble becomes ``ServiceUnavailable`` (transient): the run message is
    retried later instead of being dead-lettered.
    """

    def __init__(self, broker: KafkaBroker) -> None:
        self.broker = broker

    async def publish(self, topic: str, message: BaseModel, key: bytes) -> None:
        try:
            await publish(self.broker, topic, message, key=key)
        except (KafkaError, ConnectionError, TimeoutError) as exc:
            raise ServiceUnavailable(f"cannot publish to {topic}: {exc}") from exc
