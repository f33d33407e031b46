"""One parser per topic: bytes in, a validated model out, or MessageFormatError.

Consumers never call ``json.loads`` on a record themselves; they ask the parser
of the topic they read, so each topic has exactly one definition of what may be
on it.
"""

from __future__ import annotations

import re
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from .errors import MessageFormatError
from .limits import DEFAULT_MAX_EVENT_BYTES, check_size
from .messages.commands import StoreCommand
from .messages.damnit import DamnitMessage
from .messages.facility import FacilityEvent
from .messages.jobs import JobControlEvent, JobRequestEvent, JobStateEvent
from .messages.processing import ProcessingEvent
from .messages.proposals import ProposalEvent, ProposalSettingsSet
from .messages.results import ResultsEvent
from .messages.runs import CatalogEvent, ReprocessEvent, RunEvent
from .messages.updates import Update

T = TypeVar("T")


class Parser(Generic[T]):
    """Validate raw record values against one topic's union of message types."""

    def __init__(self, name: str, schema: Any, *, max_bytes: int | None = None) -> None:
        self.name = name
        self.schema = schema
        self.max_bytes = max_bytes
        self._adapter: TypeAdapter[T] = TypeAdapter(schema)

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema of what may be on the topic (for AsyncAPI documents)."""
        schema = self._adapter.json_schema(ref_template="#/components/schemas/{model}")
        schema.setdefault("title", self.schema_name)
        return schema

    @property
    def schema_name(self) -> str:
        """``jobs.state`` -> ``JobsStateMessage``."""
        return (
            "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", self.name)) + "Message"
        )

    def parse(self, raw: bytes | str | None, *, max_bytes: int | None = None) -> T:
        """Decode one record value. Raises MessageFormatError with a readable reason.

        ``max_bytes`` (else the parser's own cap, if any): a longer value is
        refused with :class:`~runstream_common.errors.MessageTooLarge` unread.
        """
        if raw is None:
            raise MessageFormatError(
                f"{self.name}: empty record (tombstone) where a message was expected"
            )
        limit = max_bytes if max_bytes is not None else self.max_bytes
        if limit is not None:
            check_size(self.name, raw.encode() if isinstance(raw, str) else raw, limit)
        try:
            return self._adapter.validate_json(raw)
        except ValidationError as exc:
            raise MessageFormatError(f"{self.name}: {_describe(exc)}") from exc

    def dump(self, message: T) -> bytes:
        """Encode one message as JSON bytes."""
        return self._adapter.dump_json(message)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "<message>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def encode(message: BaseModel) -> bytes:
    """JSON bytes of any message model."""
    return message.model_dump_json().encode()


FACILITY: Parser[FacilityEvent] = Parser(
    "facility event", FacilityEvent, max_bytes=DEFAULT_MAX_EVENT_BYTES
)
PROPOSALS: Parser[ProposalEvent] = Parser("proposals", ProposalEvent)
PROPOSAL_SETTINGS: Parser[ProposalSettingsSet] = Parser("proposal-settings", ProposalSettingsSet)
REPROCESS: Parser[ReprocessEvent] = Parser("reprocess", ReprocessEvent)
RUNS: Parser[RunEvent] = Parser("runs", RunEvent)
RUN_CATALOG: Parser[CatalogEvent] = Parser("run-catalog", CatalogEvent)
RESULTS: Parser[ResultsEvent] = Parser("results", ResultsEvent)
PROCESSING: Parser[ProcessingEvent] = Parser("processing", ProcessingEvent)
JOB_REQUESTS: Parser[JobRequestEvent] = Parser("jobs.requests", JobRequestEvent)
JOB_CONTROL: Parser[JobControlEvent] = Parser("jobs.control", JobControlEvent)
JOB_STATE: Parser[JobStateEvent] = Parser("jobs.state", JobStateEvent)
COMMANDS: Parser[StoreCommand] = Parser("commands", StoreCommand)
UPDATES: Parser[Update] = Parser("updates", Update)
DAMNIT: Parser[DamnitMessage] = Parser("damnit", DamnitMessage)
"""DAMNIT's own messages on ``test.damnit.db-{db_id}`` (see messages/damnit.py)."""
