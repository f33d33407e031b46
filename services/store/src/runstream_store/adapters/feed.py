"""The change feed: updates for GUIs, and the compacted proposal-settings topic."""

from __future__ import annotations

from faststream.kafka import KafkaBroker
from pydantic import BaseModel
from runstream_common.kafka import publish
from runstream_common.messages import ProposalSettingsSet
from runstream_common.topics import Topics, proposal_key


class KafkaFeed:
    """Publishes through the service's broker and waits for the broker's acknowledgement."""

    def __init__(self, broker: KafkaBroker, topics: Topics) -> None:
        self.broker = broker
        self.topics = topics

    async def update(self, message: BaseModel, key: bytes) -> None:
        await publish(self.broker, self.topics.updates, message, key=key)

    async def settings(self, message: ProposalSettingsSet) -> None:
        """Accepted settings: the compacted topic first (services), then the feed (GUIs)."""
        key = proposal_key(message.proposal)
        await publish(self.broker, self.topics.proposal_settings, message, key=key)
        await publish(self.broker, self.topics.updates, message, key=key)
