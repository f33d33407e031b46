"""Register a proposal the way ``runstream proposal add`` does, for tests that drive services directly.

The executor and the store take a proposal's folders from the registry and
refuse run and results messages that name others (docs/security.md): a test
that publishes such messages itself registers the proposal first.
"""

from __future__ import annotations

from pathlib import Path

from runstream_common.admin import ensure_topics
from runstream_common.kafka import make_broker, publish
from runstream_common.messages import ProposalRegistered
from runstream_common.settings import KafkaSettings
from runstream_common.topics import proposal_key


async def register_proposal(
    kafka: KafkaSettings,
    proposal: int,
    context_dir: Path | str,
    data_root: Path | str | None = None,
) -> None:
    topic = kafka.topics.proposals
    await ensure_topics(kafka, [topic], compacted={topic})
    broker = make_broker(kafka, client_id="test-registrar")
    await broker.connect()
    try:
        await publish(
            broker,
            topic,
            ProposalRegistered(
                proposal=proposal,
                context_dir=str(context_dir),
                data_root=None if data_root is None else str(data_root),
            ),
            key=proposal_key(proposal),
        )
    finally:
        await broker.stop()
