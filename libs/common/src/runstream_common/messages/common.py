"""Small value types shared by several message families."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..limits import MAX_INT32


def _not_a_bool(value: Any) -> Any:
    # pydantic would take true/false as 1/0: a proposal or run number is never a flag
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


ProposalNo = Annotated[
    int,
    BeforeValidator(_not_a_bool),
    Field(ge=0, le=MAX_INT32, description="Proposal number (0 .. 2^31-1)"),
]
RunNo = Annotated[
    int,
    BeforeValidator(_not_a_bool),
    Field(ge=0, le=MAX_INT32, description="Run number (0 .. 2^31-1)"),
]


class Trigger(StrEnum):
    """Which data a processing pass may read (DAMNIT's RunData)."""

    RAW = "raw"
    PROC = "proc"
    ALL = "all"


class Selection(BaseModel):
    """Which variables to evaluate. Empty means every variable of the trigger.

    ``names`` are exact variable names; ``match`` are case-insensitive substrings
    of titles only (DAMNIT's ``--match``). A variable is selected if either
    list selects it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    names: tuple[str, ...] = ()
    match: tuple[str, ...] = ()

    @property
    def is_all(self) -> bool:
        return not self.names and not self.match
