"""The proposal settings the store accepts, and how their values are parsed.

A setting arrives as text (``runstream config P KEY VALUE``); each known key has
a parser that returns the typed value or raises InvalidCommand with the reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from runstream_common.errors import InvalidCommand

SettingValue = str | int | float | bool

_SLURM_TIME = re.compile(
    r"^(?:\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2})$"
)
_SLURM_MEM = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)
_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.,-]+$")


def _positive_int(key: str, text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise InvalidCommand(f"{key} must be a whole number, got {text!r}") from None
    if value < 1:
        raise InvalidCommand(f"{key} must be at least 1, got {value}")
    return value


def _slurm_name(key: str, text: str) -> str:
    value = text.strip()
    if not _SLURM_NAME.match(value):
        raise InvalidCommand(f"{key} must be a Slurm name (letters, digits, _ . , -), got {text!r}")
    return value


def _slurm_time(key: str, text: str) -> str:
    value = text.strip()
    if not _SLURM_TIME.match(value):
        raise InvalidCommand(
            f"{key} must be a Slurm time limit (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or "
            f"D-HH:MM:SS), got {text!r}"
        )
    return value


def _slurm_mem(key: str, text: str) -> str:
    value = text.strip()
    if not _SLURM_MEM.match(value):
        raise InvalidCommand(f"{key} must be a Slurm memory size such as 25G, got {text!r}")
    return value


def _python(key: str, text: str) -> str:
    value = text.strip()
    if not value or not os.path.isabs(value):
        raise InvalidCommand(
            f"{key} must be the absolute path of a Python interpreter, got {text!r}"
        )
    return value


_BOOLEANS = {"true": True, "on": True, "yes": True, "1": True,
             "false": False, "off": False, "no": False, "0": False}  # fmt: skip


def _boolean(key: str, text: str) -> bool:
    try:
        return _BOOLEANS[text.strip().lower()]
    except KeyError:
        raise InvalidCommand(
            f"{key} must be true or false (on/off, yes/no, 1/0), got {text!r}"
        ) from None


PARSERS: dict[str, Callable[[str, str], SettingValue]] = {
    "slurm_partition": _slurm_name,
    "slurm_reservation": _slurm_name,
    "slurm_time": _slurm_time,
    "concurrent_jobs": _positive_int,
    "noncluster_cpus": _positive_int,
    "noncluster_mem": _slurm_mem,
    "context_python": _python,
    "damnit_projection": _boolean,
}
"""Known settings: DAMNIT's ``metameta`` keys that configure processing, and
``damnit_projection`` (default true): whether the store keeps DAMNIT's ``runs.sqlite``
in the proposal's context folder and publishes DAMNIT's messages for it."""


def parse_setting(key: str, text: str) -> SettingValue:
    """The typed value of setting ``key``; InvalidCommand for an unknown key or a bad value."""
    parser = PARSERS.get(key)
    if parser is None:
        raise InvalidCommand(
            f"unknown setting {key!r}; known settings: {', '.join(sorted(PARSERS))}"
        )
    return parser(key, text)
