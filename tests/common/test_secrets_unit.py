"""Secrets in settings: no default database password, placeholders refused at start-up."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError
from runstream_common.errors import ConfigurationError
from runstream_common.secrets import MissingSecret, placeholder_reason
from runstream_common.settings import KafkaSettings, PostgresSettings

pytestmark = pytest.mark.unit

PLACEHOLDERS = ["change-me", "CHANGE_ME", "changeme", "REPLACE_ME", "replace-me", "password",
                "<password>", "${POSTGRES_PASSWORD}", "placeholder", "your-password-here"]  # fmt: skip
REAL = ["9f2c61d0b7e4a8351c6e", "runstream", "correct horse battery staple", "p@ss/w0rd:x"]


@pytest.mark.parametrize("value", PLACEHOLDERS)
def test_placeholders_are_recognised(value: str) -> None:
    assert placeholder_reason(value) is not None


@pytest.mark.parametrize("value", REAL)
def test_real_secrets_pass(value: str) -> None:
    assert placeholder_reason(value) is None


def test_the_database_has_no_default_password(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("RUNSTREAM_POSTGRES"):
            monkeypatch.delenv(key)
    settings = PostgresSettings()
    assert isinstance(settings.dsn, MissingSecret)
    assert "runstream:runstream" not in repr(settings) + settings.model_dump_json()
    with pytest.raises(ConfigurationError, match="RUNSTREAM_POSTGRES_DSN") as missing:
        settings.dsn.get_secret_value()
    assert "stack.sh env" in str(missing.value)


@pytest.mark.parametrize("password", ["change-me", "REPLACE_ME", "<password>"])
def test_placeholder_passwords_are_refused(password: str) -> None:
    with pytest.raises(ValidationError, match="not set to a real secret"):
        PostgresSettings(dsn=f"postgresql://runstream:{password}@db:5432/runstream")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="SASL password is not set to a real secret"):
        KafkaSettings(
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="executor",
            sasl_password=password,  # type: ignore[arg-type]
        )


def test_incomplete_sasl_settings_say_what_is_missing() -> None:
    with pytest.raises(ValidationError, match="RUNSTREAM_KAFKA_SASL_MECHANISM"):
        KafkaSettings(security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="SASL_USERNAME and SASL_PASSWORD"):
        KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512")
    with pytest.raises(ValidationError, match="use SASL_SSL"):
        KafkaSettings(sasl_mechanism="SCRAM-SHA-512")
    ok = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="store",
        sasl_password="9f2c61d0b7e4a8351c6e",  # type: ignore[arg-type]
        ssl_cafile="/etc/ca.pem",
    )
    assert ok.librdkafka_config() == {
        "bootstrap.servers": ok.bootstrap_servers,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "store",
        "sasl.password": "9f2c61d0b7e4a8351c6e",
        "ssl.ca.location": "/etc/ca.pem",
    }


def serve(service: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    return subprocess.run(
        [sys.executable, "-m", "runstream.cli", "serve", service],
        env={**clean, "RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("service", "env", "says"),
    [
        ("store", {"RUNSTREAM_POSTGRES_DSN": "postgresql://runstream:change-me@db/rs"},
         "password in the PostgreSQL DSN is not set to a real secret"),
        ("slurm-gateway", {"RUNSTREAM_SLURM_GATEWAY_TOKEN__KEY": "REPLACE_ME"},
         "token.key (the Slurm JWT key) is not set to a real secret"),
        ("executor", {"RUNSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                      "RUNSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                      "RUNSTREAM_KAFKA_SASL_USERNAME": "executor",
                      "RUNSTREAM_KAFKA_SASL_PASSWORD": "change-me"},
         "SASL password is not set to a real secret"),
        ("ingest", {"RUNSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                    "RUNSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"},
         "needs SASL_USERNAME and SASL_PASSWORD"),
        ("web", {"RUNSTREAM_POSTGRES_DSN": "postgresql://runstream:s3cret-pw@db/rs",
                 "RUNSTREAM_WEB_WRITE_ACCESS": "token", "RUNSTREAM_WEB_WRITE_TOKEN": "change-me"},
         "the web write token is not set to a real secret"),
    ],
)  # fmt: skip
def test_services_refuse_to_start_with_placeholders(
    service: str, env: dict[str, str], says: str
) -> None:
    done = serve(service, env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in " ".join(done.stderr.split()), done.stderr  # rich wraps long lines
    assert "Traceback" not in done.stderr


def test_the_store_without_a_database_says_which_variable_to_set() -> None:
    done = serve("store", {})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no PostgreSQL DSN: set RUNSTREAM_POSTGRES_DSN" in " ".join(done.stderr.split())


def test_the_web_service_without_a_database_says_which_variable_to_set() -> None:
    done = serve("web", {})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no PostgreSQL DSN: set RUNSTREAM_POSTGRES_DSN" in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr
