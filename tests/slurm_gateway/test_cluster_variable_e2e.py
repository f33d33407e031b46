"""A ``cluster=True`` variable evaluated by a real Slurm job: gateway -> slurmrestd ->
``python -m runstream_executor.job`` (as the unprivileged job user) -> results on Kafka."""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from runstream_common import parsers
from runstream_common.messages import (
    JobState,
    ProcessingStateChanged,
    ProcessingStatus,
    ResultsReady,
)
from runstream_common.settings import KafkaSettings, PostgresSettings
from runstream_slurm_gateway.settings import JobSettings
from runstream_store.app import build_app as build_store
from runstream_store.schema import upgrade
from runstream_store.settings import Settings as StoreSettings
from support.registry import register_proposal

from .conftest import REPO, SlurmCluster
from .helpers import final_states, job_request, wait_for
from .kafka_helpers import StateWatcher, gateway, producer, send
from .test_gateway_slurm import gateway_settings

pytestmark = pytest.mark.integration

CONTEXT = """
from damnit_ctx import Variable

@Variable(title="Light")
def light(run):
    return 1.5

@Variable(title="Heavy", cluster=True)
def heavy(run, x: "var#light"):
    return x * 2 + 40
"""


def make_run(proposal_dir: Path) -> None:
    from extra_data.tests.make_examples import make_fxe_da_file

    raw = proposal_dir / "raw" / "r0001"
    raw.mkdir(parents=True)
    make_fxe_da_file(str(raw / "RAW-R0001-DA01-S00000.h5"))


async def collect_results(
    kafka: KafkaSettings, request_id: str
) -> tuple[list[ResultsReady], list[ProcessingStateChanged]]:
    consumer = AIOKafkaConsumer(
        kafka.topics.results,
        kafka.topics.processing,
        bootstrap_servers=kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=500,
    )
    results: list[ResultsReady] = []
    states: list[ProcessingStateChanged] = []
    await consumer.start()
    try:

        async def done() -> bool:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for rec in records:
                    if rec.topic == kafka.topics.results:
                        msg = parsers.RESULTS.parse(rec.value)
                        if isinstance(msg, ResultsReady):
                            results.append(msg)
                    else:
                        states.append(parsers.PROCESSING.parse(rec.value))
            return any(
                s.request_id == request_id
                and s.status in (ProcessingStatus.FINISHED, ProcessingStatus.FAILED)
                for s in states
            )

        deadline = time.monotonic() + 60
        while not await done():
            assert time.monotonic() < deadline, "the job published no finished state"
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return results, states


async def stored_value(dsn: str, proposal: int, run: int, name: str) -> float | None:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT value_float FROM run_values WHERE proposal = $1 AND run = $2 AND name = $3",
            proposal,
            run,
            name,
        )
    finally:
        await conn.close()
    return None if row is None else float(row["value_float"])


async def test_cluster_variable_result_reaches_the_store_through_a_real_slurm_job(
    slurm: SlurmCluster, kafka_settings: KafkaSettings, pg_dsn: str, job_dir: Path
) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await upgrade(conn)
    finally:
        await conn.close()
    store = build_store(
        StoreSettings(
            kafka=kafka_settings,
            postgres=PostgresSettings(dsn=pg_dsn),
            group_id=f"{kafka_settings.topic_prefix}-store",
        )
    ).app
    context_dir = job_dir / "usr" / "runstream"
    context_dir.mkdir(parents=True, mode=0o777)
    context_dir.chmod(0o777)
    (context_dir / "context.py").write_text(textwrap.dedent(CONTEXT))
    proposal_dir = job_dir / "p001234"
    make_run(proposal_dir)
    await register_proposal(kafka_settings, 1234, context_dir, proposal_dir)

    python = REPO / ".venv" / "bin" / "python"  # what the job user runs (see slurm.sh install)
    settings = gateway_settings(slurm, kafka_settings, "unused").model_copy(
        update={
            "job": JobSettings(
                command_prefix=[str(python), "-m", "runstream_executor.job"],
                time="10",
                extra_env={
                    "HOME": str(context_dir),
                    "RUNSTREAM_EXECUTOR_WORKERS": "1",
                    "RUNSTREAM_EXECUTOR_PRELOAD": "numpy",
                },
            )
        }
    )
    req = job_request(
        1234, 1, str(context_dir), proposal_dir=str(proposal_dir), request_id="e2e-request"
    )
    stored: float | None = None
    await store.start()
    try:
        async with (
            StateWatcher(kafka_settings) as watch,
            gateway(settings),
            producer(kafka_settings) as p,
        ):
            await send(p, kafka_settings, req)
            await wait_for(
                lambda: bool(final_states(watch.events)), timeout=120, what="the job to end"
            )
            final = final_states(watch.events)[req.job_request_id]
            log = Path(final.log_path).read_text() if final.log_path else ""  # noqa: ASYNC240
            assert final.state is JobState.COMPLETED, log[-3000:]
            assert final.exit_status == 0
            results, states = await collect_results(kafka_settings, "e2e-request")
            for _ in range(300):
                stored = await stored_value(pg_dsn, 1234, 1, "heavy")
                if stored is not None:
                    break
                await asyncio.sleep(0.1)
    finally:
        await store.stop()
    heavy = [r for msg in results for r in msg.results if r.name == "heavy"]
    assert len(heavy) == 1, log[-3000:]
    assert heavy[0].summary == 43.0
    assert heavy[0].error is None
    job_states = [s for s in states if s.slurm_job_id == final.job_id]
    assert job_states, "the job reported its processing state with its Slurm job id"
    assert job_states[-1].status is ProcessingStatus.FINISHED
    assert stored == 43.0  # the store wrote the cluster variable's value into PostgreSQL
