"""The store's CLI commands against real PostgreSQL and Kafka."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import typer
from runstream_common.messages import RunKnown, VariableDefinition, VariablesDefined
from runstream_common.settings import KafkaSettings
from runstream_store.adapters.postgres import Repository
from runstream_store.app import build_app
from runstream_store.cli import register
from runstream_store.handlers import Handlers
from typer.testing import CliRunner

from .fragments import Fragment
from .helpers import DELIVERY
from .test_store_kafka import store_settings

pytestmark = pytest.mark.integration

P = 6100


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_db_upgrade_applies_each_migration_once(pg_dsn: str) -> None:
    runner = CliRunner()
    status = runner.invoke(_app(), ["db", "status", "--dsn", pg_dsn])
    assert status.exit_code == 1
    assert "runstream db upgrade" in status.output

    first = runner.invoke(_app(), ["db", "upgrade", "--dsn", pg_dsn])
    assert first.exit_code == 0, first.output
    assert "applied 001_initial" in first.output
    assert "applied 002_run_cells" in first.output
    assert "applied 003_damnit_projection" in first.output
    again = runner.invoke(_app(), ["db", "upgrade", "--dsn", pg_dsn])
    assert again.exit_code == 0
    assert "applied" not in again.output
    assert "schema at version 3 (was 3)" in again.output
    assert runner.invoke(_app(), ["db", "status", "--dsn", pg_dsn]).exit_code == 0


def test_db_upgrade_with_an_unreachable_database_fails_clearly() -> None:
    result = CliRunner().invoke(
        _app(), ["db", "upgrade", "--dsn", "postgresql://x:y@127.0.0.1:1/none"]
    )
    assert result.exit_code == 2
    assert "cannot connect to PostgreSQL" in result.output


async def test_table_prints_titles_and_json(
    handlers: Handlers, repo: Repository, context_dir: Path, pg_dsn: str
) -> None:
    await handlers.on_results(
        VariablesDefined(
            proposal=P,
            context_hash="h",
            revision=1,
            variables=(
                VariableDefinition(name="energy", title="Pulse energy", units="mJ"),
                VariableDefinition(name="trace", title="Trace"),
            ),
        ),
        DELIVERY,
    )
    for run in (1, 2):
        frag = Fragment(context_dir, P, run)
        frag.scalar("energy", run * 0.5, units="mJ")
        frag.array("trace", np.array([1.0, 2.0, 3.0]))
        if run == 2:
            frag.scalar("c", complex(1, 2))
            frag.error("broken", "division by zero", "ZeroDivisionError")
        await handlers.results_ready(frag.message())
    await handlers.on_run_known(RunKnown(proposal=P, run=3), DELIVERY)  # no values yet

    runner = CliRunner()
    as_json = await asyncio.to_thread(
        runner.invoke, _app(), ["table", str(P), "--json", "--dsn", pg_dsn]
    )
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    runs = {r["run"]: r for r in data["runs"]}
    assert runs[1]["energy"] == 0.5
    assert runs[1]["trace"] == "<sparkline>"
    assert runs[2]["c"] == [1.0, 2.0]
    assert runs[1]["c"] is None
    assert runs[3]["energy"] is None
    assert runs[1]["start_time"].startswith("2023-11-1")
    assert runs[2]["broken"] is None
    assert runs[2]["errors"] == {
        "broken": {"error_cls": "ZeroDivisionError", "error": "division by zero"}
    }
    assert "errors" not in runs[1]

    pretty = await asyncio.to_thread(
        runner.invoke, _app(), ["table", str(P), "--dsn", pg_dsn], env={"COLUMNS": "200"}
    )
    assert pretty.exit_code == 0
    assert "Pulse energy [mJ]" in pretty.output
    assert "Comment" in pretty.output
    assert "ZeroDivisionError" in pretty.output  # a failed cell says so, it is not blank

    missing = await asyncio.to_thread(runner.invoke, _app(), ["table", "999", "--dsn", pg_dsn])
    assert missing.exit_code == 1
    assert "no runs" in missing.output


async def test_comment_and_config_go_through_the_store(
    kafka_settings: KafkaSettings, pg_dsn: str, repo: Repository
) -> None:
    await repo.record_run_known(RunKnown(proposal=P, run=4), added_at=1.0)
    app = build_app(store_settings(kafka_settings, pg_dsn)).app
    await app.start()
    env = {
        "RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "RUNSTREAM_KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "RUNSTREAM_POSTGRES_DSN": pg_dsn,
        "COLUMNS": "200",
    }
    runner = CliRunner()

    def cli(*args: str) -> object:
        return runner.invoke(_app(), list(args), env=env)

    try:
        done = await asyncio.to_thread(cli, "comment", str(P), "4", "good run", "--wait", "60")
        assert done.exit_code == 0, done.output  # type: ignore[attr-defined]
        assert "comment of p6100 r4 set" in done.output  # type: ignore[attr-defined]
        values = await repo.current_values(P, 4, ["comment"])
        assert values["comment"].value_text == "good run"

        bad = await asyncio.to_thread(cli, "comment", str(P), "77", "x", "--wait", "30")
        assert bad.exit_code == 1  # type: ignore[attr-defined]
        assert "rejected: run 77 of proposal 6100 is not known" in bad.output  # type: ignore[attr-defined]

        rejected = await asyncio.to_thread(cli, "config", str(P), "colour", "red", "--wait", "30")
        assert rejected.exit_code == 1  # type: ignore[attr-defined]
        assert "unknown setting 'colour'" in rejected.output  # type: ignore[attr-defined]
        wrong = await asyncio.to_thread(
            cli, "config", str(P), "concurrent_jobs", "lots", "--wait", "30"
        )
        assert wrong.exit_code == 1  # type: ignore[attr-defined]
        assert "must be a whole number" in wrong.output  # type: ignore[attr-defined]

        ok = await asyncio.to_thread(cli, "config", str(P), "concurrent_jobs", "12", "--wait", "30")
        assert ok.exit_code == 0, ok.output  # type: ignore[attr-defined]
        assert "concurrent_jobs = 12" in ok.output  # type: ignore[attr-defined]
        shown = await asyncio.to_thread(cli, "config", str(P), "--json")
        assert json.loads(shown.output) == {"concurrent_jobs": 12}  # type: ignore[attr-defined]
        one = await asyncio.to_thread(cli, "config", str(P), "concurrent_jobs")
        assert one.output.strip() == "12"  # type: ignore[attr-defined]

        deleted = await asyncio.to_thread(
            cli, "config", str(P), "concurrent_jobs", "--delete", "--wait", "30"
        )
        assert deleted.exit_code == 0, deleted.output  # type: ignore[attr-defined]
        assert await repo.settings(P) == {}
        unset = await asyncio.to_thread(cli, "config", str(P), "concurrent_jobs")
        assert unset.exit_code == 1  # type: ignore[attr-defined]
    finally:
        await app.stop()
