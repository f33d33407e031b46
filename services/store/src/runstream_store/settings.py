"""Settings of the store (env prefix ``RUNSTREAM_STORE_``, ``__`` nests).

The database comes from ``RUNSTREAM_STORE_POSTGRES__DSN`` or the shared
``RUNSTREAM_POSTGRES_DSN``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from runstream_common.settings import PostgresSettings, ServiceSettings, service_config


class Settings(ServiceSettings):
    """Everything the store can be told."""

    model_config = service_config("RUNSTREAM_STORE_")

    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    group_id: str = Field(default="runstream-store", description="Consumer group of the store")
    fragment_wait_s: float = Field(
        default=30.0,
        ge=0,
        description="How long to wait for a fragment file to appear on a shared file system",
    )
    compress_min_bytes: int = Field(
        default=1024,
        ge=0,
        description="Plain (non-NetCDF) arrays at least this large are stored gzip-compressed",
    )
    crash_point: Literal["before_replace", "after_merge", "after_commit"] | None = Field(
        default=None,
        description="Fault injection for crash tests only: the process exits at this point",
    )
