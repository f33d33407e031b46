"""Decode Slurm's ``exit_code`` (a raw wait(2) status in v0.0.38)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """``exit_status`` when the process exited, ``signal`` when a signal ended it."""

    exit_status: int | None
    signal: int | None


def decode_wait_status(status: int | None) -> ExitInfo:
    """``exit 3`` -> 768 -> (3, None); killed by SIGTERM -> 15 -> (None, 15)."""
    if status is None:
        return ExitInfo(None, None)
    signal = status & 0x7F
    if signal == 0:
        return ExitInfo((status >> 8) & 0xFF, None)
    return ExitInfo(None, signal)
