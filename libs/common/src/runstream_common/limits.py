"""Bounds every message respects, and fitting a dead letter under the broker's size limit.

- Proposal and run numbers are PostgreSQL ``integer`` columns: 0 ..
  :data:`MAX_INT32`. The message models refuse anything outside, so such a
  number never gets past the service that reads it first.
- A facility event may be at most :data:`DEFAULT_MAX_EVENT_BYTES` (ingest's
  ``max_event_bytes``); every message we publish at most
  ``KafkaSettings.max_message_bytes``.
- A dead letter carries the original bytes plus the reason. A record close to
  the size limit plus those headers would be refused by the broker, and the
  record lost or retried forever: :func:`fit_dead_letter` cuts the value (never
  the reason) so the dead letter fits, and says so in ``x-dlq-truncated``.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import MessageTooLarge

MAX_INT32 = 2**31 - 1
"""Largest proposal or run number (PostgreSQL ``integer``)."""

DEFAULT_MAX_EVENT_BYTES = 64 * 1024
"""Default size cap of one facility event (ingest setting ``max_event_bytes``)."""

MAX_RUNS_PER_REQUEST = 100_000
"""Most runs one reprocess request may name (``runstream reprocess 1-100000``)."""

RECORD_OVERHEAD_BYTES = 512
"""Room for a record's framing (lengths, timestamps, CRC) when sizing a dead letter."""

DLQ_TRUNCATED = "x-dlq-truncated"
DLQ_REASON_MAX_CHARS = 4000


def check_size(what: str, data: bytes, limit: int) -> None:
    """Raise :class:`MessageTooLarge` if ``data`` is longer than ``limit`` bytes."""
    if len(data) > limit:
        raise MessageTooLarge(f"{what}: {len(data)} bytes, more than the limit of {limit} bytes")


def record_size(key: bytes | None, value: bytes, headers: Iterable[tuple[str, bytes]]) -> int:
    """Bytes one record takes in a produce request (an upper estimate)."""
    size = RECORD_OVERHEAD_BYTES + len(value) + (len(key) if key else 0)
    return size + sum(len(k.encode()) + len(v) + 8 for k, v in headers)


def fit_dead_letter(
    key: bytes | None, value: bytes, headers: list[tuple[str, bytes]], limit: int
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The value and headers of a dead letter that fits in ``limit`` bytes.

    First the value is cut; if the original headers alone are too big, they go
    too (the ``x-dlq-*`` headers, reason included, always stay). Whatever was
    cut is named in ``x-dlq-truncated``.
    """
    if record_size(key, value, headers) <= limit:
        return value, headers
    ours = [(k, v) for k, v in headers if k.startswith("x-dlq-")]
    theirs = [(k, v) for k, v in headers if not k.startswith("x-dlq-")]
    notes: list[str] = []
    marker_room = 200
    room = limit - record_size(key, b"", [*ours, *theirs]) - marker_room
    if room < 0:
        notes.append(f"original headers dropped ({len(theirs)} headers)")
        theirs = []
        room = limit - record_size(key, b"", ours) - marker_room
    room = max(0, room)
    if len(value) > room:
        notes.append(f"value cut to its first {room} of {len(value)} bytes")
        value = value[:room]
    marker = ("runstream: " + "; ".join(notes)).encode()
    return value, [*theirs, *ours, (DLQ_TRUNCATED, marker)]
