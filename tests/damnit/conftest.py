"""DAMNIT 0.4's own GUI and API against runstream's real services.

DAMNIT is never imported here: ``deploy/local/damnit-client.sh install`` builds its venv
(once; cached under RUNSTREAM_CACHE_DIR) and the tests run small scripts
(``tests/damnit/scripts/``) with that venv's python, as a scientist would run DAMNIT.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from runstream_common.admin import ensure_topics
from runstream_common.settings import KafkaSettings
from support.database import upgrade_async
from support.kafka import delete_topics
from support.registry import register_proposal
from support.services import System

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "scripts"
CLIENT = REPO / "deploy" / "local" / "damnit-client.sh"
PROPOSAL = 3100
ARTIFACTS = (
    Path(os.environ.get("RUNSTREAM_STATE_DIR", str(REPO / ".state"))) / "artifacts"
)  # git-ignored; the GUI test's screenshot goes here


@pytest.fixture(scope="session")
def damnit_python() -> Path:
    """DAMNIT 0.4.0's interpreter (installed by the set-up script if missing; never skipped)."""
    done = subprocess.run(
        ["bash", str(CLIENT), "install"], capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"could not install DAMNIT's client:\n{done.stdout}\n{done.stderr}")
    where = subprocess.run(
        ["bash", str(CLIENT), "python"], capture_output=True, text=True, check=True
    )
    return Path(where.stdout.strip())


def run_damnit(
    python: Path, script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> Any:
    """Run ``scripts/<script>`` in DAMNIT's venv; its last stdout line is JSON."""
    done = subprocess.run(
        [str(python), str(SCRIPTS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"{script} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


def make_run_files(root: Path, proposal_dir: Path, runs: range | list[int]) -> None:
    """Mock European XFEL runs (EXtra-data's own mock files) under raw/ and proc/."""
    template = root / "template.h5"
    if not template.exists():
        from extra_data.tests.make_examples import make_fxe_da_file

        make_fxe_da_file(str(template))
    old = time.time() - 3600
    for run in runs:
        for kind, prefix in (("raw", "RAW"), ("proc", "CORR")):
            dest = proposal_dir / kind / f"r{run:04d}" / f"{prefix}-R{run:04d}-DA01-S00000.h5"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(template, dest)
            os.utime(dest, (old, old))


@dataclass
class DamnitStack:
    """runstream's services for one proposal whose context folder DAMNIT's tools open."""

    system: System
    kafka: KafkaSettings
    dsn: str
    root: Path
    proposal_dir: Path
    context_dir: Path
    raw_topic: str
    python: Path
    env: dict[str, str]
    proposal: int = PROPOSAL

    @property
    def sqlite(self) -> Path:
        return self.context_dir / "runs.sqlite"

    def make_runs(self, runs: range | list[int]) -> None:
        make_run_files(self.root, self.proposal_dir, runs)

    def send_events(self, runs: range | list[int], event: str = "migration_complete") -> None:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.kafka.bootstrap_servers, "acks": "all"})
        for run in runs:
            body = json.dumps({"event": event, "proposal": self.proposal, "run": run})
            producer.produce(self.raw_topic, body.encode(), key=f"{self.proposal}/{run}".encode())
        assert producer.flush(30) == 0

    async def process(self, runs: range | list[int], timeout: float = 90) -> None:
        """Send the runs' facility events until runstream knows the runs.

        Ingest ignores events of a proposal whose registration it has not read yet (a
        registration moments ago, on services that already run): such events are sent
        again; ingest de-duplicates the ones it took.
        """
        wanted = set(runs)
        deadline = time.monotonic() + timeout
        while True:
            known = await self._known_runs()
            missing = sorted(wanted - known)
            if not missing:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"runs {missing} never reached runstream\n{self.system.logs()}"
                )
            self.send_events(missing)
            for _ in range(12):
                await asyncio.sleep(0.25)
                if wanted <= await self._known_runs():
                    return

    async def _known_runs(self) -> set[int]:
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch("SELECT run FROM runs WHERE proposal = $1", self.proposal)
        finally:
            await conn.close()
        return {r["run"] for r in rows}

    def damnit(self, script: str, *args: str, timeout: float = 180, **env: str) -> Any:
        base = {"AMORE_BROKER": self.kafka.bootstrap_servers, "HOME": str(self.root / "home")}
        return run_damnit(self.python, script, *args, env={**base, **env}, timeout=timeout)

    def runstream(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runstream.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )

    def db_id(self) -> str:
        conn = sqlite3.connect(f"file:{self.sqlite}?mode=ro", uri=True)
        try:
            return str(conn.execute("SELECT value FROM metameta WHERE key='db_id'").fetchone()[0])
        finally:
            conn.close()

    async def values(self) -> dict[tuple[int, str], asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch("SELECT * FROM run_values WHERE proposal = $1", self.proposal)
        finally:
            await conn.close()
        return {(r["run"], r["name"]): r for r in rows}

    async def wait_for(
        self, check: Callable[[], Awaitable[Any]], what: str, timeout: float = 240
    ) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = await check()
            if last:
                return last
            await asyncio.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}\n{self.system.logs()}")

    def sqlite_runs(self) -> dict[int, set[str]]:
        """Runs in runs.sqlite and the names with values there (a fresh read-only look)."""
        if not self.sqlite.exists():
            return {}
        conn = sqlite3.connect(f"file:{self.sqlite}?mode=ro", uri=True, timeout=10)
        try:
            out: dict[int, set[str]] = {
                r[0]: set() for r in conn.execute("SELECT run FROM run_info")
            }
            for run, name in conn.execute("SELECT run, name FROM run_variables"):
                out.setdefault(run, set()).add(name)
            return out
        except sqlite3.OperationalError:
            return {}
        finally:
            conn.close()

    async def wait_projected(self, runs: range | list[int], names: tuple[str, ...]) -> None:
        async def done() -> bool:
            have = self.sqlite_runs()
            return all(set(names) <= have.get(r, set()) for r in runs)

        await self.wait_for(done, f"runs {list(runs)} in {self.sqlite}")


def service_env(kafka: KafkaSettings, dsn: str, raw_topic: str, logs: Path) -> dict[str, str]:
    prefix = kafka.topic_prefix
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env.update(
        {
            "RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "RUNSTREAM_KAFKA_TOPIC_PREFIX": prefix,
            "RUNSTREAM_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "RUNSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
            "RUNSTREAM_POSTGRES_DSN": dsn,
            "RUNSTREAM_INGEST_FACILITY_TOPICS": json.dumps([raw_topic, f"{prefix}.facility.cal"]),
            "RUNSTREAM_INGEST_GROUP_ID": f"{prefix}-ingest",
            "RUNSTREAM_INGEST_TRANSACTIONAL_ID": f"{prefix}-ingest",
            "RUNSTREAM_INGEST_SETTLE_S": "0",
            "RUNSTREAM_STORE_GROUP_ID": f"{prefix}-store",
            "RUNSTREAM_STORE_FRAGMENT_WAIT_S": "5",
            "RUNSTREAM_STORE_DAMNIT__RECONCILE_INTERVAL_S": "3",
            "RUNSTREAM_STORE_DAMNIT__RETRY_MAX_S": "2",
            "RUNSTREAM_EXECUTOR_WORKERS": "2",
            "RUNSTREAM_EXECUTOR_VARIABLE_TIMEOUT_S": "120",
            # every processing state, however short the pass (DAMNIT's RUNNING is checked)
            "RUNSTREAM_EXECUTOR_PROGRESS_AFTER_S": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


async def register(kafka: KafkaSettings, proposal: int, context_dir: Path, data: Path) -> None:
    await register_proposal(kafka, proposal, context_dir, data)


async def migrate(dsn: str) -> None:
    await upgrade_async(dsn)


@pytest.fixture
async def make_stack(
    kafka_settings: KafkaSettings, pg_dsn: str, tmp_path: Path, damnit_python: Path
) -> AsyncIterator[Callable[..., Awaitable[DamnitStack]]]:
    """A factory: ``await make_stack(context)`` -> services started, proposal registered."""
    systems: list[System] = []

    async def make(context: str, *, proposal: int = PROPOSAL, start: bool = True) -> DamnitStack:
        await migrate(pg_dsn)
        raw_topic = f"{kafka_settings.topic_prefix}.facility.daq"
        proposal_dir = tmp_path / "data" / f"p{proposal:06d}"
        context_dir = tmp_path / "usr" / "Shared" / "amore"
        context_dir.mkdir(parents=True, exist_ok=True)
        if context:
            (context_dir / "context.py").write_text(textwrap.dedent(context))
        logs = tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        (tmp_path / "home").mkdir(exist_ok=True)
        env = service_env(kafka_settings, pg_dsn, raw_topic, logs)
        await ensure_topics(
            kafka_settings, [raw_topic, f"{kafka_settings.topic_prefix}.facility.cal"]
        )
        system = System(env=env, log_dir=logs)
        systems.append(system)
        stack = DamnitStack(
            system, kafka_settings, pg_dsn, tmp_path, proposal_dir, context_dir, raw_topic,
            damnit_python, env, proposal,
        )  # fmt: skip
        if context:
            await register(kafka_settings, proposal, context_dir, proposal_dir)
        if start:
            await system.start("store", "executor", "ingest")
        return stack

    try:
        yield make
    finally:
        for system in systems:
            system.stop()


@dataclass
class Shared:
    """One set of services (store, executor, ingest) for several proposals of a session."""

    system: System
    kafka: KafkaSettings
    dsn: str
    env: dict[str, str]
    raw_topic: str


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def shared(
    stack: Any, damnit_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Shared]:
    """The services once for the tests that can share them (each has its own proposal):
    starting them is a good part of each test's time."""
    import uuid

    prefix = f"t{uuid.uuid4().hex[:12]}"
    kafka = KafkaSettings(
        bootstrap_servers=stack.bootstrap_servers,
        topic_prefix=prefix,
        client_id=f"test-{prefix}",
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(stack.postgres_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = f"{stack.postgres_dsn.rpartition('/')[0]}/{name}"
    await migrate(dsn)
    logs = tmp_path_factory.mktemp("damnit-shared-logs")
    raw_topic = f"{prefix}.facility.daq"
    env = service_env(kafka, dsn, raw_topic, logs)
    await ensure_topics(kafka, [raw_topic, f"{prefix}.facility.cal"])
    system = System(env=env, log_dir=logs)
    await system.start("store", "executor", "ingest")
    try:
        yield Shared(system, kafka, dsn, env, raw_topic)
    finally:
        system.stop()
        delete_topics(stack.bootstrap_servers, prefix)
        admin = await asyncpg.connect(stack.postgres_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except asyncpg.PostgresError:
            pass
        finally:
            await admin.close()


@pytest_asyncio.fixture(loop_scope="session")
async def shared_stack(
    shared: Shared, tmp_path: Path, damnit_python: Path
) -> Callable[..., Awaitable[DamnitStack]]:
    """A factory: ``await shared_stack(context, proposal)`` -> a proposal on the shared services."""

    async def make(context: str, proposal: int) -> DamnitStack:
        proposal_dir = tmp_path / "data" / f"p{proposal:06d}"
        context_dir = tmp_path / "usr" / "Shared" / "amore"
        context_dir.mkdir(parents=True, exist_ok=True)
        (tmp_path / "home").mkdir(exist_ok=True)
        (tmp_path / "logs").mkdir(exist_ok=True)
        if context:
            (context_dir / "context.py").write_text(textwrap.dedent(context))
            await register(shared.kafka, proposal, context_dir, proposal_dir)
        return DamnitStack(
            shared.system, shared.kafka, shared.dsn, tmp_path, proposal_dir, context_dir,
            shared.raw_topic, damnit_python, shared.env, proposal,
        )  # fmt: skip

    return make
