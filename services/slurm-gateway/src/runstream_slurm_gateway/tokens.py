"""Slurm JWTs: where they come from and keeping one valid.

Sources (``TokenSettings.source``):

- ``env``: a variable (``SLURM_JWT`` by default), read again on every refresh;
- ``file``: a file, read again when its mtime/size changes (an operator or a
  cron job may rewrite it);
- ``command``: a command that prints a fresh token, e.g. ``scontrol token
  lifespan={lifespan}`` locally or through ``ssh``; ``SLURM_JWT=`` is stripped;
- ``hs256``: tokens signed here with the cluster's HS256 key (claims ``sun``,
  ``iat``, ``exp``), the same tokens ``scontrol token`` mints.

:class:`TokenManager` hands out the current token, refreshes it ``refresh_margin_s``
before its ``exp`` claim, and again whenever the caller reports an auth failure.
Tokens are never logged; errors name the source, not the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import subprocess
import time
from base64 import b64decode, urlsafe_b64decode
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import jwt
from runstream_common.errors import ConfigurationError, TransientError

from .settings import TokenSettings

log = logging.getLogger("runstream.slurm_gateway.tokens")


class TokenError(TransientError):
    """No valid token could be obtained (the source failed or gave garbage)."""


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    expires_at: float | None  # epoch seconds; None = unknown (never refreshed early)
    fetched_at: float = 0.0

    def __repr__(self) -> str:  # never show the secret
        return f"Token(expires_at={self.expires_at})"


def token_expiry(value: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying it (we do not hold the key)."""
    try:
        payload = value.split(".")[1]
        claims = json.loads(urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) else None


def _clean(text: str, source: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise TokenError(f"token source {source} gave nothing")
    value = lines[-1]
    if value.startswith("SLURM_JWT="):
        value = value.removeprefix("SLURM_JWT=")
    if value.count(".") != 2 or any(c.isspace() for c in value):
        raise TokenError(f"token source {source} did not give a JWT")
    return value


class TokenSource(Protocol):
    """Blocking: called in a worker thread."""

    description: str

    def fetch(self) -> Token: ...


class EnvTokenSource:
    def __init__(self, var: str) -> None:
        self.var = var
        self.description = f"env {var}"

    def fetch(self) -> Token:
        value = _clean(os.environ.get(self.var, ""), self.description)
        return Token(value, token_expiry(value))


class FileTokenSource:
    """Re-reads the file only when it changed (mtime, size), else returns the cached token."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"file {path}"
        self._stamp: tuple[int, int] | None = None
        self._token: Token | None = None

    def fetch(self) -> Token:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if self._token is None or stamp != self._stamp:
                value = _clean(self.path.read_text(), self.description)
                self._token, self._stamp = Token(value, token_expiry(value)), stamp
        except OSError as exc:
            raise TokenError(f"cannot read {self.description}: {exc.strerror}") from exc
        return self._token

    def changed(self) -> bool:
        try:
            st = self.path.stat()
        except OSError:
            return True
        return (st.st_mtime_ns, st.st_size) != self._stamp


class CommandTokenSource:
    def __init__(self, command: str, *, lifespan_s: int, user: str, timeout_s: float = 30) -> None:
        self.argv = [
            part.replace("{lifespan}", str(lifespan_s)).replace("{user}", user)
            for part in shlex.split(command)
        ]
        if not self.argv:
            raise ConfigurationError("token.command is empty")
        self.timeout_s = timeout_s
        self.description = f"command {self.argv[0]}"

    def fetch(self) -> Token:
        try:
            done = subprocess.run(
                self.argv,
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TokenError(f"{self.description} failed: {exc}") from exc
        if done.returncode != 0:
            # stderr may explain; it does not contain the token (that goes to stdout)
            raise TokenError(
                f"{self.description} exited {done.returncode}: {done.stderr.strip()[-300:]}"
            )
        value = _clean(done.stdout, self.description)
        return Token(value, token_expiry(value))


class Hs256TokenSource:
    """Signs tokens with the cluster's key, as slurmctld's auth/jwt expects."""

    def __init__(
        self, *, user: str, lifespan_s: int, key: bytes, clock: Callable[[], float] = time.time
    ) -> None:
        if not key:
            raise ConfigurationError("token.source=hs256 needs token.key_file or token.key")
        self.user, self.lifespan_s, self._key, self._clock = user, lifespan_s, key, clock
        self.description = "hs256 signer"

    def fetch(self) -> Token:
        now = int(self._clock())
        exp = now + self.lifespan_s
        value = jwt.encode({"sun": self.user, "iat": now, "exp": exp}, self._key, "HS256")
        return Token(value, float(exp))


def make_source(settings: TokenSettings, *, user: str) -> TokenSource:
    if settings.source == "env":
        return EnvTokenSource(settings.env_var)
    if settings.source == "file":
        if settings.file is None:
            raise ConfigurationError("token.source=file needs token.file")
        return FileTokenSource(settings.file)
    if settings.source == "command":
        return CommandTokenSource(settings.command, lifespan_s=settings.lifespan_s, user=user)
    if settings.key is not None:
        text = settings.key.get_secret_value()
        # Slurm's jwt_hs256.key is usually binary: pass it as "base64:<...>" in a variable
        if text.startswith("base64:"):
            try:
                key = b64decode(text.removeprefix("base64:"), validate=True)
            except ValueError as exc:
                raise ConfigurationError("token.key: invalid base64 after 'base64:'") from exc
        else:
            key = text.encode()
    elif settings.key_file is not None:
        try:
            key = settings.key_file.read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"cannot read token.key_file: {exc.strerror}") from exc
    else:
        key = b""
    return Hs256TokenSource(user=user, lifespan_s=settings.lifespan_s, key=key)


FailureReporter = Callable[[str], Awaitable[None]]


class TokenManager:
    """The current token; refreshed early, on demand, and with backoff after failures."""

    def __init__(
        self,
        source: TokenSource,
        *,
        margin_s: float,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        on_failure: FailureReporter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.margin_s = margin_s
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.on_failure = on_failure
        self._clock = clock
        self._token: Token | None = None
        self._lock = asyncio.Lock()
        self._failures = 0
        self._not_before = 0.0
        self.refreshes = 0
        self.last_error: str | None = None

    def _fresh(self, token: Token | None) -> bool:
        if token is None:
            return False
        if isinstance(self.source, FileTokenSource) and self.source.changed():
            return False
        if token.expires_at is None:
            return True
        return self._clock() < token.expires_at - self._margin(token)

    def _margin(self, token: Token) -> float:
        """The refresh margin, at most a third of the token's lifetime (short-lived tokens)."""
        if token.expires_at is None:
            return self.margin_s
        lifetime = max(0.0, token.expires_at - token.fetched_at)
        return min(self.margin_s, lifetime / 3)

    def seconds_left(self) -> float | None:
        if self._token is None or self._token.expires_at is None:
            return None
        return self._token.expires_at - self._clock()

    async def get(self) -> str:
        """A token that is not about to expire. Raises TokenError when none can be had."""
        token = self._token
        if self._fresh(token):
            assert token is not None
            return token.value
        return await self.refresh(stale=token)

    async def invalidate(self, stale: str) -> str:
        """The server rejected ``stale``: get another (unless someone already did)."""
        token = self._token
        if token is not None and token.value != stale and self._fresh(token):
            return token.value
        return await self.refresh(stale=token, forced=True)

    async def refresh(self, *, stale: Token | None = None, forced: bool = False) -> str:
        async with self._lock:
            current = self._token
            if current is not None and current is not stale and self._fresh(current):
                return current.value
            wait = self._not_before - self._clock()
            if wait > 0:
                raise TokenError(
                    f"token refresh from {self.source.description} failing "
                    f"({self.last_error}); next try in {wait:.1f}s"
                )
            try:
                fetched_at = self._clock()
                token = await asyncio.to_thread(self.source.fetch)
                token = Token(token.value, token.expires_at, fetched_at)
                if token.expires_at is not None and token.expires_at <= self._clock():
                    raise TokenError(f"{self.source.description} gave an expired token")
                if forced and current is not None and token.value == current.value:
                    raise TokenError(f"{self.source.description} gave the rejected token again")
            except TokenError as exc:
                self._failures += 1
                self.last_error = str(exc)
                delay = min(self.backoff_max_s, self.backoff_s * 2 ** (self._failures - 1))
                self._not_before = self._clock() + delay
                log.warning("Slurm token refresh failed (%d in a row): %s", self._failures, exc)
                if self.on_failure is not None:
                    try:
                        await self.on_failure(str(exc))
                    except Exception:
                        log.exception("could not report the token failure")
                raise
            self._failures, self._not_before, self.last_error = 0, 0.0, None
            self._token = token
            self.refreshes += 1
            log.info(
                "Slurm token refreshed from %s (expires in %s s)",
                self.source.description,
                "?" if token.expires_at is None else int(token.expires_at - self._clock()),
            )
            return token.value

    async def keep_fresh(self, *, stop: asyncio.Event) -> None:
        """Background task: refresh ``margin_s`` before expiry; back off after failures."""
        while not stop.is_set():
            try:
                await self.get()
                left = self.seconds_left()
                token = self._token
                margin = self.margin_s if token is None else self._margin(token)
                sleep = 30.0 if left is None else max(0.2, left - margin)
            except TokenError:
                sleep = max(0.2, self._not_before - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(sleep, 30.0))
