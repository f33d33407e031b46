"""Token sources and the refresh policy (fake clock, no network)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jwt
import pytest
from runstream_slurm_gateway.settings import TokenSettings
from runstream_slurm_gateway.tokens import (
    CommandTokenSource,
    EnvTokenSource,
    FileTokenSource,
    Hs256TokenSource,
    Token,
    TokenError,
    TokenManager,
    make_source,
    token_expiry,
)

pytestmark = pytest.mark.unit

KEY = b"k" * 32


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def signed(exp: float, sun: str = "slurmtest") -> str:
    return jwt.encode({"sun": sun, "iat": int(exp) - 100, "exp": int(exp)}, KEY, "HS256")


def test_hs256_claims_verify_with_the_key() -> None:
    clock = Clock()
    token = Hs256TokenSource(user="alice", lifespan_s=300, key=KEY, clock=clock).fetch()
    claims = jwt.decode(token.value, KEY, algorithms=["HS256"], options={"verify_exp": False})
    assert claims == {"sun": "alice", "iat": 1_000_000, "exp": 1_000_300}
    assert token.expires_at == 1_000_300
    assert "eyJ" not in repr(token)  # never printed


def test_env_and_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_JWT", "SLURM_JWT=" + signed(2_000_000))
    token = EnvTokenSource("MY_JWT").fetch()
    assert token_expiry(token.value) == 2_000_000
    assert not token.value.startswith("SLURM_JWT")
    monkeypatch.setenv("MY_JWT", "not a token")
    with pytest.raises(TokenError):
        EnvTokenSource("MY_JWT").fetch()


def test_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "jwt"
    path.write_text(signed(2_000_000) + "\n")
    source = FileTokenSource(path)
    first = source.fetch()
    assert not source.changed()
    path.write_text(signed(3_000_000) + "\n\n")
    os.utime(path, ns=(1, 1))
    assert source.changed()
    assert source.fetch().expires_at == 3_000_000 != first.expires_at
    path.unlink()
    with pytest.raises(TokenError):
        source.fetch()


def test_command_source_substitutes_and_strips(tmp_path: Path) -> None:
    script = tmp_path / "mint"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nprint('SLURM_JWT=' + {signed(2_000_000)!r})\nprint(sys.argv[1:], file=sys.stderr)\n"
    )
    script.chmod(0o755)
    source = CommandTokenSource(
        f"{script} lifespan={{lifespan}} user={{user}}", lifespan_s=7, user="bob"
    )
    assert source.argv[1:] == ["lifespan=7", "user=bob"]
    assert source.fetch().expires_at == 2_000_000
    failing = CommandTokenSource("false", lifespan_s=7, user="bob")
    with pytest.raises(TokenError):
        failing.fetch()


def test_make_source_needs_its_settings(tmp_path: Path) -> None:
    from runstream_common.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        make_source(TokenSettings(source="file"), user="u")
    with pytest.raises(ConfigurationError):
        make_source(TokenSettings(source="hs256"), user="u")
    import base64

    from pydantic import SecretStr

    binary = bytes(range(256))[:32]
    inline = make_source(
        TokenSettings(source="hs256", key=SecretStr("base64:" + base64.b64encode(binary).decode())),
        user="u",
    )
    assert jwt.decode(inline.fetch().value, binary, algorithms=["HS256"])["sun"] == "u"
    with pytest.raises(ConfigurationError):
        make_source(TokenSettings(source="hs256", key=SecretStr("base64:!!")), user="u")
    key = tmp_path / "key"
    key.write_bytes(KEY)
    source = make_source(TokenSettings(source="hs256", key_file=key, lifespan_s=60), user="u")
    assert jwt.decode(source.fetch().value, KEY, algorithms=["HS256"])["sun"] == "u"


class Counting:
    description = "test source"

    def __init__(self, clock: Clock, lifespan: float) -> None:
        self.clock, self.lifespan = clock, lifespan
        self.calls = 0
        self.fail = False

    def fetch(self) -> Token:
        self.calls += 1
        if self.fail:
            raise TokenError("minting is broken")
        exp = self.clock.now + self.lifespan
        return Token(signed(exp, sun=f"u{self.calls}"), exp)


async def test_refreshed_before_expiry_not_on_every_call() -> None:
    clock = Clock()
    source = Counting(clock, lifespan=600)
    manager = TokenManager(source, margin_s=60, clock=clock)
    first = await manager.get()
    clock.now += 500
    assert await manager.get() == first
    assert source.calls == 1
    clock.now += 45  # 55 s left < 60 s margin
    assert await manager.get() != first
    assert source.calls == 2


async def test_short_lived_tokens_use_a_third_of_their_life_as_margin() -> None:
    clock = Clock()
    source = Counting(clock, lifespan=6)
    manager = TokenManager(source, margin_s=60, clock=clock)
    first = await manager.get()
    clock.now += 3
    assert await manager.get() == first  # 3 s left > 2 s (a third of 6)
    clock.now += 1.5
    assert await manager.get() != first


async def test_invalidate_refreshes_once_for_concurrent_callers() -> None:
    clock = Clock()
    source = Counting(clock, lifespan=600)
    manager = TokenManager(source, margin_s=60, clock=clock)
    stale = await manager.get()
    fresh = await manager.invalidate(stale)
    assert fresh != stale
    assert await manager.invalidate(stale) == fresh  # a second caller with the same stale token
    assert source.calls == 2


async def test_failures_are_reported_and_backed_off() -> None:
    clock = Clock()
    source = Counting(clock, lifespan=600)
    reported: list[str] = []

    async def report(text: str) -> None:
        reported.append(text)

    manager = TokenManager(source, margin_s=60, backoff_s=2, on_failure=report, clock=clock)
    source.fail = True
    with pytest.raises(TokenError):
        await manager.get()
    with pytest.raises(TokenError, match="next try"):
        await manager.get()  # inside the backoff window: the source is not asked
    assert source.calls == 1
    assert reported == ["minting is broken"]
    clock.now += 2.1
    with pytest.raises(TokenError):
        await manager.get()
    assert source.calls == 2
    clock.now += 3  # second backoff is 4 s
    with pytest.raises(TokenError, match="next try"):
        await manager.get()
    source.fail = False
    clock.now += 1.1
    assert await manager.get()
    assert manager.last_error is None
    assert len(reported) == 2
