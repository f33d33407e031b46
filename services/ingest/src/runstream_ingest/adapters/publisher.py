"""One-shot publishing for the CLI: a few messages, each acknowledged by every in-sync replica."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from pydantic import BaseModel
from runstream_common.errors import ServiceUnavailable
from runstream_common.limits import check_size
from runstream_common.settings import KafkaSettings


async def publish_once(
    kafka: KafkaSettings, messages: list[tuple[str, bytes | None, BaseModel]]
) -> None:
    """Publish ``(topic, key, message)`` tuples as JSON; raise ServiceUnavailable if Kafka is down.

    A message over ``max_message_bytes`` raises MessageTooLarge before anything is sent.
    """
    encoded = [(topic, key, message.model_dump_json().encode()) for topic, key, message in messages]
    for topic, _key, data in encoded:
        check_size(f"message for {topic}", data, kafka.max_message_bytes)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-cli",
        enable_idempotence=True,
        acks="all",
        request_timeout_ms=15_000,
        **kafka.security_kwargs(),
    )
    try:
        await producer.start()
    except (KafkaConnectionError, OSError) as exc:
        await producer.stop()
        raise ServiceUnavailable(
            f"Kafka at {kafka.bootstrap_servers} is not answering: {exc}"
        ) from exc
    try:
        for topic, key, data in encoded:
            await producer.send_and_wait(
                topic,
                data,
                key=key,
                headers=[("content-type", b"application/json")],
            )
    except KafkaError as exc:
        raise ServiceUnavailable(f"publishing to Kafka failed: {exc}") from exc
    finally:
        await producer.stop()
