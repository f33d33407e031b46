"""Exit-status decoding, time limits, job comments, job specs (pure logic)."""

from __future__ import annotations

import sys

import pytest
from pydantic import SecretStr
from runstream_common.errors import InvalidCommand
from runstream_common.messages import JobRequested, JobState, Selection, Trigger
from runstream_common.settings import KafkaSettings
from runstream_slurm_gateway.exitcodes import decode_wait_status
from runstream_slurm_gateway.job_request import batch_script, build_spec, concurrent_jobs
from runstream_slurm_gateway.jobspec import (
    job_comment,
    parse_comment,
    slurm_state,
    time_limit_minutes,
)
from runstream_slurm_gateway.settings import JobSettings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "status", "signal"),
    [(0, 0, None), (768, 3, None), (1792, 7, None), (15, None, 15), (9, None, 9), (137, None, 9),
     (None, None, None), (0x100 * 255, 255, None), (4021, None, None), (0x80 | 11, None, 11)],
)  # fmt: skip
def test_wait_status(raw: int | None, status: int | None, signal: int | None) -> None:
    info = decode_wait_status(raw)
    assert (info.exit_status, info.signal) == (status, signal)


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("02:00:00", 120), ("90", 90), ("1:30", 2), ("1-00", 1440), ("1-2:30", 1590),
     ("0:0:1", 1), (5, 5), ("2-00:00:30", 2881)],
)  # fmt: skip
def test_time_limit(text: str | int, minutes: int) -> None:
    assert time_limit_minutes(text) == minutes


@pytest.mark.parametrize("text", ["", "abc", "1:2:3:4", "0", "-5", 0])
def test_bad_time_limit(text: str | int) -> None:
    with pytest.raises(InvalidCommand):
        time_limit_minutes(text)


def test_comment_round_trip_and_foreign_jobs() -> None:
    tag = parse_comment(job_comment("abc-123", 2212, 7, "site-a"))
    assert tag is not None
    assert tag.instance == "site-a"
    assert (tag.job_request_id, tag.proposal, tag.run) == ("abc-123", 2212, 7)
    assert parse_comment("somebody else's job") is None
    assert parse_comment(None) is None
    with pytest.raises(InvalidCommand):
        job_comment("has space", 1, 1)
    with pytest.raises(InvalidCommand):
        job_comment("ok", 1, 1, "")


@pytest.mark.parametrize(
    ("raw", "state"),
    [("PENDING", JobState.PENDING), ("RUNNING", JobState.RUNNING), ("COMPLETING", JobState.RUNNING),
     ("COMPLETED", JobState.COMPLETED), ("FAILED", JobState.FAILED), ("NODE_FAIL", JobState.FAILED),
     ("CANCELLED", JobState.CANCELLED), ("CANCELLED by 0", JobState.CANCELLED),
     ("TIMEOUT", JobState.TIMEOUT), ("OUT_OF_MEMORY", JobState.FAILED)],
)  # fmt: skip
def test_slurm_states(raw: str, state: JobState) -> None:
    assert slurm_state(raw) is state


def request(**kw: object) -> JobRequested:
    base: dict[str, object] = dict(
        job_request_id="jr-9",
        request_id="rq-1",
        processing_id="pr-1",
        proposal=2212,
        run=42,
        trigger=Trigger.RAW,
        selection=Selection(names=("big", "bigger")),
        context_dir="/data/ctx",
        proposal_dir="/data/p2212",
    )
    base.update(kw)
    return JobRequested(**base)


def test_spec_from_request_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for leak in ("SLURM_JOB_ID", "DISPLAY", "LD_PRELOAD", "SECRET_OF_GATEWAY"):
        monkeypatch.setenv(leak, "1")
    kafka = KafkaSettings(bootstrap_servers="k:1", topic_prefix="tp", sasl_password=SecretStr("pw"))
    job = JobSettings(partition="default-part", time="01:00:00", cpus=3, extra_env={"X": "1"})
    spec = build_spec(
        request(),
        {"slurm_partition": "upex", "slurm_time": "00:10:00", "concurrent_jobs": 2},
        job,
        kafka,
    )
    assert spec.name == "r42-p2212-runstream"
    assert spec.partition == "upex"
    assert spec.reservation is None
    assert spec.time_limit_min == 10
    assert spec.cpus == 3
    assert spec.log_path == "/data/ctx/slurm_logs/r42-p2212.out"
    assert spec.argv[:3] == (sys.executable, "-m", "runstream_executor.job")
    assert spec.argv[3:] == (
        "--proposal", "2212", "--run", "42", "--context-dir", "/data/ctx",
        "--proposal-dir", "/data/p2212", "--trigger", "raw", "--request-id", "rq-1",
        "--job-request-id", "jr-9", "--var", "big", "--var", "bigger",
    )  # fmt: skip
    env = spec.environment
    assert env["RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS"] == "k:1"
    assert env["RUNSTREAM_EXECUTOR_KAFKA__BOOTSTRAP_SERVERS"] == "k:1"
    assert env["RUNSTREAM_KAFKA_TOPIC_PREFIX"] == "tp"
    assert env["X"] == "1"
    assert not {k for k in env if k.startswith("SLURM_")} | (
        {"DISPLAY", "LD_PRELOAD", "SECRET_OF_GATEWAY"} & set(env)
    )
    assert "RUNSTREAM_KAFKA_SASL_PASSWORD" not in env  # only with pass_kafka_password
    script = batch_script(spec)
    assert script.startswith("#!/bin/bash\n")
    assert "exec " in script
    assert "--var big" in script


def test_reservation_wins_and_defaults_apply() -> None:
    kafka = KafkaSettings()
    job = JobSettings(partition="default-part")
    spec = build_spec(
        request(), {"slurm_partition": "upex", "slurm_reservation": "bt1"}, job, kafka
    )
    assert (spec.reservation, spec.partition) == ("bt1", None)
    spec = build_spec(request(), {}, job, kafka)
    assert (spec.reservation, spec.partition, spec.time_limit_min) == (None, "default-part", 120)


def test_bad_requests_are_refused() -> None:
    with pytest.raises(InvalidCommand):
        build_spec(request(), {"slurm_time": "soon"}, JobSettings(), KafkaSettings())
    with pytest.raises(InvalidCommand):
        build_spec(request(context_dir="relative/dir"), {}, JobSettings(), KafkaSettings())
    with pytest.raises(InvalidCommand):
        build_spec(request(), {}, JobSettings(extra_env={"LD_PRELOAD": "x"}), KafkaSettings())


@pytest.mark.parametrize(
    ("settings", "cap"),
    [({}, 15), ({"concurrent_jobs": 3}, 3), ({"concurrent_jobs": "4"}, 4),
     ({"concurrent_jobs": 0}, 15), ({"concurrent_jobs": "x"}, 15), ({"concurrent_jobs": True}, 15)],
)  # fmt: skip
def test_concurrent_jobs(settings: dict[str, object], cap: int) -> None:
    assert concurrent_jobs(settings, 15) == cap  # type: ignore[arg-type]
