"""Follow the compacted ``proposal-settings`` topic from its beginning, without a group.

Every gateway start reads the whole topic (it is compacted: one record per
proposal) and signals ``loaded`` once it reached the end offsets it saw at start;
then it keeps following new records.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from runstream_common import parsers
from runstream_common.errors import MessageFormatError
from runstream_common.settings import KafkaSettings

log = logging.getLogger("runstream.slurm_gateway.proposal_settings")

OnSettings = Callable[[int, Mapping[str, str | int | float | bool]], Awaitable[None]]


async def follow_proposal_settings(
    kafka: KafkaSettings,
    on_settings: OnSettings,
    loaded: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    topic = kafka.topics.proposal_settings
    backoff = 0.5
    while not stop.is_set():
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.client_id}-slurm-gateway-settings",
            group_id=None,  # no committed offsets: every start reads the whole topic
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            metadata_max_age_ms=5000,
            **kafka.security_kwargs(),
        )
        try:
            await consumer.start()
            ends: dict[TopicPartition, int] = {}
            pending: set[TopicPartition] | None = None
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500)
                if pending is None and consumer.assignment():
                    ends = await consumer.end_offsets(list(consumer.assignment()))
                    pending = {tp for tp, end in ends.items() if end > 0}
                for records in batch.values():
                    for record in records:
                        try:
                            msg = parsers.PROPOSAL_SETTINGS.parse(record.value)
                        except MessageFormatError as exc:
                            log.warning("ignoring bad proposal-settings record: %s", exc)
                        else:
                            await on_settings(msg.proposal, msg.settings)
                if pending is None:
                    continue
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
                if not pending and not loaded.is_set():
                    log.info("proposal settings loaded")
                    loaded.set()
            backoff = 0.5
        except KafkaError as exc:
            log.warning("proposal-settings reader: %s; retrying in %.1fs", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(30.0, backoff * 2)
        finally:
            await consumer.stop()
