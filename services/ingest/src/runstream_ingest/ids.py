"""Request ids: deterministic for facility events, fresh per reprocess request.

A facility event for (proposal, run, trigger) always maps to the same request id,
so a duplicate that slipped through anyway is recognisable downstream. A
reprocess request's ids derive from its own ``event_id`` (a fresh UUID), so the
CLI can compute them and follow exactly the runs it asked for.
"""

from __future__ import annotations

import uuid

from runstream_common.messages import Trigger

FACILITY_NAMESPACE = uuid.UUID("5b0f3c1e-6f0e-4c53-9a3e-2f1b8f9e7a41")


def facility_request_id(proposal: int, run: int, trigger: Trigger) -> str:
    """Stable id of the one run message per (proposal, run, trigger)."""
    return str(uuid.uuid5(FACILITY_NAMESPACE, f"{proposal}/{run}/{trigger.value}"))


def reprocess_request_id(
    reprocess_event_id: uuid.UUID, proposal: int, run: int, trigger: Trigger
) -> str:
    """Id of the run message that one reprocess request produces for one run."""
    return str(uuid.uuid5(reprocess_event_id, f"{proposal}/{run}/{trigger.value}"))
