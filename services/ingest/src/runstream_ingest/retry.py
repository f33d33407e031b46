"""Headers of the records ingest writes to its retry topic (proc events that must wait)."""

from __future__ import annotations

from dataclasses import dataclass

ATTEMPT = "x-ingest-attempt"
NOT_BEFORE = "x-ingest-not-before"
SOURCE_TOPIC = "x-ingest-source-topic"


@dataclass(frozen=True, slots=True)
class RetryInfo:
    attempt: int
    not_before: float
    source_topic: str


def retry_headers(info: RetryInfo) -> list[tuple[str, bytes]]:
    return [
        (ATTEMPT, str(info.attempt).encode()),
        (NOT_BEFORE, repr(info.not_before).encode()),
        (SOURCE_TOPIC, info.source_topic.encode()),
    ]


def parse_retry_headers(
    headers: tuple[tuple[str, bytes], ...] | list[tuple[str, bytes]],
) -> RetryInfo:
    """Missing or broken headers mean: try now, as a second attempt."""
    found = {k: v for k, v in headers}
    try:
        attempt = int(found.get(ATTEMPT, b"2"))
    except ValueError:
        attempt = 2
    try:
        not_before = float(found.get(NOT_BEFORE, b"0"))
    except ValueError:
        not_before = 0.0
    source = found.get(SOURCE_TOPIC, b"").decode(errors="replace")
    return RetryInfo(max(attempt, 1), not_before, source)
