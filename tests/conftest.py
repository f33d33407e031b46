"""Shared fixtures: the real local stack, a topic prefix and a database per test.

Integration tests never skip for a missing service: if Kafka or PostgreSQL
cannot be brought up by ``deploy/local/stack.sh up`` the test fails with the
script's output.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from runstream_common.settings import KafkaSettings
from support.kafka import delete_topics

REPO = Path(__file__).resolve().parents[1]
STACK = REPO / "deploy" / "local" / "stack.sh"


@dataclass(frozen=True)
class Stack:
    bootstrap_servers: str
    postgres_dsn: str


def _stack(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(STACK), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _parse_env(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export ") :]
        if "=" not in line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        parts = shlex.split(value)
        env[key.strip()] = parts[0] if parts else ""
    return env


@pytest.fixture(scope="session")
def stack() -> Stack:
    """Kafka + PostgreSQL from deploy/local, started if they are not running.

    The stack is left running afterwards (several test sessions may share it);
    ``./task test`` stops it at the end, ``./task infra:down`` does by hand.
    """
    if _stack("status", timeout=60).returncode != 0:
        up = _stack("up")
        if up.returncode != 0:
            pytest.fail(
                "could not start the local stack (deploy/local/stack.sh up):\n"
                + up.stdout[-4000:]
                + up.stderr[-4000:],
                pytrace=False,
            )
    env = _parse_env(_stack("env", timeout=60).stdout)
    info = Stack(
        bootstrap_servers=env["RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS"],
        postgres_dsn=env["RUNSTREAM_POSTGRES_DSN"],
    )
    os.environ["RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS"] = info.bootstrap_servers
    os.environ["RUNSTREAM_POSTGRES_DSN"] = info.postgres_dsn
    return info


@pytest.fixture
def topic_prefix() -> str:
    """A prefix no other test uses, so tests never see each other's messages."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def kafka_settings(stack: Stack, topic_prefix: str) -> Iterator[KafkaSettings]:
    """Kafka settings for the real local broker with this test's own topics.

    The test's topics are deleted afterwards: a whole run's leftovers would exhaust
    the broker's open files.
    """
    yield KafkaSettings(
        bootstrap_servers=stack.bootstrap_servers,
        topic_prefix=topic_prefix,
        client_id=f"test-{topic_prefix}",
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    delete_topics(stack.bootstrap_servers, topic_prefix)


@pytest.fixture
async def pg_dsn(stack: Stack) -> AsyncIterator[str]:
    """DSN of a fresh PostgreSQL database for this test, dropped afterwards."""
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(stack.postgres_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = stack.postgres_dsn.rpartition("/")
    yield f"{base}/{name}"
    # Services a test started may still hold connections for a moment; FORCE ends them.
    # A database that cannot be dropped now is only clutter: never fail the test for it.
    for attempt in range(5):
        admin = await asyncpg.connect(stack.postgres_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            break
        except asyncpg.PostgresError:
            await asyncio.sleep(0.5 * (attempt + 1))
        finally:
            await admin.close()


# ``./task test`` runs the suite with pytest-xdist (``--dist loadgroup``). Tests that share
# something expensive or exclusive run on one worker, one after another:
# - the gateway's tests against the real one-node Slurm share its two CPUs and its queue;
# - the DAMNIT tests share one session-wide system and DAMNIT's venv;
# - a web or security module starts its own system or broker once per module.
GROUPED_AREAS = {"slurm_gateway": "slurm", "damnit": "damnit"}
GROUPED_BY_MODULE = {"web", "security"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "unit" in item.keywords or not item.path.is_relative_to(REPO / "tests"):
            continue
        area = item.path.relative_to(REPO / "tests").parts[0]
        if area in GROUPED_AREAS:
            item.add_marker(pytest.mark.xdist_group(GROUPED_AREAS[area]))
        elif area in GROUPED_BY_MODULE:
            item.add_marker(pytest.mark.xdist_group(f"{area}/{item.path.name}"))
