"""Small value types shared by several message families."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

ProposalNo = Annotated[int, Field(ge=0, description="Proposal number")]
RunNo = Annotated[int, Field(ge=0, description="Run number")]


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
