"""DAMNIT's own messages (``{"msg_kind": ..., "data": {...}}``) on ``test.damnit.db-{db_id}``.

These are DAMNIT 0.4's format, not runstream's envelope: its GUI reads them and writes
them (after saving a comment or a user-editable variable into ``runs.sqlite``). The
store publishes them for the DAMNIT databases it keeps and consumes the GUIs' edits.
Messages the store publishes carry the Kafka header ``x-runstream-origin: store``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ORIGIN_HEADER = "x-runstream-origin"
"""Kafka header marking a message runstream published itself (value: the service)."""


class _Data(BaseModel):
    # DAMNIT's clients may add fields; what we do not use is kept, never rejected.
    model_config = ConfigDict(extra="allow", frozen=True)


class DamnitVariable(_Data):
    name: str
    title: str | None = None
    description: str | None = None
    tags: list[str] | None = None
    attributes: Any = None
    type: Literal["boolean", "integer", "number", "string"] | None = None


class DamnitRunValues(_Data):
    proposal: int
    run: int
    values: dict[str, Any] = Field(default_factory=dict, description="names; values are null")


class DamnitProcessingState(_Data):
    processing_id: str
    proposal: int
    run: int
    data: str | None = None
    status: str
    hostname: str | None = None
    username: str | None = None
    slurm_cluster: str | None = None
    slurm_job_id: str | int | None = None


class DamnitProcessingFinished(_Data):
    processing_id: str


class VariableSetMsg(BaseModel):
    model_config = ConfigDict(frozen=True)
    msg_kind: Literal["variable_set"] = "variable_set"
    data: DamnitVariable


class RunValuesUpdatedMsg(BaseModel):
    model_config = ConfigDict(frozen=True)
    msg_kind: Literal["run_values_updated"] = "run_values_updated"
    data: DamnitRunValues


class ProcessingStateSetMsg(BaseModel):
    model_config = ConfigDict(frozen=True)
    msg_kind: Literal["processing_state_set"] = "processing_state_set"
    data: DamnitProcessingState


class ProcessingFinishedMsg(BaseModel):
    model_config = ConfigDict(frozen=True)
    msg_kind: Literal["processing_finished"] = "processing_finished"
    data: DamnitProcessingFinished


DamnitMessage = Annotated[
    VariableSetMsg | RunValuesUpdatedMsg | ProcessingStateSetMsg | ProcessingFinishedMsg,
    Field(discriminator="msg_kind"),
]
