"""Topic provisioning: create runstream's topics (and their dead-letter topics) once.

Idempotent: topics that exist are left alone. Compacted topics get
``cleanup.policy=compact``. Every service calls :func:`ensure_topics` for the
topics it touches when it starts, so start-up order does not matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from .errors import ServiceUnavailable
from .settings import KafkaSettings
from .topics import dlq

log = logging.getLogger("runstream.admin")


async def ensure_topics(
    settings: KafkaSettings,
    topics: list[str],
    *,
    compacted: frozenset[str] | set[str] = frozenset(),
    with_dlq: bool = True,
    partitions: int | None = None,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the missing ones of ``topics`` (plus ``.dlq`` twins). Returns those created."""
    wanted: dict[str, bool] = {}
    for topic in topics:
        wanted[topic] = topic in compacted
        if with_dlq:
            wanted[dlq(topic)] = False
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-admin",
        request_timeout_ms=int(timeout_s * 1000),
        **settings.security_kwargs(),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except (KafkaConnectionError, TimeoutError, OSError) as exc:
        raise ServiceUnavailable(
            f"Kafka at {settings.bootstrap_servers} is not answering: {exc}"
        ) from exc
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name,
                num_partitions=partitions or settings.topic_partitions,
                replication_factor=settings.replication_factor,
                topic_configs={"cleanup.policy": "compact"} if is_compacted else {},
            )
            for name, is_compacted in wanted.items()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # a concurrent starter won
                await admin.create_topics(missing)
            log.info("created topics %s", [t.name for t in missing])
        return [t.name for t in missing]
    finally:
        await admin.close()
