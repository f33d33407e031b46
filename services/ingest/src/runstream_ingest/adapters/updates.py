"""Reading the processing states on the GUI updates feed (for ``reprocess --wait``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from runstream_common import parsers
from runstream_common.errors import MessageFormatError
from runstream_common.messages import ProcessingStateChanged, ProcessingStateSet
from runstream_common.settings import KafkaSettings

from .compacted import start_at_end, tail_consumer

log = logging.getLogger("runstream.ingest.updates")


class UpdatesFollower:
    """Positions itself at the current end of ``updates`` on :meth:`start`; call that before publishing."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.topic = kafka.topics.updates
        self._consumer = tail_consumer(kafka, f"{kafka.client_id}-cli-wait")

    async def start(self) -> None:
        await start_at_end(self._consumer, self.topic, 30.0)

    async def states(self, poll_ms: int = 500) -> AsyncIterator[ProcessingStateChanged | None]:
        """Processing states as they come; ``None`` after each empty poll (lets callers time out)."""
        while True:
            batch = await self._consumer.getmany(timeout_ms=poll_ms)
            got = False
            for records in batch.values():
                for record in records:
                    try:
                        update = parsers.UPDATES.parse(record.value)
                    except MessageFormatError as exc:
                        log.debug("ignoring an update I cannot read: %s", exc)
                        continue
                    if isinstance(update, ProcessingStateSet):
                        got = True
                        yield update.state
            if not got:
                yield None

    async def stop(self) -> None:
        await self._consumer.stop()
