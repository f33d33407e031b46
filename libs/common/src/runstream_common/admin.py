"""Topic provisioning: create runstream's topics (and their dead-letter topics) once.

Idempotent: topics that exist are left alone. Compacted topics get
``cleanup.policy=compact``. Every service calls :func:`ensure_topics` for the
topics it touches when it starts, so start-up order does not matter.

With Kafka ACLs (docs/security.md) services may not create topics: the
administrator creates them (``runstream kafka acls --apply``) and a service that
finds one missing stops with a message saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from .errors import ConfigurationError, ServiceUnavailable
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
        if not missing:
            return []
        with contextlib.suppress(TopicAlreadyExistsError):  # a concurrent starter won
            response = await admin.create_topics(missing)
            created = _check_created(settings, response.topic_errors)
            log.info("created topics %s", created)
            return created
        return []
    finally:
        await admin.close()


_TOPIC_ALREADY_EXISTS = 36
_AUTHORIZATION_FAILED = (29, 31)  # TOPIC_AUTHORIZATION_FAILED, CLUSTER_AUTHORIZATION_FAILED


def _check_created(settings: KafkaSettings, topic_errors: list[tuple[object, ...]]) -> list[str]:
    """The topics the broker created; raise for those it refused (not for "already exists")."""
    created, refused, failed = [], [], []
    for topic, code, *rest in topic_errors:
        name = str(topic)
        if code == 0:
            created.append(name)
        elif code in _AUTHORIZATION_FAILED:
            refused.append(name)
        elif code != _TOPIC_ALREADY_EXISTS:
            failed.append(f"{name}: error {code} {rest[0] if rest else ''}".strip())
    if refused:
        who = settings.sasl_username or "this client"
        raise ConfigurationError(
            f"Kafka topics {sorted(refused)} do not exist (or are hidden from {who}) and "
            f"{who} may not create them: the administrator creates the topics and ACLs "
            "with `runstream kafka acls --apply` (docs/security.md)"
        )
    if failed:  # the first use of the topic will tell more
        log.warning("Kafka did not create topics: %s", "; ".join(failed))
    return created
