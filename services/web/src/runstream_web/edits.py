"""Checking what a browser asks to change, before it goes to the store as a command.

The store checks every command again (and answers ``command_rejected``); these
checks give the user the same message at once and keep nonsense off the topic.
Value parsing follows DAMNIT (and the store): booleans accept true/yes/1 and
false/no/0 in any case, integers go through ``int()``, numbers through
``float()``; blank text clears a value, except for strings.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from runstream_common.messages import (
    DefineUserVariable,
    Message,
    ReprocessRequested,
    Selection,
    SetComment,
    SetUserVariable,
    Trigger,
)

M = TypeVar("M", bound=Message)
_BOOLEANS = {"true", "yes", "1", "false", "no", "0"}
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED = frozenset({"comment", "start_time", "proposal", "run", "added_at"})
USER_TYPES = ("boolean", "integer", "number", "string")
MAX_RUNS = 100_000


class EditRejected(ValueError):
    """The edit is not acceptable; the message says why (shown to the user)."""


def check_user_value(variable_type: str, text: str | None) -> None:
    """Raise EditRejected unless the store would accept ``text`` for this type."""
    if text is None or variable_type == "string":
        return
    stripped = text.strip()
    if not stripped:
        return
    if variable_type == "boolean":
        if stripped.lower() not in _BOOLEANS:
            raise EditRejected(f"{text!r} is not a valid boolean (use true/yes/1 or false/no/0)")
    elif variable_type == "integer":
        try:
            int(stripped)
        except ValueError:
            raise EditRejected(f"{text!r} is not a valid integer") from None
    elif variable_type == "number":
        try:
            float(stripped)
        except ValueError:
            raise EditRejected(f"{text!r} is not a valid number") from None
    else:
        raise EditRejected(f"unknown variable type {variable_type!r}")


def _text_field(body: Mapping[str, Any], key: str, max_length: int, *, nullable: bool) -> Any:
    if key not in body:
        raise EditRejected(f"missing {key!r}")
    value = body[key]
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise EditRejected(f"{key!r} must be text")
    if len(value) > max_length:
        raise EditRejected(f"{key!r} is longer than {max_length} characters")
    if "\x00" in value:
        raise EditRejected(f"{key!r} contains a NUL character")
    return value


def comment_command(
    proposal: int, run: int, body: Mapping[str, Any], max_length: int
) -> SetComment:
    text = _text_field(body, "text", max_length, nullable=False)
    return _with_correlation(SetComment, proposal=proposal, run=run, text=text)


def user_value_command(
    proposal: int,
    run: int,
    name: str,
    user_type: str | None,
    body: Mapping[str, Any],
    max_length: int,
) -> SetUserVariable:
    if user_type is None:
        raise EditRejected(f"{name!r} is computed by the context file and cannot be edited")
    value = _text_field(body, "value", max_length, nullable=True)
    check_user_value(user_type, value)
    return _with_correlation(SetUserVariable, proposal=proposal, run=run, name=name, value=value)


def define_variable_command(
    proposal: int, body: Mapping[str, Any], existing: Collection[str]
) -> DefineUserVariable:
    title = _text_field(body, "title", 200, nullable=False).strip()
    if not title:
        raise EditRejected("a user variable needs a title")
    name = body.get("name") or sanitize_name(title)
    if not isinstance(name, str) or not NAME.match(name):
        raise EditRejected(
            f"{name!r} is not a valid variable name (letters, digits and _; "
            "not starting with a digit)"
        )
    if name in RESERVED:
        raise EditRejected(f"{name!r} is reserved and cannot be a user variable")
    if name in existing:
        raise EditRejected(f"proposal {proposal} already has a variable {name!r}")
    variable_type = body.get("type")
    if variable_type not in USER_TYPES:
        raise EditRejected(f"type must be one of {', '.join(USER_TYPES)}")
    description = body.get("description")
    if description is not None and not isinstance(description, str):
        raise EditRejected("'description' must be text")
    return _with_correlation(
        DefineUserVariable,
        proposal=proposal,
        name=name,
        title=title,
        variable_type=variable_type,
        description=description or None,
    )


def sanitize_name(title: str) -> str:
    """DAMNIT's name for a user variable titled ``title``: ``"My Var!"`` -> ``my_var``."""
    name = re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")
    return name.lstrip("0123456789_")


@dataclass(frozen=True, slots=True)
class Reprocess:
    request: ReprocessRequested
    runs: tuple[int, ...]


def reprocess_command(
    proposal: int, body: Mapping[str, Any], known_runs: Collection[int], variables: Collection[str]
) -> Reprocess:
    """``{"runs": [..] | "all", "variables": [names] (optional), "data": raw|proc|all}``."""
    runs = body.get("runs")
    if runs == "all":
        chosen = tuple(sorted(known_runs))
    elif isinstance(runs, list) and runs:
        if len(runs) > MAX_RUNS or not all(
            isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in runs
        ):
            raise EditRejected("'runs' must be run numbers or \"all\"")
        unknown = sorted(set(runs) - set(known_runs))
        if unknown:
            raise EditRejected(
                f"proposal {proposal} has no run {', '.join(map(str, unknown[:10]))}"
            )
        chosen = tuple(sorted(set(runs)))
    else:
        raise EditRejected("choose runs to reprocess")
    if not chosen:
        raise EditRejected(f"proposal {proposal} has no runs yet")
    names = body.get("variables") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise EditRejected("'variables' must be a list of variable names")
    unknown_vars = sorted(set(names) - set(variables))
    if unknown_vars:
        raise EditRejected(f"not a computed variable: {', '.join(unknown_vars[:10])}")
    data: Literal["raw", "proc", "all"] = body.get("data") or "all"
    if data not in ("raw", "proc", "all"):
        raise EditRejected("'data' must be raw, proc or all")
    request = ReprocessRequested(
        proposal=proposal,
        runs="all" if runs == "all" else chosen,
        trigger=Trigger(data),
        selection=Selection(names=tuple(sorted(set(names)))),
    )
    return Reprocess(request, chosen)


def _with_correlation(cls: type[M], **fields: Any) -> M:
    """A command whose correlation id is its own event id (the store's answer carries it)."""
    event_id = uuid.uuid4()
    return cls(event_id=event_id, correlation_id=str(event_id), **fields)
