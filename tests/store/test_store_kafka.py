"""The store service through the real broker and real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import h5py
import numpy as np
import pytest
from runstream_common.kafka import make_broker, publish
from runstream_common.messages import (
    JobStateChanged,
    ProcessingStateChanged,
    RunKnown,
    SetProposalSetting,
    SetUserVariable,
    VariableDefinition,
    VariablesDefined,
)
from runstream_common.settings import KafkaSettings, PostgresSettings
from runstream_common.topics import proposal_key, run_key
from runstream_store.adapters.hdf5_merge import run_file_path
from runstream_store.app import build_app
from runstream_store.schema import upgrade
from runstream_store.settings import Settings
from support.registry import register_proposal

from .fragments import Fragment
from .helpers import read_topic, types_of

pytestmark = pytest.mark.integration

P = 4100


def store_settings(kafka: KafkaSettings, dsn: str, **extra: object) -> Settings:
    return Settings(
        kafka=kafka,
        postgres=PostgresSettings(dsn=dsn),
        group_id=f"{kafka.topic_prefix}-store",
        fragment_wait_s=2.0,
        retry_backoff_s=0.05,
        **extra,  # type: ignore[arg-type]
    )


async def _migrate(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await upgrade(conn)
    finally:
        await conn.close()


async def test_results_commands_and_state_flow_through_the_feed(
    kafka_settings: KafkaSettings, pg_dsn: str, tmp_path: Path
) -> None:
    await _migrate(pg_dsn)
    await register_proposal(kafka_settings, P, tmp_path)
    app = build_app(store_settings(kafka_settings, pg_dsn)).app
    topics = kafka_settings.topics
    producer = make_broker(kafka_settings, client_id="test-producer")
    await app.start()
    await producer.connect()
    try:
        await publish(producer, topics.run_catalog, RunKnown(proposal=P, run=1), key=run_key(P, 1))
        await publish(
            producer,
            topics.results,
            VariablesDefined(
                proposal=P,
                context_hash="h",
                revision=1,
                variables=(VariableDefinition(name="trace", title="Trace", units="V"),),
            ),
            key=proposal_key(P),
        )
        frag = Fragment(tmp_path, P, 1)
        frag.array("trace", np.linspace(0, 1, 300), units="V")
        frag.scalar("energy", 9.3, units="keV")
        result = frag.message(revision=1)
        await publish(producer, topics.results, result, key=run_key(P, 1))
        await publish(producer, topics.results, result, key=run_key(P, 1))  # duplicate
        processing = ProcessingStateChanged(
            processing_id="pp", request_id="rr", proposal=P, run=1, trigger="raw", status="running"
        )
        await publish(producer, topics.processing, processing, key=run_key(P, 1))
        job = JobStateChanged(job_request_id="jj", proposal=P, run=1, state="pending", job_id=5)
        await publish(producer, topics.job_state, job, key=run_key(P, 1))

        # commands are a separate topic: send them once the definitions are in
        await read_topic(kafka_settings, topics.updates, lambda m: "variables_set" in types_of(m))
        bad_value = SetUserVariable(proposal=P, run=1, name="trace", value="x")
        unknown = SetProposalSetting(proposal=P, key="colour", value="red")
        good = SetProposalSetting(proposal=P, key="slurm_partition", value="upex")
        for command in (bad_value, unknown, good):
            await publish(producer, topics.commands, command, key=proposal_key(P))

        def complete(messages: list[object]) -> bool:
            seen = types_of(messages)
            return (
                seen.count("values_updated") >= 2
                and seen.count("command_rejected") == 2
                and {"run_added", "variables_set", "proposal_settings_set"} <= set(seen)
                and {"processing_state_set", "job_state_set"} <= set(seen)
            )

        feed = await read_topic(kafka_settings, topics.updates, complete)
        by_type: dict[str, list[tuple[bytes, Any]]] = {}
        for key, message in feed:
            by_type.setdefault(message.type, []).append((key, message))

        assert [k for k, _ in by_type["run_added"]] == [b"4100/1"]
        key, updated = by_type["values_updated"][0]
        assert key == b"4100/1"
        assert updated.values["energy"].summary == 9.3
        assert updated.values["energy"].units == "keV"
        assert updated.values["trace"].summary_type == "trendline"
        assert all(m.values == updated.values for _, m in by_type["values_updated"])
        rejected = {m.command_event_id: m.reason for _, m in by_type["command_rejected"]}
        assert rejected[str(bad_value.event_id)] == (
            "'trace' is computed by the context file and cannot be edited"
        )
        assert rejected[str(unknown.event_id)].startswith("unknown setting 'colour'")
        assert [k for k, _ in by_type["command_rejected"]] == [b"4100", b"4100"]
        (_, settings_set) = by_type["proposal_settings_set"][0]
        assert settings_set.settings == {"slurm_partition": "upex"}
        assert settings_set.correlation_id == str(good.event_id)
        assert by_type["processing_state_set"][0][1].state == processing
        assert by_type["job_state_set"][0][1].state == job

        compacted = await read_topic(
            kafka_settings, topics.proposal_settings, lambda m: len(m) >= 1
        )
        assert compacted[0][0] == b"4100"
        assert compacted[0][1].settings == {"slurm_partition": "upex"}

        conn = await asyncpg.connect(pg_dsn)
        try:
            history = await conn.fetchval(
                "SELECT count(*) FROM run_value_history WHERE proposal = $1 AND name = 'energy'", P
            )
            assert history == 1
        finally:
            await conn.close()
        with h5py.File(run_file_path(tmp_path, P, 1), "r") as f:
            np.testing.assert_array_equal(f["trace/data"][()], np.linspace(0, 1, 300))
        assert frag.path is not None
        assert not frag.path.exists()
    finally:
        await producer.stop()
        await app.stop()


async def test_the_store_refuses_an_outdated_schema_and_names_the_command(
    kafka_settings: KafkaSettings, pg_dsn: str
) -> None:
    app = build_app(store_settings(kafka_settings, pg_dsn)).app
    with pytest.raises(SystemExit, match="runstream db upgrade"):
        await app.start()


def test_serving_on_an_outdated_schema_exits_with_one_clear_line(pg_dsn: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from runstream_store.app import create; create()"],
        env={**os.environ, "RUNSTREAM_STORE_POSTGRES__DSN": pg_dsn},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "runstream store: the database schema is at version 0, this store needs version 3: "
        "run `runstream db upgrade` (or `runstream db upgrade --dsn DSN`)"
    )
