"""Who may write: the decision for one request (see ``Settings.write_access``)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from .settings import Settings


@dataclass(frozen=True, slots=True)
class Caller:
    can_write: bool
    user: str | None
    why: str  # shown to a read-only user


def authorize(settings: Settings, headers: Mapping[str, str], client: str | None) -> Caller:
    """The write permission of a request with these headers from this client address."""
    mode = settings.write_access
    if mode == "anyone":
        return Caller(True, None, "")
    if mode == "nobody":
        return Caller(False, None, "this table is read-only")
    if mode == "token":
        token = settings.write_token.get_secret_value() if settings.write_token else ""
        given = headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if token and scheme.lower() == "bearer" and hmac.compare_digest(value, token):
            return Caller(True, "token", "")
        return Caller(False, None, "sign in with the write token to edit")
    # proxy: believe the user header only from the proxy itself
    user = headers.get(settings.user_header.lower(), "").strip()
    if client in settings.trusted_proxies and user:
        return Caller(True, user, "")
    return Caller(False, None, "sign in through the facility's login to edit")
