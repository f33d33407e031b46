"""Events the facility sends (European XFEL's JSON, not our envelope)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .common import ProposalNo, RunNo


class FacilityEvent(BaseModel):
    """One facility event, e.g. ``{"event": "migration_complete", "proposal": 2212, "run": 42}``.

    ``proposal`` and ``run`` may arrive as numeric strings (DAMNIT applies
    ``int()``); anything non-numeric, fractional, boolean or outside
    0 .. 2^31-1 (the database's ``integer``) is rejected. Other fields
    (``path``, ``instrument``, ``cycle``...) are kept for the record.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    event: str = Field(min_length=1, max_length=200)
    proposal: ProposalNo
    run: RunNo

    def extras(self) -> dict[str, str | int | float | bool | None]:
        """Fields beyond the three we use, restricted to JSON scalars."""
        out: dict[str, str | int | float | bool | None] = {}
        for key, value in (self.model_extra or {}).items():
            if value is None or isinstance(value, str | int | float | bool):
                out[key] = value
            else:
                out[key] = str(value)
        return out
