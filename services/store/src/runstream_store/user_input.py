"""Parsing of what users type into editable cells, like DAMNIT's user variables."""

from __future__ import annotations

import re

from runstream_common.errors import InvalidCommand
from runstream_common.messages import UserVariableType

_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_NAMES = frozenset({"comment", "start_time", "proposal", "run", "added_at"})

UserValue = bool | int | float | str


def parse_user_value(variable_type: UserVariableType, text: str | None) -> UserValue | None:
    """The typed value of ``text``; None (clear) for None or, except for strings, blank text.

    booleans accept true/yes/1 and false/no/0 (any case); integers go through ``int()``,
    numbers through ``float()``, as DAMNIT does. Anything else raises InvalidCommand.
    """
    if text is None:
        return None
    if variable_type == "string":
        return text
    stripped = text.strip()
    if not stripped:
        return None
    if variable_type == "boolean":
        try:
            return _BOOLEANS[stripped.lower()]
        except KeyError:
            raise InvalidCommand(
                f"{text!r} is not a valid boolean (use true/yes/1 or false/no/0)"
            ) from None
    if variable_type == "integer":
        try:
            return int(stripped)
        except ValueError:
            raise InvalidCommand(f"{text!r} is not a valid integer") from None
    if variable_type == "number":
        try:
            return float(stripped)
        except ValueError:
            raise InvalidCommand(f"{text!r} is not a valid number") from None
    raise InvalidCommand(f"unknown variable type {variable_type!r}")


def sanitize_name(title: str) -> str:
    """DAMNIT's name for a user variable titled ``title``: ``"!!My Cool Var!!#"`` -> ``my_cool_var``."""
    name = re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")
    return name.lstrip("0123456789_")


def check_user_variable_name(name: str) -> None:
    if not _NAME.match(name):
        raise InvalidCommand(
            f"{name!r} is not a valid variable name (letters, digits and _; not starting with a digit)"
        )
    if name in RESERVED_NAMES:
        raise InvalidCommand(f"{name!r} is reserved and cannot be a user variable")
