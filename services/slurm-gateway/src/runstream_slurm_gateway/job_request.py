"""A JobRequested plus the proposal's settings -> a JobSpec (pure)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import replace
from pathlib import PurePosixPath

from opentelemetry.propagate import inject
from runstream_common.errors import InvalidCommand
from runstream_common.messages import JobRequested
from runstream_common.settings import KafkaSettings

from .jobspec import JobSpec, job_name, time_limit_minutes
from .settings import JobSettings

ProposalSettings = Mapping[str, str | int | float | bool]


def _text(settings: ProposalSettings, key: str) -> str | None:
    value = settings.get(key)
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    return text or None


def concurrent_jobs(settings: ProposalSettings, default: int) -> int:
    value = settings.get("concurrent_jobs")
    if value is None or isinstance(value, bool):
        return default
    try:
        cap = int(value)
    except (TypeError, ValueError):
        return default
    return cap if cap >= 1 else default


def log_path(req: JobRequested, logs_dir: str) -> str:
    return str(PurePosixPath(req.context_dir) / logs_dir / f"r{req.run}-p{req.proposal}.out")


def job_argv(req: JobRequested, prefix: list[str], settings: ProposalSettings) -> list[str]:
    argv = [
        *prefix,
        "--proposal",
        str(req.proposal),
        "--run",
        str(req.run),
        "--context-dir",
        req.context_dir,
        "--proposal-dir",
        req.proposal_dir,
        "--trigger",
        req.trigger.value,
        "--request-id",
        req.request_id,
        "--job-request-id",
        req.job_request_id,
    ]
    for name in req.selection.names:
        argv += ["--var", name]
    context_python = _text(settings, "context_python")
    if context_python:
        argv += ["--context-python", context_python]
    return argv


def kafka_env(
    kafka: KafkaSettings,
    *,
    with_password: bool,
    username: str | None = None,
    password: str | None = None,
) -> dict[str, str]:
    """The Kafka settings the job's publisher needs, under the shared and executor prefixes.

    ``username``/``password``: the jobs' own SASL user (its ACLs let it publish results
    and processing states only); without them the gateway's user name, and its password
    only if ``with_password``.
    """
    env: dict[str, str] = {}
    for name, value in kafka.model_dump().items():
        if value is None or name in {"client_id", "sasl_username", "sasl_password"}:
            continue
        env[f"RUNSTREAM_KAFKA_{name.upper()}"] = str(value)
    if username:
        env["RUNSTREAM_KAFKA_SASL_USERNAME"] = username
        if password:
            env["RUNSTREAM_KAFKA_SASL_PASSWORD"] = password
    elif kafka.sasl_username:
        env["RUNSTREAM_KAFKA_SASL_USERNAME"] = kafka.sasl_username
        if with_password and kafka.sasl_password is not None:
            env["RUNSTREAM_KAFKA_SASL_PASSWORD"] = kafka.sasl_password.get_secret_value()
    env["RUNSTREAM_EXECUTOR_KAFKA__BOOTSTRAP_SERVERS"] = kafka.bootstrap_servers
    env["RUNSTREAM_EXECUTOR_KAFKA__TOPIC_PREFIX"] = kafka.topic_prefix
    return env


def job_environment(job: JobSettings, kafka: KafkaSettings) -> dict[str, str]:
    """A clean environment: nothing inherited from the gateway (no SLURM_*, DISPLAY,
    LD_PRELOAD), only PATH, a locale, the Kafka settings and ``extra_env``."""
    env = {"PATH": job.path, "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
    env.update(
        kafka_env(
            kafka,
            with_password=job.pass_kafka_password,
            username=job.kafka_username,
            password=job.kafka_password.get_secret_value() if job.kafka_password else None,
        )
    )
    for key, value in job.extra_env.items():
        if key.startswith("SLURM_") or key in {"DISPLAY", "LD_PRELOAD"}:
            raise InvalidCommand(f"job.extra_env may not set {key}")
        env[key] = value
    return env


def build_spec(
    req: JobRequested, proposal: ProposalSettings, job: JobSettings, kafka: KafkaSettings
) -> JobSpec:
    """Reservation wins over partition; the proposal's settings win over the defaults."""
    reservation = _text(proposal, "slurm_reservation") or job.reservation
    partition = None if reservation else (_text(proposal, "slurm_partition") or job.partition)
    time_text = _text(proposal, "slurm_time") or job.time
    if not os.path.isabs(req.context_dir):
        raise InvalidCommand(f"context_dir {req.context_dir!r} is not an absolute path")
    return JobSpec(
        job_request_id=req.job_request_id,
        proposal=req.proposal,
        run=req.run,
        name=job_name(req.proposal, req.run),
        argv=tuple(job_argv(req, job.command_prefix, proposal)),
        environment=job_environment(job, kafka),
        working_dir=req.context_dir,
        log_path=log_path(req, job.logs_dir),
        time_limit_min=time_limit_minutes(time_text),
        cpus=job.cpus,
        memory_mb=job.memory_mb,
        partition=partition,
        reservation=reservation,
        instance=kafka.topic_prefix,
    )


def with_trace_context(spec: JobSpec) -> JobSpec:
    """Hand the current trace to the job (W3C ``TRACEPARENT``/``TRACESTATE`` variables).

    The job's results then continue the trace that began when ingest consumed the
    facility event, across the batch system.
    """
    carrier: dict[str, str] = {}
    inject(carrier)
    extra = {
        key.upper(): value for key, value in carrier.items() if key in ("traceparent", "tracestate")
    }
    if not extra:
        return spec
    return replace(spec, environment={**spec.environment, **extra})


def batch_script(spec: JobSpec) -> str:
    """The script Slurm runs: a line for the log, then the job entry point."""
    return (
        "#!/bin/bash\n"
        f'echo "runstream: job $SLURM_JOB_ID ({spec.name}, request {spec.job_request_id}) '
        'on $(hostname) at $(date -Is)"\n'
        f"exec {shlex.join(spec.argv)}\n"
    )
