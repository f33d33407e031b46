"""Following the executor's processing states: when has a run's raw pass finished?"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import AIOKafkaConsumer
from runstream_common import parsers
from runstream_common.errors import MessageFormatError
from runstream_common.messages import TERMINAL_STATUSES, Trigger
from runstream_common.settings import KafkaSettings

from ..ids import facility_request_id
from ..tables import RawInFlight
from .compacted import follower_fetch, partitions_of

log = logging.getLogger("runstream.ingest.processing")


def _run_of_key(key: bytes | None) -> tuple[int, int] | None:
    if not key:
        return None
    p, sep, r = key.partition(b"/")
    if not sep or not p.isdigit() or not r.isdigit():
        return None
    return int(p), int(r)


class ProcessingFollower:
    """Reads ``<prefix>.processing`` from its end; parses only records of runs in flight."""

    def __init__(
        self, kafka: KafkaSettings, in_flight: RawInFlight, batch_ms: int | None = None
    ) -> None:
        self.topic = kafka.topics.processing
        self.in_flight = in_flight
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.client_id}-ingest-processing",
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            **follower_fetch(batch_ms),
            **kafka.security_kwargs(),
        )

    async def start(self) -> None:
        await self._consumer.start()
        tps = await partitions_of(self._consumer, self.topic, 60.0)
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:
            await self._consumer.position(tp)

    def apply(self, record: Any) -> None:
        run = _run_of_key(record.key)
        if run is not None and run not in self.in_flight:
            return  # cheap: most processing records are about other runs or variables
        try:
            state = parsers.PROCESSING.parse(record.value)
        except MessageFormatError:
            return
        if (
            state.trigger is Trigger.RAW
            and state.status in TERMINAL_STATUSES
            and state.request_id == facility_request_id(state.proposal, state.run, Trigger.RAW)
        ):
            self.in_flight.finish(state.proposal, state.run)
            log.debug("raw pass of p%d r%d is %s", state.proposal, state.run, state.status)

    async def follow(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    self.apply(record)

    async def stop(self) -> None:
        await self._consumer.stop()
