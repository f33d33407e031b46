"""The envelope every runstream message carries."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    """Timezone-aware now, the only clock messages use."""
    return datetime.now(UTC)


class Message(BaseModel):
    """Base of every message on an internal topic.

    ``event_id`` identifies this message (idempotency key for consumers);
    ``correlation_id`` ties together everything caused by one facility event or
    user request; ``type`` is the discriminator set by each subclass.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: UUID = Field(default_factory=uuid4)
    schema_version: int = 1
    time: AwareDatetime = Field(default_factory=utcnow)
    correlation_id: str | None = None
