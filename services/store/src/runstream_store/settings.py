"""Settings of the store (env prefix ``RUNSTREAM_STORE_``, ``__`` nests).

The database comes from ``RUNSTREAM_STORE_POSTGRES__DSN`` or the shared
``RUNSTREAM_POSTGRES_DSN``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from runstream_common.settings import PostgresSettings, ServiceSettings, service_config
from runstream_common.topics import DAMNIT_TOPIC_PREFIX


class DamnitSettings(BaseModel):
    """DAMNIT compatibility: ``runs.sqlite`` in each context folder and DAMNIT's messages."""

    enabled: bool = Field(
        default=True, description="Keep DAMNIT databases at all (per proposal: damnit_projection)"
    )
    topic_prefix: str = Field(
        default=DAMNIT_TOPIC_PREFIX,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="DAMNIT's topics are <prefix>.damnit.db-<db_id>; DAMNIT 0.4's GUI uses 'test'",
    )
    group_id: str | None = Field(
        default=None, description="Consumer group for GUI edits (default <group_id>-damnit)"
    )
    reconcile_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="How often every proposal's file is compared with PostgreSQL",
    )
    retry_max_s: float = Field(default=60.0, gt=0, description="Longest wait between retries")
    linger_s: float = Field(
        default=0.1,
        ge=0,
        description="A change waits this long before it is written, so changes that come "
        "together (a burst of runs) go into the file in one transaction",
    )
    slurm_cluster: str | None = Field(
        default=None, description="Slurm cluster name DAMNIT's GUI passes to squeue/scancel"
    )


class Settings(ServiceSettings):
    """Everything the store can be told."""

    model_config = service_config("RUNSTREAM_STORE_")

    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    group_id: str = Field(default="runstream-store", description="Consumer group of the store")
    registry_wait_s: float = Field(
        default=10.0,
        ge=0,
        description="A results message whose proposal is not registered (after reading the "
        "registry to its end) waits this long for its registration (it may be a moment "
        "late) before it is refused and dead-lettered",
    )
    fragment_wait_s: float = Field(
        default=30.0,
        ge=0,
        description="How long to wait for a fragment file to appear on a shared file system",
    )
    compress_min_bytes: int = Field(
        default=0,
        ge=0,
        description="Plain (non-NetCDF) arrays at least this large are stored gzip-compressed "
        "(0: never, as DAMNIT 0.4 stores them; compressing costs the store ~45 ms of CPU per "
        "2 MB of floats)",
    )
    copy_chunk_mb: float = Field(
        default=64.0,
        gt=0,
        description="Arrays are copied from fragments into run files in slabs of at most this "
        "many MiB (the store's memory does not grow with the size of a variable's data)",
    )
    damnit: DamnitSettings = Field(default_factory=DamnitSettings)
