"""Test doubles and builders for the store's tests."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from runstream_common.kafka import Delivery
from runstream_common.messages import ProposalSettingsSet

DELIVERY = Delivery(
    topic="t", partition=0, offset=0, key=None, timestamp_ms=0, headers=(), attempt=1
)


class RecordingFeed:
    """The Feed port, recording what the store would publish (topic, key, message)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, Any]] = []

    async def update(self, message: BaseModel, key: bytes) -> None:
        self.sent.append(("updates", key, message))

    async def settings(self, message: ProposalSettingsSet) -> None:
        key = str(message.proposal).encode()
        self.sent.append(("proposal-settings", key, message))
        self.sent.append(("updates", key, message))

    def of_type(self, type_: str) -> list[Any]:
        return [m for topic, _, m in self.sent if topic == "updates" and m.type == type_]

    def clear(self) -> None:
        self.sent.clear()
