"""``runstream cancel`` and ``runstream slurm-jobs``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import typer
from runstream_common import parsers
from runstream_common.settings import KafkaSettings
from runstream_slurm_gateway.adapters.slurm_backend import SlurmBackend
from runstream_slurm_gateway.app import make_slurm_client
from runstream_slurm_gateway.cli import register
from runstream_slurm_gateway.job_request import build_spec
from runstream_slurm_gateway.settings import Settings
from typer.testing import CliRunner

from .conftest import SlurmCluster
from .helpers import job_request

runner = CliRunner()


def app() -> typer.Typer:
    root = typer.Typer()
    register(root)
    return root


@pytest.mark.unit
@pytest.mark.parametrize(
    "args", [["cancel", "x", "1"], ["cancel", "1"], ["cancel", "--", "-1", "2"]]
)
def test_bad_input_exits_non_zero(args: list[str]) -> None:
    result = runner.invoke(app(), args)
    assert result.exit_code == 2


@pytest.mark.unit
def test_unreachable_kafka_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    result = runner.invoke(app(), ["cancel", "5", "6"])
    assert result.exit_code == 1
    assert "could not send the cancel request" in result.output


@pytest.mark.integration
def test_cancel_publishes_a_cancel_request(
    kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS", kafka_settings.bootstrap_servers)
    monkeypatch.setenv("RUNSTREAM_KAFKA_TOPIC_PREFIX", kafka_settings.topic_prefix)
    result = runner.invoke(app(), ["cancel", "2212", "42", "--reason", "bad run", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert (printed["proposal"], printed["run"], printed["reason"]) == (2212, 42, "bad run")

    import asyncio

    from aiokafka import AIOKafkaConsumer

    async def read() -> list[tuple[bytes | None, Any]]:
        consumer = AIOKafkaConsumer(
            kafka_settings.topics.job_control,
            bootstrap_servers=kafka_settings.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            batch = await consumer.getmany(timeout_ms=5000)
            return [
                (r.key, parsers.JOB_CONTROL.parse(r.value)) for rs in batch.values() for r in rs
            ]
        finally:
            await consumer.stop()

    ((key, message),) = asyncio.run(read())
    assert key == b"2212/42"
    assert (message.proposal, message.run, message.reason) == (2212, 42, "bad run")
    assert str(message.event_id) == printed["event_id"]


@pytest.mark.integration
def test_slurm_jobs_lists_this_installations_jobs_as_json(
    slurm: SlurmCluster,
    monkeypatch: pytest.MonkeyPatch,
    job_dir: Path,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.setenv("RUNSTREAM_SLURM_GATEWAY_SLURM__URL", slurm.url)
    monkeypatch.setenv("RUNSTREAM_SLURM_GATEWAY_SLURM__USER", slurm.user)
    monkeypatch.setenv("RUNSTREAM_SLURM_GATEWAY_TOKEN__SOURCE", "command")
    monkeypatch.setenv("RUNSTREAM_SLURM_GATEWAY_TOKEN__COMMAND", slurm.token_command)
    monkeypatch.setenv("RUNSTREAM_KAFKA_TOPIC_PREFIX", f"cli-{job_dir.name}")
    settings = Settings()
    req = job_request(77, 8, str(job_dir))
    spec = build_spec(req, {}, settings.job, settings.kafka)

    async def cancel(job_id: int) -> None:
        client = make_slurm_client(settings)
        try:
            await client.cancel(job_id)
        finally:
            await client.aclose()

    async def submit() -> int:
        backend = SlurmBackend(make_slurm_client(settings))
        try:
            return await backend.submit(spec, hold=True)
        finally:
            await backend.aclose()

    job_id = asyncio.run(submit())
    request.addfinalizer(lambda: asyncio.run(cancel(job_id)))
    result = runner.invoke(app(), ["slurm-jobs", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.strip()]
    assert [(r["job_id"], r["proposal"], r["run"], r["state"], r["held"]) for r in rows] == [
        (job_id, 77, 8, "pending", True)
    ]
    assert rows[0]["job_request_id"] == req.job_request_id
    table = runner.invoke(app(), ["slurm-jobs", "--all"])
    assert table.exit_code == 0
    assert str(job_id) in table.output
    monkeypatch.setenv("RUNSTREAM_SLURM_GATEWAY_SLURM__URL", "http://127.0.0.1:1")
    failed = runner.invoke(app(), ["slurm-jobs"])
    assert failed.exit_code == 1
    assert "cannot list Slurm jobs" in failed.output
