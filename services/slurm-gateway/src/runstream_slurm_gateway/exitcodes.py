"""Decode Slurm's ``exit_code`` (a raw wait(2) status in v0.0.38)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """``exit_status`` when the process exited, ``signal`` when a signal ended it."""

    exit_status: int | None
    signal: int | None


def is_wait_status(status: int) -> bool:
    """A real wait status has either an exit byte (low byte 0) or a signal (high byte 0).

    Slurm puts its own error numbers into ``exit_code`` when a launch fails
    (e.g. 4021 for an unwritable output file); those fit neither.
    """
    return 0 <= status <= 0xFFFF and ((status & 0xFF) == 0 or (status >> 8) == 0)


def decode_wait_status(status: int | None) -> ExitInfo:
    """``exit 3`` -> 768 -> (3, None); killed by SIGTERM -> 15 -> (None, 15).

    Values that are no wait status (see :func:`is_wait_status`) give (None, None).
    """
    if status is None or not is_wait_status(status):
        return ExitInfo(None, None)
    signal = status & 0x7F
    if signal == 0:
        return ExitInfo((status >> 8) & 0xFF, None)
    return ExitInfo(None, signal)
