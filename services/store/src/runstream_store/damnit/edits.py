"""Edits made in DAMNIT's GUI (or with its ``DamnitDB``) flow back into PostgreSQL.

DAMNIT's GUI writes a comment or a user-editable value into ``runs.sqlite`` itself and
then announces the run's name on its topic (``run_values_updated``); creating a user
variable writes the ``variables`` row and sends ``variable_set``. For each such
announcement (and for every edit the projection finds in the file without one) the
store reads the edited rows from the file and applies each one that is newer than
PostgreSQL's value and differs from it **as a command** (SetComment, SetUserVariable,
DefineUserVariable) through the same handler as ``runstream comment``: history, feed,
projection. The command's id is derived from the row (database, run, name, write time,
value), so an edit announced twice, or announced and also found by the projection, is
applied once; an edit PostgreSQL cannot take (``'abc'`` in an integer column) is
rejected on the feed with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

from runstream_common import parsers
from runstream_common.errors import MessageFormatError
from runstream_common.kafka import Delivery
from runstream_common.messages import (
    CommandRejected,
    DefineUserVariable,
    SetComment,
    SetUserVariable,
)
from runstream_common.messages.damnit import RunValuesUpdatedMsg, VariableSetMsg
from runstream_common.topics import proposal_key

from ..adapters.damnit_source import ProjectionSource
from ..values import COMMENT
from . import sqlite_file
from .rows import damnit_row

log = logging.getLogger("runstream.store.damnit")

_NAMESPACE = uuid.UUID("6f1c1c0e-2d4b-4a59-9a55-1d2c8e0d0a11")


class CommandSink(Protocol):
    async def on_command(self, message: Any, delivery: Delivery) -> None: ...

    @property
    def feed(self) -> Any: ...


def _event_id(*parts: object) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, "\x1f".join(repr(p) for p in parts))


def _text(value: Any, variable_type: str) -> str | None:
    """A stored user value as the text SetUserVariable parses (None clears)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if variable_type == "boolean" and isinstance(value, int) and value in (0, 1):
        return "true" if value else "false"
    if isinstance(value, float) and variable_type == "number":
        return repr(value)
    return str(value)


class EditApplier:
    def __init__(self, commands: CommandSink, source: ProjectionSource) -> None:
        self.commands = commands
        self.source = source
        self._db_ids: dict[str, int] = {}
        self._lock = asyncio.Lock()
        # Commands sent already (an edit PostgreSQL refused stays in the file; it is
        # answered once per store process, not at every look at the file).
        self._sent: OrderedDict[uuid.UUID, None] = OrderedDict()

    # ------------------------------------------------------------------ from Kafka
    async def on_message(self, topic: str, value: bytes | None, timestamp_ms: int) -> None:
        db_id = topic.rsplit(".damnit.db-", 1)[-1]
        proposal = self._db_ids.get(db_id)
        if proposal is None:
            self._db_ids = await self.source.db_ids()
            proposal = self._db_ids.get(db_id)
        if proposal is None:
            return
        target = await self.source.target(proposal)
        if target is None or not target.enabled or not target.context_dir:
            return
        path = Path(target.context_dir) / sqlite_file.DB_NAME
        try:
            message = parsers.DAMNIT.parse(value)
        except MessageFormatError as exc:
            await self._reject(proposal, f"damnit:{topic}:{timestamp_ms}", "damnit_message",
                               f"not a DAMNIT message: {exc}")  # fmt: skip
            return
        if isinstance(message, RunValuesUpdatedMsg):
            data = message.data
            if data.proposal == proposal:
                await self.apply_values(proposal, db_id, path, data.run, list(data.values))
        elif isinstance(message, VariableSetMsg) and message.data.type is not None:
            await self.apply_variables(proposal, db_id, path, [message.data.name])
        # processing messages (GUI reprocess) and computed variables (the GUI's
        # read-context) are runstream's own business: nothing to take over

    # ------------------------------------------------------------------ the edits
    async def apply_variables(
        self, proposal: int, db_id: str, path: Path, names: list[str]
    ) -> None:
        """User variables defined in the file: define them in PostgreSQL too."""
        in_file = await asyncio.to_thread(sqlite_file.read_variables, path)
        known = {v.name for v in (await self.source.meta(proposal)).variables}
        for name in names:
            var = in_file.get(name)
            if var is None or var.type is None or name in known:
                continue
            command = DefineUserVariable(
                event_id=_event_id(db_id, "define", name, var.title, var.type),
                proposal=proposal,
                name=name,
                title=var.title,
                variable_type=var.type,
                description=var.description or None,
            )
            await self._send(command)

    async def apply_values(
        self, proposal: int, db_id: str, path: Path, run: int, names: list[str]
    ) -> None:
        async with self._lock:  # one reader of the file's edits at a time
            await self._apply_values(proposal, db_id, path, run, names)

    async def _apply_values(
        self, proposal: int, db_id: str, path: Path, run: int, names: list[str]
    ) -> None:
        names = [n for n in names if n != "start_time"]
        if not names:
            return
        rows = await asyncio.to_thread(sqlite_file.read_values, path, proposal, run, names)
        in_file = await asyncio.to_thread(sqlite_file.read_variables, path)
        meta = await self.source.meta(proposal)
        types = {v.name: v.user_type for v in meta.variables}
        snaps = await self.source.runs(proposal, [run])
        if not snaps:
            log.info("GUI edit of p%d r%d: the run is not known to runstream", proposal, run)
            return
        current = {pv.name: pv for pv in snaps[0].values}
        for name in names:
            row = rows.get(name)
            if row is None:
                continue
            user_type = types.get(name)
            if name != COMMENT and user_type is None:
                file_var = in_file.get(name)
                if file_var is None or file_var.type is None:
                    continue  # computed by the context file: not editable
                await self.apply_variables(proposal, db_id, path, [name])
                user_type = file_var.type
            pv = current.get(name)
            if pv is not None:
                if row.timestamp is not None and float(row.timestamp) <= pv.updated_at:
                    continue  # PostgreSQL's value is newer; the projection writes it
                if _same_value(damnit_row(pv).value, row.value):
                    continue
            elif row.value is None:
                continue
            eid = _event_id(db_id, run, name, row.timestamp, row.value)
            command: Any
            if name == COMMENT:
                text = "" if row.value is None else _text(row.value, "string")
                command = SetComment(event_id=eid, proposal=proposal, run=run, text=text or "")
            else:
                command = SetUserVariable(
                    event_id=eid,
                    proposal=proposal,
                    run=run,
                    name=name,
                    value=_text(row.value, user_type or "string"),
                )
            log.info("applying a GUI edit of p%d r%d %s", proposal, run, name)
            await self._send(command)

    async def _send(self, command: Any) -> None:
        if command.event_id in self._sent:
            return
        delivery = Delivery(
            topic="damnit", partition=0, offset=0, key=None, timestamp_ms=0, headers=(), attempt=1
        )
        await self.commands.on_command(command, delivery)  # a refusal is answered on the feed
        self._sent[command.event_id] = None
        while len(self._sent) > 10_000:
            self._sent.popitem(last=False)

    async def _reject(self, proposal: int, event_id: str, kind: str, reason: str) -> None:
        await self.commands.feed.update(
            CommandRejected(
                proposal=proposal, command_event_id=event_id, command_type=kind, reason=reason
            ),
            proposal_key(proposal),
        )


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool | int | float) and isinstance(b, bool | int | float):
        return float(a) == float(b)
    return bool(a == b)
