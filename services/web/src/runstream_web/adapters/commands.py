"""Sending the browsers' edits: commands to the store, reprocess requests to ingest."""

from __future__ import annotations

import uuid
from typing import Any

from faststream.kafka import KafkaBroker
from runstream_common.kafka import publish
from runstream_common.messages import ReprocessRequested
from runstream_common.topics import Topics, proposal_key

USER_HEADER = "x-runstream-user"


def reprocess_request_id(request: ReprocessRequested, run: int) -> str:
    """The id of the run message ingest makes of ``request`` for ``run``.

    Ingest derives it from the request's event id, documented so that clients can
    follow exactly the runs they asked for (as ``runstream reprocess --wait`` does).
    """
    return str(uuid.uuid5(request.event_id, f"{request.proposal}/{run}/{request.trigger.value}"))


class CommandSender:
    """Publishes through the service's broker (acks=all) and waits until Kafka has it."""

    def __init__(self, broker: KafkaBroker, topics: Topics) -> None:
        self.broker = broker
        self.topics = topics

    def _headers(self, user: str | None) -> dict[str, str]:
        return {USER_HEADER: user} if user else {}

    async def command(self, message: Any, user: str | None) -> None:
        await publish(
            self.broker,
            self.topics.commands,
            message,
            key=proposal_key(message.proposal),
            headers=self._headers(user),
        )

    async def reprocess(self, request: ReprocessRequested, user: str | None) -> None:
        await publish(
            self.broker,
            self.topics.reprocess,
            request,
            key=proposal_key(request.proposal),
            headers=self._headers(user),
        )
