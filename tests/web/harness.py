"""A whole runstream system (the five services as real processes) for the browser tests.

One system per test module: its own topic prefix, database, facility topics and
folders. The demo's context file (deploy/demo/context.py) plus one variable
whose value is markup, mock European XFEL runs from EXtra-data's helpers, the
local workload backend for the cluster variable. The web service listens on a
free port and logs its URL, which the harness reads back from its log.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from runstream_common.admin import ensure_topics
from runstream_common.kafka import make_broker, publish
from runstream_common.messages import DefineUserVariable, ProposalRegistered
from runstream_common.settings import KafkaSettings
from runstream_common.topics import proposal_key
from support.database import upgrade
from support.kafka import topic_counts
from support.services import System

REPO = Path(__file__).resolve().parents[2]
PROPOSAL = 9999
MARKUP = "<script>window.__pwned = 1</script><b>not bold</b>"
EXTRA_CONTEXT = f'''

import xarray as xr


@Variable(title="Run note")
def note(run):
    """A string that looks like markup: the page must show it as text."""
    return {MARKUP!r}


@Variable(title="Detector/Flag")
def flag(run, number: "meta#run_number"):
    """A cell with a background colour, as the context asks."""
    return Cell("ok" if number % 2 else "check", background="#ffd966" if number % 2 else None)


@Variable(title="Detector/Rings")
def rings(run, number: "meta#run_number"):
    """A 2-D pattern that changes with the run: a thumbnail and an image."""
    y, x = np.mgrid[-64:64, -96:96]
    r = np.hypot(x, y)
    return np.cos(r / (2 + number)) * np.exp(-r / 70)


@Variable(title="Detector/Spectrum", summary="max", units="counts")
def spectrum(run, number: "meta#run_number"):
    """A 1-D xarray with an energy axis: the table shows its maximum."""
    energy = np.linspace(7000.0, 7100.0, 400)
    counts = 100 * np.exp(-(((energy - 7030 - 10 * number) / 6) ** 2)) + 5 * np.sin(energy / 3)
    return xr.DataArray(counts, dims=["energy"], coords={{"energy": energy}})
'''
# the demo's values (raw pass and cluster job) plus the markup string; camera_peak is proc
EXPECTED = (
    "xgm_intensity", "n_trains", "energy_per_train", "camera_image", "label", "broken",
    "column_profile", "note", "rings", "spectrum", "flag",
)  # fmt: skip
URL_LINE = re.compile(r"runstream web serving (http://\S+)")
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from synchronous code.

    In a thread of its own: Playwright's synchronous API keeps an event loop
    running in the test's thread, where asyncio.run() is refused.
    """
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass
class WebSystem:
    system: System
    kafka: KafkaSettings
    dsn: str
    root: Path
    proposal_dir: Path
    context_dir: Path
    raw_topic: str
    proc_topic: str
    url: str = ""

    # ------------------------------------------------------------- facility
    def make_runs(self, runs: range) -> None:
        template = self.root / "template.h5"
        if not template.exists():
            from extra_data.tests.make_examples import make_fxe_da_file

            make_fxe_da_file(str(template))
        old = time.time() - 3600
        for run in runs:
            for kind, prefix in (("raw", "RAW"), ("proc", "CORR")):
                dest = (
                    self.proposal_dir / kind / f"r{run:04d}" / f"{prefix}-R{run:04d}-DA01-S00000.h5"
                )
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(template, dest)
                os.utime(dest, (old, old))

    def send_events(self, runs: range, event: str = "migration_complete") -> None:
        """Facility events from an independent client, as the facility sends them."""
        from confluent_kafka import Producer

        topic = self.raw_topic if event == "migration_complete" else self.proc_topic
        producer = Producer({"bootstrap.servers": self.kafka.bootstrap_servers, "acks": "all"})
        for run in runs:
            body = {"event": event, "proposal": PROPOSAL, "run": run}
            producer.produce(topic, json.dumps(body).encode(), key=f"{PROPOSAL}/{run}")
        assert producer.flush(30) == 0

    # ------------------------------------------------------------- database
    def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async def go() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.dsn)
            try:
                return list(await conn.fetch(sql, *args))
            finally:
                await conn.close()

        return run(go())

    def values(self) -> dict[tuple[int, str], asyncpg.Record]:
        rows = self.query("SELECT * FROM run_values WHERE proposal = $1", PROPOSAL)
        return {(r["run"], r["name"]): r for r in rows}

    def wait_values(self, runs: range, names: tuple[str, ...], timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        missing: list[str] = []
        while time.monotonic() < deadline:
            values = self.values()
            missing = [f"r{r}:{n}" for r in runs for n in names if (r, n) not in values]
            if not missing:
                return
            time.sleep(0.5)
        counts = topic_counts(self.kafka.bootstrap_servers, self.kafka.topic_prefix)
        raise AssertionError(
            f"values never stored: {missing[:20]}\n----- records per topic -----\n{counts}\n"
            f"{self.system.logs()}"
        )

    def publish(self, topic: str, message: Any) -> None:
        async def go() -> None:
            broker = make_broker(self.kafka, client_id="web-test")
            await broker.connect()
            try:
                await publish(broker, topic, message, key=proposal_key(PROPOSAL))
            finally:
                await broker.stop()

        run(go())

    def command(self, message: Any) -> None:
        self.publish(self.kafka.topics.commands, message)

    def define_user_variable(self, name: str, title: str, variable_type: str) -> None:
        self.command(
            DefineUserVariable(
                proposal=PROPOSAL, name=name, title=title, variable_type=variable_type
            )
        )


def _env(kafka: KafkaSettings, dsn: str, topics: list[str], logs: Path) -> dict[str, str]:
    prefix = kafka.topic_prefix
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env.update(
        {
            "RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "RUNSTREAM_KAFKA_TOPIC_PREFIX": prefix,
            "RUNSTREAM_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "RUNSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
            "RUNSTREAM_POSTGRES_DSN": dsn,
            "RUNSTREAM_INGEST_FACILITY_TOPICS": json.dumps(topics),
            "RUNSTREAM_INGEST_PROC_RETRY_DELAY_S": "1",
            "RUNSTREAM_INGEST_GROUP_ID": f"{prefix}-ingest",
            "RUNSTREAM_INGEST_TRANSACTIONAL_ID": f"{prefix}-ingest",
            "RUNSTREAM_INGEST_SETTLE_S": "0",
            "RUNSTREAM_STORE_GROUP_ID": f"{prefix}-store",
            "RUNSTREAM_EXECUTOR_WORKERS": "2",
            "RUNSTREAM_SLURM_GATEWAY_BACKEND": "local",
            "RUNSTREAM_SLURM_GATEWAY_LOCAL__JOURNAL_DIR": str(logs / "gateway-journal"),
            "RUNSTREAM_WEB_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def web_url(log: Path) -> str:
    match = URL_LINE.search(log.read_text(errors="replace"))
    assert match, f"the web service logged no URL:\n{log.read_text()[-3000:]}"
    return match.group(1)


async def _database(admin_dsn: str) -> str:
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = admin_dsn.rpartition("/")
    return f"{base}/{name}"


async def drop_database(admin_dsn: str, dsn: str) -> None:
    name = dsn.rpartition("/")[2]
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except asyncpg.PostgresError:
        pass  # only clutter; never fail a test for it
    finally:
        await admin.close()


def start_system(bootstrap: str, admin_dsn: str, root: Path) -> WebSystem:
    """Database, topics, folders, the five services and the registered proposal."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix, client_id=prefix)
    dsn = run(_database(admin_dsn))
    upgrade(dsn)
    raw_topic, proc_topic = f"{prefix}.facility.daq", f"{prefix}.facility.cal"
    proposal_dir = root / "data" / f"p{PROPOSAL:06d}"
    context_dir = root / "usr"
    context_dir.mkdir(parents=True)
    context = (REPO / "deploy" / "demo" / "context.py").read_text() + EXTRA_CONTEXT
    (context_dir / "context.py").write_text(context)
    logs = root / "logs"
    logs.mkdir()
    run(ensure_topics(kafka, [raw_topic, proc_topic]))
    system = System(env=_env(kafka, dsn, [raw_topic, proc_topic], logs), log_dir=logs)
    harness = WebSystem(system, kafka, dsn, root, proposal_dir, context_dir, raw_topic, proc_topic)
    try:
        run(system.start("store", "executor", "ingest", "slurm-gateway", "web"))
        harness.url = web_url(system.procs["web"].log)
        harness.publish(
            kafka.topics.proposals,
            ProposalRegistered(
                proposal=PROPOSAL, context_dir=str(context_dir), data_root=str(proposal_dir)
            ),
        )
    except BaseException:
        system.stop()  # the services that did start
        raise
    return harness
