"""Settings blocks shared by every service.

Each service has one ``Settings(BaseSettings)`` class with its own env prefix
(``RUNSTREAM_EXECUTOR_``, ...) and ``__`` as the nested delimiter, embedding
these blocks. The blocks also read a shared prefix (``RUNSTREAM_KAFKA_``,
``RUNSTREAM_POSTGRES_``, ``RUNSTREAM_OTEL_``) so one environment can configure
every service at once; a service's own variables win.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, field_serializer, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .secrets import MissingSecret, refuse_placeholder, refuse_placeholder_in_dsn
from .topics import Topics


class KafkaSettings(BaseSettings):
    """How to reach Kafka, security included (passed through to aiokafka)."""

    model_config = SettingsConfigDict(env_prefix="RUNSTREAM_KAFKA_", extra="ignore")

    bootstrap_servers: str = "127.0.0.1:29092"
    topic_prefix: str = "runstream"
    client_id: str = "runstream"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    topic_partitions: int = Field(default=3, ge=1, description="Partitions of topics we create")
    replication_factor: int = Field(default=1, ge=1, description="Replicas of topics we create")
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    max_request_size: int = Field(
        default=1_048_576,
        ge=65_536,
        description="Largest produce request (keep it at or below the broker's message.max.bytes)",
    )
    max_message_bytes: int = Field(
        default=1_000_000,
        ge=4096,
        description=(
            "Largest message value runstream publishes; a bigger one is refused with the reason "
            "(leaves room below max_request_size for headers)"
        ),
    )

    @model_validator(mode="after")
    def _room_for_headers(self) -> KafkaSettings:
        if self.max_message_bytes > self.max_request_size - 4096:
            raise ValueError(
                f"max_message_bytes ({self.max_message_bytes}) must leave at least 4096 bytes "
                f"below max_request_size ({self.max_request_size}) for headers"
            )
        return self

    @field_validator("sasl_password")
    @classmethod
    def _real_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            refuse_placeholder(value.get_secret_value(), "the Kafka SASL password")
        return value

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        """SASL needs a mechanism, a user and a password; say which variable is missing."""
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(
                f"security_protocol {self.security_protocol} needs a SASL mechanism "
                "(RUNSTREAM_KAFKA_SASL_MECHANISM, e.g. SCRAM-SHA-512)"
            )
        if self.sasl_mechanism is not None and not sasl:
            raise ValueError(
                f"sasl_mechanism {self.sasl_mechanism} is set but security_protocol is "
                f"{self.security_protocol} (use SASL_SSL)"
            )
        if sasl and (not self.sasl_username or self.sasl_password is None):
            missing = [
                name
                for name, value in (
                    ("SASL_USERNAME", self.sasl_username),
                    ("SASL_PASSWORD", self.sasl_password),
                )
                if not value
            ]
            raise ValueError(
                f"Kafka {self.security_protocol} needs {' and '.join(missing)} "
                f"(RUNSTREAM_KAFKA_{missing[0]}, or the service's own "
                f"RUNSTREAM_<SERVICE>_KAFKA__{missing[0]})"
            )
        return self

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    def security_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients (not FastStream's broker)."""
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
            )
        return kwargs

    def librdkafka_config(self) -> dict[str, str]:
        """The same connection for librdkafka clients (confluent-kafka: admin tools, tests)."""
        config = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            "ssl.ca.location": self.ssl_cafile,
            "ssl.certificate.location": self.ssl_certfile,
            "ssl.key.location": self.ssl_keyfile,
        }
        config.update({k: v for k, v in optional.items() if v})
        return config


POSTGRES_DSN_MISSING = (
    "no PostgreSQL DSN: set RUNSTREAM_POSTGRES_DSN (or the service's own "
    "RUNSTREAM_STORE_POSTGRES__DSN, RUNSTREAM_WEB_POSTGRES__DSN), "
    "e.g. postgresql://runstream:PASSWORD@HOST:5432/runstream; for the local development "
    'stack: eval "$(deploy/local/stack.sh env)"'
)


class PostgresSettings(BaseSettings):
    """The store's database. The DSN carries the password, so it is secret.

    There is no default: a deployment names its database. Reading an unset DSN raises
    :class:`~runstream_common.errors.ConfigurationError` saying which variable to set
    (commands that never touch the database still run without it).
    """

    model_config = SettingsConfigDict(env_prefix="RUNSTREAM_POSTGRES_", extra="ignore")

    dsn: SecretStr = Field(default_factory=lambda: MissingSecret(POSTGRES_DSN_MISSING))
    min_pool: int = 1
    max_pool: int = 5

    @field_validator("dsn")
    @classmethod
    def _real_password(cls, value: SecretStr) -> SecretStr:
        if not isinstance(value, MissingSecret):
            refuse_placeholder_in_dsn(value.get_secret_value(), "the PostgreSQL DSN")
        return value

    @field_serializer("dsn", when_used="json")
    def _hidden(self, value: SecretStr) -> str:
        return "**********"  # like any secret, and without asking an unset one for its value


class TelemetrySettings(BaseSettings):
    """OpenTelemetry: spans and metrics are exported only when an endpoint is set."""

    model_config = SettingsConfigDict(env_prefix="RUNSTREAM_OTEL_", extra="ignore")

    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP endpoint, e.g. http://collector:4318"
    )
    service_namespace: str = "runstream"


def service_config(prefix: str) -> SettingsConfigDict:
    """The model config every service's Settings uses."""
    return SettingsConfigDict(env_prefix=prefix, env_nested_delimiter="__", extra="ignore")


class ServiceSettings(BaseSettings):
    """Fields every service has. Subclass with ``model_config = service_config(...)``."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    log_level: str = "INFO"
    max_attempts: int = Field(
        default=3, ge=1, description="Tries of an unexpected handler error before dead-lettering"
    )
    max_crashes: int = Field(
        default=3,
        ge=1,
        description="A record being handled each time the process died this many times is "
        "dead-lettered (a poison record) instead of being handled again",
    )
    retry_backoff_s: float = Field(default=0.5, gt=0, description="First retry delay; doubles")
    retry_backoff_max_s: float = Field(default=30.0, gt=0)
