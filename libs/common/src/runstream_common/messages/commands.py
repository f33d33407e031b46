"""User commands for the store. A bad value is rejected on the updates feed."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .common import ProposalNo, RunNo
from .envelope import Message

UserVariableType = Literal["boolean", "integer", "number", "string"]


class SetComment(Message):
    type: Literal["set_comment"] = "set_comment"
    proposal: ProposalNo
    run: RunNo
    text: str


class DefineUserVariable(Message):
    type: Literal["define_user_variable"] = "define_user_variable"
    proposal: ProposalNo
    name: str
    title: str | None = None
    variable_type: UserVariableType
    description: str | None = None


class SetUserVariable(Message):
    """``value`` is the text a user typed; the store parses it like DAMNIT. None clears."""

    type: Literal["set_user_variable"] = "set_user_variable"
    proposal: ProposalNo
    run: RunNo
    name: str
    value: str | None


class SetTags(Message):
    """Add and remove tags of one variable."""

    type: Literal["set_tags"] = "set_tags"
    proposal: ProposalNo
    variable: str
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


class SetProposalSetting(Message):
    """``value`` None deletes the setting."""

    type: Literal["set_proposal_setting"] = "set_proposal_setting"
    proposal: ProposalNo
    key: str
    value: str | None


class SyncDamnit(Message):
    """Bring the proposal's DAMNIT database (runs.sqlite) up to date with PostgreSQL.

    ``rebuild`` rewrites every row (a missing or unreadable file is always rebuilt).
    """

    type: Literal["sync_damnit"] = "sync_damnit"
    proposal: ProposalNo
    rebuild: bool = False


class ImportDamnit(Message):
    """Adopt an existing DAMNIT folder (runs.sqlite, extracted_data/, context.py)."""

    type: Literal["import_damnit"] = "import_damnit"
    proposal: ProposalNo
    folder: str = Field(description="Absolute path of the DAMNIT folder")


StoreCommand = Annotated[
    SetComment
    | DefineUserVariable
    | SetUserVariable
    | SetTags
    | SetProposalSetting
    | SyncDamnit
    | ImportDamnit,
    Field(discriminator="type"),
]
