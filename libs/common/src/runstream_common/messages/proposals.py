"""Proposal registrations (compacted topic ``proposals``) and accepted settings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .common import ProposalNo
from .envelope import Message


class ProposalRegistered(Message):
    """A proposal is to be processed; the latest registration per proposal wins."""

    type: Literal["proposal_registered"] = "proposal_registered"
    proposal: ProposalNo
    context_dir: str = Field(description="Folder holding context.py and the runstream outputs")
    data_root: str | None = Field(
        default=None, description="Folder holding the proposal's raw/ and proc/ run folders"
    )


class ProposalRemoved(Message):
    """A proposal is no longer processed (its data is kept)."""

    type: Literal["proposal_removed"] = "proposal_removed"
    proposal: ProposalNo


ProposalEvent = Annotated[ProposalRegistered | ProposalRemoved, Field(discriminator="type")]


class ProposalSettingsSet(Message):
    """The complete settings of a proposal after the store accepted a change.

    Published on the compacted ``proposal-settings`` topic (and on the updates
    feed) so the executor and slurm-gateway see the same settings after restarts.
    """

    type: Literal["proposal_settings_set"] = "proposal_settings_set"
    proposal: ProposalNo
    settings: dict[str, str | int | float | bool]
