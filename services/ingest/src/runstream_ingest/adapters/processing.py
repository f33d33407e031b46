"""Following the executor's processing states: when has a run's raw pass finished?"""

from __future__ import annotations

import logging
from typing import Any

from runstream_common import parsers
from runstream_common.errors import MessageFormatError
from runstream_common.messages import TERMINAL_STATUSES, Trigger

from ..ids import facility_request_id
from ..tables import RawInFlight

log = logging.getLogger("runstream.ingest.processing")


def _run_of_key(key: bytes | None) -> tuple[int, int] | None:
    if not key:
        return None
    p, sep, r = key.partition(b"/")
    if not sep or not p.isdigit() or not r.isdigit():
        return None
    return int(p), int(r)


class ProcessingFollower:
    """Applies the executor's processing states (read from the topic's end by a
    :class:`~.readers.Readers` tail); parses only records of runs in flight."""

    def __init__(self, in_flight: RawInFlight) -> None:
        self.in_flight = in_flight

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
