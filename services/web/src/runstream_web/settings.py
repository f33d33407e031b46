"""Settings of the web service (env prefix ``RUNSTREAM_WEB_``, ``__`` nests).

The database comes from ``RUNSTREAM_WEB_POSTGRES__DSN`` or the shared
``RUNSTREAM_POSTGRES_DSN``; the service opens it read-only.

Who may write (comments, user variables, reprocess requests), ``write_access``:

- ``anyone``: every browser may (the default; fine on loopback or a trusted network);
- ``token``: a browser that sends ``Authorization: Bearer <write_token>``;
- ``proxy``: a request that a trusted reverse proxy (``trusted_proxies``) marks
  with an authenticated user in ``user_header`` (e.g. oauth2-proxy's
  ``X-Forwarded-User``);
- ``nobody``: read-only for everyone.

Everyone else sees the table read-only. A write token that is still a placeholder
(``change-me``, ``REPLACE_ME``, ...) stops the service at start-up.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from runstream_common.secrets import refuse_placeholder
from runstream_common.settings import PostgresSettings, ServiceSettings, service_config

WriteAccess = Literal["anyone", "token", "proxy", "nobody"]


class Settings(ServiceSettings):
    """Everything the web service can be told."""

    model_config = service_config("RUNSTREAM_WEB_")

    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    host: str = Field(default="127.0.0.1", description="Address to listen on (0.0.0.0: all)")
    port: int = Field(default=28080, ge=0, le=65535, description="HTTP port (0: any free port)")
    public_url: str | None = Field(
        default=None,
        description="The URL users open (behind a proxy); logged at start instead of host:port",
    )
    write_access: WriteAccess = Field(default="anyone", description="Who may send edits")
    write_token: SecretStr | None = Field(
        default=None, description="With write_access=token: the bearer token that allows writes"
    )
    user_header: str = Field(
        default="X-Forwarded-User",
        description="With write_access=proxy: the header the proxy puts the user name in",
    )
    trusted_proxies: tuple[str, ...] = Field(
        default=("127.0.0.1", "::1"),
        description="With write_access=proxy: client addresses whose user header is believed",
    )
    replay_events: int = Field(
        default=20_000,
        ge=100,
        description="Updates kept in memory so a reconnecting browser catches up without a reload",
    )
    client_queue: int = Field(
        default=10_000,
        ge=10,
        description="Updates queued per browser; a browser that falls further behind reloads",
    )
    keepalive_s: float = Field(
        default=15.0, gt=0, description="Seconds between keep-alive comments on idle event streams"
    )
    max_plot_points: int = Field(
        default=1_000_000,
        ge=1000,
        description="Arrays larger than this are decimated before they go to the browser",
    )
    max_text_length: int = Field(
        default=10_000, ge=1, description="Longest comment or user string value accepted"
    )

    @field_validator("write_token")
    @classmethod
    def _real_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            refuse_placeholder(value.get_secret_value(), "the web write token")
        return value
