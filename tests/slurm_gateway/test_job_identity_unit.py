"""What a job is given: its own Kafka user, never the gateway's password unless asked."""

from __future__ import annotations

import os
import pwd

import pytest
from pydantic import ValidationError
from runstream_common.errors import ConfigurationError
from runstream_common.settings import KafkaSettings
from runstream_slurm_gateway.adapters.local_backend import privilege_drop
from runstream_slurm_gateway.job_request import job_environment
from runstream_slurm_gateway.settings import JobSettings

pytestmark = pytest.mark.unit

GATEWAY_KAFKA = KafkaSettings(
    security_protocol="SASL_SSL",
    sasl_mechanism="SCRAM-SHA-512",
    sasl_username="slurm-gateway",
    sasl_password="gateway-secret-4f1e9a",  # type: ignore[arg-type]
    ssl_cafile="/etc/runstream/kafka/ca.crt",
)


def test_jobs_publish_as_their_own_kafka_user() -> None:
    job = JobSettings(kafka_username="job", kafka_password="job-secret-77c0d2")  # type: ignore[arg-type]
    env = job_environment(job, GATEWAY_KAFKA)
    assert env["RUNSTREAM_KAFKA_SASL_USERNAME"] == "job"
    assert env["RUNSTREAM_KAFKA_SASL_PASSWORD"] == "job-secret-77c0d2"
    assert env["RUNSTREAM_KAFKA_SSL_CAFILE"] == "/etc/runstream/kafka/ca.crt"
    assert "gateway-secret-4f1e9a" not in env.values()
    # the job's settings are complete: it can authenticate
    settings = KafkaSettings(
        **{
            k.removeprefix("RUNSTREAM_KAFKA_").lower(): v
            for k, v in env.items()
            if k.startswith("RUNSTREAM_KAFKA_")
        }
    )
    assert settings.sasl_username == "job"


def test_without_a_job_user_the_gateways_password_stays_home() -> None:
    env = job_environment(JobSettings(), GATEWAY_KAFKA)
    assert env["RUNSTREAM_KAFKA_SASL_USERNAME"] == "slurm-gateway"
    assert "RUNSTREAM_KAFKA_SASL_PASSWORD" not in env
    shared = job_environment(JobSettings(pass_kafka_password=True), GATEWAY_KAFKA)
    assert shared["RUNSTREAM_KAFKA_SASL_PASSWORD"] == "gateway-secret-4f1e9a"


def test_a_placeholder_job_password_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"job\.kafka_password is not set to a real secret"):
        JobSettings(kafka_username="job", kafka_password="change-me")  # type: ignore[arg-type]


def test_run_as_refuses_what_cannot_protect_the_gateway() -> None:
    with pytest.raises(ConfigurationError, match="no user 'no-such-user-x'"):
        privilege_drop("no-such-user-x")
    own = pwd.getpwuid(os.geteuid()).pw_name
    with pytest.raises(ConfigurationError, match=r"gateway's own user|cannot start jobs"):
        privilege_drop(own)


def test_run_as_prefix_switches_user_and_forbids_new_privileges() -> None:
    if os.geteuid() != 0:
        with pytest.raises(ConfigurationError, match="CAP_SETUID"):
            privilege_drop("nobody")
        return
    nobody = pwd.getpwnam("nobody")
    prefix = privilege_drop("nobody")
    assert prefix[0].endswith("setpriv")
    assert f"--reuid={nobody.pw_uid}" in prefix
    assert f"--regid={nobody.pw_gid}" in prefix
    assert "--no-new-privs" in prefix
    assert prefix[-1] == "--"
