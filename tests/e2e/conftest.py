"""End-to-end fixtures: the four services as real processes on the real stack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from runstream_common.settings import KafkaSettings
from support.database import upgrade_async
from support.registry import register_proposal
from support.services import System

PROPOSAL = 4242
REPO = Path(__file__).resolve().parents[2]

# A light context: scalar, string, 1-D (trendline), 2-D (thumbnail), a dependency chain,
# a proc variable and one that always fails.
CONTEXT = """
from damnit_ctx import Variable
import numpy as np

XGM = "SA1_XTD2_XGM/DOOCS/MAIN"

@Variable(title="Trains")
def n_trains(run):
    return len(run.train_ids)

@Variable(title="Beam x", summary="mean")
def beam_x(run):
    return run[XGM, "beamPosition.ixPos"].ndarray()

@Variable(title="Label")
def label(run, number: "meta#run_number"):
    return f"run {number}"

@Variable(title="Image")
def image(run, number: "meta#run_number"):
    return np.arange(64 * 48, dtype=float).reshape(64, 48) * number

@Variable(title="Doubled")
def doubled(run, n: "var#n_trains", number: "meta#run_number"):
    return 2 * n + number

@Variable(title="Broken")
def broken(run):
    raise ValueError("always fails")

@Variable(title="Proc sum", data="proc")
def proc_sum(run, d: "var#doubled"):
    return d + 1

@Variable(title="Heavy", cluster=True)
def heavy(run, d: "var#doubled"):
    return d * 10
"""
RAW_NAMES = ("n_trains", "beam_x", "label", "image", "doubled", "broken", "heavy")
ALL_NAMES = (*RAW_NAMES, "proc_sum")


@dataclass
class E2E:
    system: System
    kafka: KafkaSettings
    dsn: str
    root: Path
    proposal_dir: Path
    context_dir: Path
    raw_topic: str
    proc_topic: str

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

    def stack(self, script: str, action: str) -> None:
        """Run a deploy/local script (restart Kafka or PostgreSQL under the services' feet)."""
        result = subprocess.run(
            ["bash", str(REPO / "deploy" / "local" / script), action],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def send_events(
        self, runs: range, *, event: str = "migration_complete", twice: bool = False
    ) -> None:
        """Facility events from an independent client (confluent-kafka), as the facility sends them."""
        from confluent_kafka import Producer

        topic = self.raw_topic if event == "migration_complete" else self.proc_topic
        producer = Producer({"bootstrap.servers": self.kafka.bootstrap_servers, "acks": "all"})
        for run in runs:
            body = json.dumps(
                {"event": event, "proposal": PROPOSAL, "run": run, "instrument": "FXE"}
            )
            for _ in range(2 if twice else 1):
                producer.produce(topic, body.encode(), key=f"{PROPOSAL}/{run}".encode())
        assert producer.flush(30) == 0

    async def values(self) -> dict[tuple[int, str], asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch("SELECT * FROM run_values WHERE proposal = $1", PROPOSAL)
        finally:
            await conn.close()
        return {(r["run"], r["name"]): r for r in rows}

    async def history_counts(self) -> dict[tuple[int, str], int]:
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch(
                "SELECT run, name, count(*) AS n FROM run_value_history WHERE proposal = $1 GROUP BY run, name",
                PROPOSAL,
            )
        finally:
            await conn.close()
        return {(r["run"], r["name"]): r["n"] for r in rows}


def _env(
    kafka: KafkaSettings, dsn: str, raw_topic: str, proc_topic: str, logs: Path
) -> dict[str, str]:
    prefix = kafka.topic_prefix
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env.update(
        {
            "RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "RUNSTREAM_KAFKA_TOPIC_PREFIX": prefix,
            "RUNSTREAM_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "RUNSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
            "RUNSTREAM_POSTGRES_DSN": dsn,
            "RUNSTREAM_INGEST_FACILITY_TOPICS": json.dumps([raw_topic, proc_topic]),
            "RUNSTREAM_INGEST_GROUP_ID": f"{prefix}-ingest",
            "RUNSTREAM_INGEST_TRANSACTIONAL_ID": f"{prefix}-ingest",
            "RUNSTREAM_INGEST_SETTLE_S": "0",
            "RUNSTREAM_INGEST_PROC_RETRY_DELAY_S": "1",
            "RUNSTREAM_STORE_GROUP_ID": f"{prefix}-store",
            "RUNSTREAM_EXECUTOR_WORKERS": "2",
            "RUNSTREAM_EXECUTOR_VARIABLE_TIMEOUT_S": "120",
            "RUNSTREAM_SLURM_GATEWAY_BACKEND": "local",
            "RUNSTREAM_SLURM_GATEWAY_LOCAL__JOURNAL_DIR": str(logs / "gateway-journal"),
            "RUNSTREAM_STORE_FRAGMENT_WAIT_S": "5",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@pytest.fixture
async def e2e(kafka_settings: KafkaSettings, pg_dsn: str, tmp_path: Path) -> AsyncIterator[E2E]:
    await upgrade_async(pg_dsn)
    prefix = kafka_settings.topic_prefix
    raw_topic, proc_topic = f"{prefix}.facility.daq", f"{prefix}.facility.cal"
    proposal_dir = tmp_path / "data" / f"p{PROPOSAL:06d}"
    context_dir = tmp_path / "usr"
    context_dir.mkdir(parents=True)
    (context_dir / "context.py").write_text(textwrap.dedent(CONTEXT))
    logs = tmp_path / "logs"
    logs.mkdir()
    env = _env(kafka_settings, pg_dsn, raw_topic, proc_topic, logs)
    # The facility's topics exist before the facility writes to them.
    from runstream_common.admin import ensure_topics

    await ensure_topics(kafka_settings, [raw_topic, proc_topic], with_dlq=True)
    system = System(env=env, log_dir=logs)
    harness = E2E(
        system, kafka_settings, pg_dsn, tmp_path, proposal_dir, context_dir, raw_topic, proc_topic
    )
    await register_proposal(kafka_settings, PROPOSAL, context_dir, proposal_dir)
    try:
        yield harness
    finally:
        system.stop()
