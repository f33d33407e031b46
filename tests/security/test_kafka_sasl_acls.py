"""Kafka security for real: a broker of its own with SASL_SSL, SCRAM users and ACLs.

One broker per module (``deploy/local/kafka.sh start`` with
``RUNSTREAM_KAFKA_SECURITY=sasl_ssl``, its own state directory under /tmp and its
own ports; the shared broker on 29092 is never touched). Each test applies the ACL
table of ``runstream_common.acls`` for its own topic prefix as the admin user, then:

- the four services, each as its own SCRAM user, process a run end to end
  (facility event -> ingest -> executor -> a cluster job as the ``job`` user ->
  store -> PostgreSQL, the GUI feed, and DAMNIT's runs.sqlite and topic, which
  the store creates under its own ACLs); the web table, as the ``gui`` user, sends a
  browser's comment to the store and streams the store's answer back;
- clients without (valid) credentials are refused by the broker;
- a principal writing or reading a topic its ACLs do not name is refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError
from runstream_common import acls, parsers
from runstream_common.admin import ensure_topics
from runstream_common.errors import ConfigurationError
from runstream_common.messages import ValuesUpdated
from runstream_common.settings import KafkaSettings
from support.database import upgrade_async
from support.services import System

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO / "deploy" / "local" / "kafka.sh"
PROPOSAL = 4343

CONTEXT = """
from damnit_ctx import Variable

@Variable(title="Trains")
def n_trains(run):
    return len(run.train_ids)

@Variable(title="Heavy", cluster=True)
def heavy(run, n: "var#n_trains"):
    return n * 10
"""


def _free_port(taken: set[int]) -> int:
    """A free port below Linux's ephemeral range (see lib.sh's wait_port_free)."""
    while True:
        port = random.randint(21000, 28999)
        if port in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port


@dataclass
class SecureKafka:
    env: dict[str, str]  # kafka.sh env: protocol, CA, each service's user
    script_env: dict[str, str]  # what kafka.sh itself needs (state dir, ports, mode)
    log: Path

    @property
    def bootstrap(self) -> str:
        return self.env["RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS"]

    def password(self, user: str) -> str:
        done = _kafka_sh(self.script_env, "password", user)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def settings(self, prefix: str, user: str | None, **overrides: object) -> KafkaSettings:
        values: dict[str, object] = dict(
            bootstrap_servers=self.bootstrap,
            topic_prefix=prefix,
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username=user,
            sasl_password=self.password(user) if user else None,
            ssl_cafile=self.env["RUNSTREAM_KAFKA_SSL_CAFILE"],
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
        )
        values.update(overrides)
        return KafkaSettings(**values)  # type: ignore[arg-type]


def _kafka_sh(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(KAFKA_SH), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def secure_kafka() -> Iterator[SecureKafka]:
    state = Path(tempfile.mkdtemp(prefix="rs-sasl-", dir="/tmp"))
    taken: set[int] = set()
    cache = os.environ.get("RUNSTREAM_CACHE_DIR", str(REPO / ".cache"))
    script_env = {
        "RUNSTREAM_STATE_DIR": str(state),
        "RUNSTREAM_CACHE_DIR": cache,
        "RUNSTREAM_KAFKA_PORT": str(_free_port(taken)),
        "RUNSTREAM_KAFKA_CONTROLLER_PORT": str(_free_port(taken)),
        "RUNSTREAM_KAFKA_SECURITY": "sasl_ssl",
        "RUNSTREAM_KAFKA_HEAP_OPTS": "-Xms128m -Xmx512m",
    }
    started = _kafka_sh(script_env, "start")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        printed = _kafka_sh(script_env, "env")
        assert printed.returncode == 0, printed.stderr
        env = {}
        for line in printed.stdout.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = shlex.split(value)[0]
        yield SecureKafka(env, script_env, state / "kafka" / "server.log")
    finally:
        stopped = _kafka_sh(script_env, "stop")
        shutil.rmtree(state, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr


def installation(prefix: str, facility: str) -> acls.Installation:
    """The names the services of a test use (as tests/e2e: groups under the prefix)."""
    return acls.Installation(
        prefix=prefix,
        facility_topics=(facility,),
        ingest_group=f"{prefix}-ingest",
        ingest_transactional_id=f"{prefix}-ingest",
        store_group=f"{prefix}-store",
    )


def client_env(kafka: SecureKafka, inst: acls.Installation, user: str) -> dict[str, str]:
    """The environment of a `runstream` command run as ``user`` against this test's topics."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env.update({k: v for k, v in kafka.env.items() if k.startswith("RUNSTREAM_KAFKA_")})
    env.update(
        {
            "RUNSTREAM_KAFKA_SASL_USERNAME": user,
            "RUNSTREAM_KAFKA_SASL_PASSWORD": kafka.password(user),
            "RUNSTREAM_KAFKA_TOPIC_PREFIX": inst.prefix,
            "RUNSTREAM_INGEST_FACILITY_TOPICS": json.dumps(list(inst.facility_topics)),
            "RUNSTREAM_INGEST_GROUP_ID": inst.ingest_group,
            "RUNSTREAM_INGEST_TRANSACTIONAL_ID": inst.ingest_transactional_id,
            "RUNSTREAM_STORE_GROUP_ID": inst.store_group,
        }
    )
    return env


async def runstream(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "runstream.cli", *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture
async def secured(secure_kafka: SecureKafka, topic_prefix: str) -> acls.Installation:
    """This test's topics and ACLs, created by `runstream kafka acls --apply` as admin."""
    inst = installation(topic_prefix, f"{topic_prefix}.facility.daq")
    done = await runstream(client_env(secure_kafka, inst, acls.ADMIN), "kafka", "acls", "--apply")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"applied {len(acls.grants(inst))} ACLs for prefix {topic_prefix!r}" in done.stdout
    return inst


async def produce(settings: KafkaSettings, topic: str, value: bytes = b"{}") -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        request_timeout_ms=10_000,
        **settings.security_kwargs(),
    )
    try:
        await asyncio.wait_for(producer.start(), 30)
        await asyncio.wait_for(producer.send_and_wait(topic, value), 30)
    finally:
        await producer.stop()


def refusals(log: Path, since: int) -> str:
    return log.read_text(errors="replace")[since:]


# ------------------------------------------------------------------ the pipeline


def service_env(
    kafka: SecureKafka, inst: acls.Installation, dsn: str, logs: Path
) -> dict[str, str]:
    prefix = inst.prefix
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env.update(kafka.env)  # every service its own SCRAM user; the job user for cluster jobs
    env.update(
        {
            "RUNSTREAM_KAFKA_TOPIC_PREFIX": prefix,
            "RUNSTREAM_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "RUNSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
            "RUNSTREAM_POSTGRES_DSN": dsn,
            "RUNSTREAM_INGEST_FACILITY_TOPICS": json.dumps(list(inst.facility_topics)),
            "RUNSTREAM_INGEST_GROUP_ID": inst.ingest_group,
            "RUNSTREAM_INGEST_TRANSACTIONAL_ID": inst.ingest_transactional_id,
            "RUNSTREAM_INGEST_SETTLE_S": "0",
            "RUNSTREAM_STORE_GROUP_ID": inst.store_group,
            "RUNSTREAM_STORE_FRAGMENT_WAIT_S": "5",
            "RUNSTREAM_EXECUTOR_WORKERS": "1",
            "RUNSTREAM_EXECUTOR_VARIABLE_TIMEOUT_S": "120",
            "RUNSTREAM_SLURM_GATEWAY_BACKEND": "local",
            "RUNSTREAM_SLURM_GATEWAY_LOCAL__JOURNAL_DIR": str(logs / "gateway-journal"),
            "RUNSTREAM_SLURM_GATEWAY_SETTINGS_WAIT_S": "0",
            "RUNSTREAM_WEB_PORT": "0",  # any free port; the URL is logged
            "PYTHONUNBUFFERED": "1",
        }
    )
    # The shared RUNSTREAM_KAFKA_SASL_* of kafka.sh env are the operator's: no service uses them.
    for key in ("RUNSTREAM_KAFKA_SASL_USERNAME", "RUNSTREAM_KAFKA_SASL_PASSWORD"):
        env.pop(key)
    return env


def make_run(proposal_dir: Path, run: int) -> None:
    from extra_data.tests.make_examples import make_fxe_da_file

    raw = proposal_dir / "raw" / f"r{run:04d}"
    raw.mkdir(parents=True)
    make_fxe_da_file(str(raw / f"RAW-R{run:04d}-DA01-S00000.h5"))
    old = time.time() - 3600
    for path in raw.iterdir():
        os.utime(path, (old, old))


async def stored(dsn: str) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT name, value_int, value_float FROM run_values WHERE proposal = $1", PROPOSAL
        )
    finally:
        await conn.close()
    return {r["name"]: r["value_int"] if r["value_int"] is not None else r["value_float"]
            for r in rows}  # fmt: skip


async def damnit_announced(dsn: str, settings: KafkaSettings, timeout: float) -> set[int]:
    """The runs the store announced on its DAMNIT topic (which it created itself)."""
    deadline = time.monotonic() + timeout
    db_id = None
    while db_id is None and time.monotonic() < deadline:
        conn = await asyncpg.connect(dsn)
        try:
            db_id = await conn.fetchval(
                "SELECT db_id FROM damnit_projections WHERE proposal = $1", PROPOSAL
            )
        finally:
            await conn.close()
        await asyncio.sleep(0.5)
    assert db_id is not None, "the store made no DAMNIT database"
    consumer = AIOKafkaConsumer(
        f"test.damnit.db-{db_id}",
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **settings.security_kwargs(),
    )
    await consumer.start()
    runs: set[int] = set()
    try:
        while 1 not in runs and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    message = json.loads(record.value)
                    if message["msg_kind"] == "run_values_updated":
                        runs.add(message["data"]["run"])
    finally:
        await consumer.stop()
    return runs


def web_url(log: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"runstream web serving (http://\S+)", log.read_text(errors="replace"))
        if found:
            return found.group(1)
        time.sleep(0.2)
    raise AssertionError(f"the web service logged no URL:\n{log.read_text(errors='replace')}")


async def web_comment_round_trip(url: str, text: str, timeout: float) -> bytes:
    """A browser's comment through the web table: posted, then seen on its event stream."""
    events = f"{url}api/proposals/{PROPOSAL}/events"
    seen = b""
    async with (
        httpx.AsyncClient(timeout=timeout) as client,
        client.stream("GET", events) as stream,
    ):
        assert stream.status_code == 200
        posted = await client.post(
            f"{url}api/proposals/{PROPOSAL}/runs/1/comment",
            json={"text": text},
            headers={"X-Requested-With": "runstream"},
        )
        assert posted.status_code == 202, posted.text
        async with asyncio.timeout(timeout):
            async for chunk in stream.aiter_bytes():
                seen += chunk
                if text.encode() in seen:
                    break
    return seen


async def feed_values(settings: KafkaSettings, wanted: set[str], timeout: float) -> set[str]:
    """Follow the GUI feed (as the gui user) until ``wanted`` variables were updated."""
    consumer = AIOKafkaConsumer(
        settings.topics.updates,
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **settings.security_kwargs(),
    )
    await consumer.start()
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + timeout
        while not wanted <= seen and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    update = parsers.UPDATES.parse(record.value)
                    if isinstance(update, ValuesUpdated):
                        seen |= set(update.values)
    finally:
        await consumer.stop()
    return seen


@pytest.mark.timeout(300)
async def test_pipeline_runs_over_sasl_ssl_with_each_service_as_its_own_user(
    secure_kafka: SecureKafka, secured: acls.Installation, pg_dsn: str, tmp_path: Path
) -> None:
    await upgrade_async(pg_dsn)
    proposal_dir = tmp_path / "data" / f"p{PROPOSAL:06d}"
    context_dir = tmp_path / "usr"
    context_dir.mkdir(parents=True)
    (context_dir / "context.py").write_text(textwrap.dedent(CONTEXT))
    make_run(proposal_dir, 1)
    logs = tmp_path / "logs"
    logs.mkdir()
    system = System(env=service_env(secure_kafka, secured, pg_dsn, logs), log_dir=logs)

    prefix = secured.prefix
    register = ("proposal", "add", str(PROPOSAL), "--context-dir", str(context_dir),
                "--data-root", str(proposal_dir))  # fmt: skip
    # A scientist may not register a proposal (it decides which code runs); the operator may.
    refused = await runstream(client_env(secure_kafka, secured, acls.USER), *register)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "TopicAuthorizationFailed" in refused.stderr
    added = await runstream(client_env(secure_kafka, secured, acls.OPERATOR), *register)
    assert added.returncode == 0, added.stdout + added.stderr
    await system.start()
    await system.start("web")
    try:
        event = {"event": "migration_complete", "proposal": PROPOSAL, "run": 1}
        facility = secure_kafka.settings(prefix, acls.FACILITY)
        await produce(facility, secured.facility_topics[0], json.dumps(event).encode())

        deadline = time.monotonic() + 180
        values: dict[str, float] = {}
        while time.monotonic() < deadline and not {"n_trains", "heavy"} <= set(values):
            await asyncio.sleep(0.5)
            values = await stored(pg_dsn)
        assert values == {"n_trains": 400, "heavy": 4000}, system.logs()
        gui = secure_kafka.settings(prefix, acls.GUI)
        assert {"n_trains", "heavy"} <= await feed_values(gui, {"n_trains", "heavy"}, 60)
        # DAMNIT's GUIs: the store keeps runs.sqlite and announces on a topic it created.
        admin = secure_kafka.settings(prefix, acls.ADMIN)
        assert 1 in await damnit_announced(pg_dsn, admin, 60), system.logs()
        assert (context_dir / "runs.sqlite").is_file()
        # A scientist's command goes to the store and its answer comes back on the feed.
        user = client_env(secure_kafka, secured, acls.USER)
        commented = await runstream(user, "comment", str(PROPOSAL), "1", "over TLS", "--wait", "30")
        assert commented.returncode == 0, commented.stdout + commented.stderr
        assert "comment of p4343 r1 set" in commented.stdout
        # The web table (Kafka user gui): a browser's comment goes out as a command, and
        # the store's update comes back on the page's event stream.
        url = web_url(system.procs["web"].log)
        assert b"from the browser" in await web_comment_round_trip(url, "from the browser", 60)
    finally:
        system.stop()
    # Every service ran as itself: the broker's log names each principal it authenticated.
    for name in ("ingest", "executor", "store", "slurm-gateway", "web"):
        assert system.procs[name].starts == 1
    working = [f"User:{p} " for p in acls.PRINCIPALS if p != acls.USER]  # user was refused above
    denied = [line for line in secure_kafka.log.read_text(errors="replace").splitlines()
              if "is Denied operation" in line and (prefix in line or "damnit.db-" in line)
              and any(p in line for p in working)]  # fmt: skip
    assert denied == [], "the services needed more than their ACLs:\n" + "\n".join(denied[:10])


# ------------------------------------------------------------------ refusals


async def test_clients_without_valid_credentials_are_refused(
    secure_kafka: SecureKafka, secured: acls.Installation
) -> None:
    topic = secured.topics.results
    since = len(secure_kafka.log.read_text(errors="replace"))
    attempts = {
        "TLS, no SASL": secure_kafka.settings(
            secured.prefix, None, security_protocol="SSL", sasl_mechanism=None
        ),
        "wrong password": secure_kafka.settings(
            secured.prefix, None, sasl_username=acls.EXECUTOR, sasl_password="not-the-password-1"
        ),
        "no such user": secure_kafka.settings(
            secured.prefix, None, sasl_username="intruder", sasl_password="a-long-guess-12345"
        ),
        "plaintext": secure_kafka.settings(
            secured.prefix, None, security_protocol="PLAINTEXT", sasl_mechanism=None
        ),
    }
    for what, settings in attempts.items():
        with pytest.raises(Exception) as refused:  # noqa: PT011 - aiokafka says "cannot bootstrap"
            await produce(settings, topic)
        assert "TopicAuthorization" not in type(refused.value).__name__, what

    # The broker saw and refused each of them (not a network failure on our side) ...
    await asyncio.sleep(0.5)
    log = refusals(secure_kafka.log, since)
    failed = [line for line in log.splitlines() if "Failed authentication" in line]
    assert sum("invalid credentials with SASL mechanism SCRAM-SHA-512" in f for f in failed) >= 2
    assert any("SSL handshake failed" in f for f in failed), "the plaintext client"
    # ... and nothing reached the topic.
    admin = secure_kafka.settings(secured.prefix, "admin")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=admin.bootstrap_servers, enable_auto_commit=False,
        **admin.security_kwargs(),
    )  # fmt: skip
    await consumer.start()
    try:
        from aiokafka import TopicPartition

        parts = [TopicPartition(topic, p) for p in range(admin.topic_partitions)]
        assert sum((await consumer.end_offsets(parts)).values()) == 0
    finally:
        await consumer.stop()


async def test_principals_are_refused_topics_and_groups_outside_their_acls(
    secure_kafka: SecureKafka, secured: acls.Installation
) -> None:
    t = secured.topics
    prefix = secured.prefix
    since = len(secure_kafka.log.read_text(errors="replace"))
    executor = secure_kafka.settings(prefix, acls.EXECUTOR)
    await produce(executor, t.results)  # allowed: the positive control

    refused_writes = [
        (acls.EXECUTOR, t.updates),  # only the store feeds GUIs
        (acls.EXECUTOR, t.proposals),  # registering a proposal chooses which code runs
        (acls.USER, t.proposals),  # scientists may not register proposals either
        (acls.STORE, t.runs),  # only ingest asks for runs to be processed
        (acls.JOB, t.job_requests),  # a cluster job cannot start more jobs
        (acls.FACILITY, t.runs),
        (acls.GUI, t.proposal_settings),
    ]
    for user, topic in refused_writes:
        assert not acls.may(secured, user, "WRITE", topic)
        with pytest.raises(TopicAuthorizationFailedError):
            await produce(secure_kafka.settings(prefix, user), topic)

    # Reading: the executor may not read user commands; nobody joins another's group.
    consumer = AIOKafkaConsumer(
        t.commands, bootstrap_servers=executor.bootstrap_servers, group_id=secured.store_group,
        auto_offset_reset="earliest", enable_auto_commit=False, **executor.security_kwargs(),
    )  # fmt: skip

    async def read_commands() -> None:
        await asyncio.wait_for(consumer.start(), 30)
        await asyncio.wait_for(consumer.getmany(timeout_ms=5000), 30)

    try:
        with pytest.raises((TopicAuthorizationFailedError, GroupAuthorizationFailedError)):
            await read_commands()
    finally:
        await consumer.stop()

    # A service may not create topics: a missing one stops it with what to do.
    with pytest.raises(ConfigurationError, match="runstream kafka acls --apply"):
        await ensure_topics(executor, [f"{prefix}.not-provisioned"], with_dlq=False)

    # The broker's authorizer logged each refused write (the facility, which may not even
    # see runstream's topics, is refused their metadata already).
    denied = refusals(secure_kafka.log, since).splitlines()
    for user, topic in refused_writes:
        if acls.may(secured, user, "DESCRIBE", topic):
            wanted = f"Principal = User:{user} is Denied operation = WRITE"
            assert any(wanted in line and f"Topic:LITERAL:{topic} " in line for line in denied)
