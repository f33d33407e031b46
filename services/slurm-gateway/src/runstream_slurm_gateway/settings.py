"""Settings of the slurm-gateway (environment prefix ``RUNSTREAM_SLURM_GATEWAY_``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from runstream_common.secrets import refuse_placeholder
from runstream_common.settings import ServiceSettings, service_config


class SlurmRestSettings(BaseModel):
    """Where slurmrestd answers and which API version to speak."""

    url: str = "http://127.0.0.1:6820"
    user: str = Field(default="slurmtest", description="X-SLURM-USER-NAME; jobs run as this user")
    api_version: str = Field(
        default="v0.0.38", description="v0.0.37/v0.0.38 (Slurm 22.05) or v0.0.40 and later"
    )
    timeout_s: float = Field(default=10.0, gt=0)
    poll_interval_s: float = Field(default=1.0, gt=0, description="Job list polling period")
    unclear_submit_wait_s: float = Field(
        default=30.0,
        ge=0,
        description=(
            "After a submit whose outcome is unclear (no answer, or an unreadable one), look for "
            "the job by its request id this long before submitting it again"
        ),
    )


class TokenSettings(BaseModel):
    """Where the JWT comes from; see docs/slurm-gateway.md."""

    source: Literal["env", "file", "command", "hs256"] = "command"
    env_var: str = Field(default="SLURM_JWT", description="source=env: variable holding the token")
    file: Path | None = Field(default=None, description="source=file: re-read when it changes")
    command: str = Field(
        default="scontrol token lifespan={lifespan}",
        description="source=command: prints a token (bare or SLURM_JWT=...); {lifespan} and "
        "{user} are substituted; e.g. 'ssh login1 scontrol token lifespan={lifespan}'",
    )
    key_file: Path | None = Field(default=None, description="source=hs256: the cluster's jwt key")
    key: SecretStr | None = Field(
        default=None, description="source=hs256: the key itself; 'base64:<...>' for binary keys"
    )
    lifespan_s: int = Field(default=1800, ge=2, description="Lifespan of tokens we obtain")
    refresh_margin_s: float = Field(
        default=60.0, ge=0, description="Refresh this long before the token expires"
    )
    retry_backoff_s: float = Field(default=1.0, gt=0)
    retry_backoff_max_s: float = Field(default=60.0, gt=0)

    @field_validator("key")
    @classmethod
    def _real_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            refuse_placeholder(value.get_secret_value(), "token.key (the Slurm JWT key)")
        return value


class JobSettings(BaseModel):
    """How a job request becomes a batch job."""

    command_prefix: list[str] = Field(
        default_factory=lambda: [sys.executable, "-m", "runstream_executor.job"],
        description="Interpreter and module of the job entry point; arguments are appended",
    )
    partition: str | None = Field(default=None, description="Used when the proposal sets none")
    reservation: str | None = None
    time: str = Field(default="02:00:00", description="Default time limit (Slurm time format)")
    cpus: int = Field(default=1, ge=1)
    memory_mb: int | None = Field(default=None, ge=1, description="Memory per node (MiB)")
    concurrent_jobs: int = Field(default=15, ge=1, description="Default per-proposal cap")
    logs_dir: str = Field(default="slurm_logs", description="Folder under the context dir")
    path: str = Field(default="/usr/local/bin:/usr/bin:/bin", description="PATH of the job")
    extra_env: dict[str, str] = Field(
        default_factory=dict, description="More variables for the job's (otherwise clean) env"
    )
    pass_kafka_password: bool = Field(
        default=False,
        description="Put the gateway's own SASL password into the job's environment "
        "(prefer kafka_username/kafka_password: a user that may only publish results)",
    )
    kafka_username: str | None = Field(
        default=None,
        description="SASL user of the jobs (Kafka ACLs: write results and processing only); "
        "default: the gateway's own user",
    )
    kafka_password: SecretStr | None = Field(
        default=None, description="Its password (handed to the job in its environment)"
    )

    @field_validator("kafka_password")
    @classmethod
    def _real_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            refuse_placeholder(value.get_secret_value(), "job.kafka_password")
        return value


class LocalSettings(BaseModel):
    """The ``local`` backend: subprocesses on this machine."""

    kill_grace_s: float = Field(default=5.0, ge=0, description="SIGTERM to SIGKILL on cancel")
    run_as: str | None = Field(
        default=None,
        description=(
            "Run the jobs as this (unprivileged) user, not as the gateway's: they then cannot "
            "read the gateway's files (its Slurm JWT key) or its process environment. The "
            "gateway must be root or hold CAP_SETUID and CAP_SETGID; util-linux setpriv is used"
        ),
    )
    journal_dir: str | None = Field(
        default="~/.local/state/runstream",
        description=(
            "Where the local backend journals its jobs so a restarted gateway loses none "
            "(file local-jobs-<topic prefix>.jsonl); empty: keep jobs in memory only"
        ),
    )


class Settings(ServiceSettings):
    model_config = service_config("RUNSTREAM_SLURM_GATEWAY_")

    backend: Literal["slurm", "local"] = "local"
    slurm: SlurmRestSettings = Field(default_factory=SlurmRestSettings)
    token: TokenSettings = Field(default_factory=TokenSettings)
    job: JobSettings = Field(default_factory=JobSettings)
    local: LocalSettings = Field(default_factory=LocalSettings)
    settings_wait_s: float = Field(
        default=30.0, ge=0, description="Wait this long for proposal settings at start-up"
    )
