"""Message contracts: every type round-trips through its topic's parser; bad input is explained."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from runstream_common import parsers
from runstream_common.errors import MessageFormatError, PermanentError, TransientError
from runstream_common.messages import (
    CommandRejected,
    FacilityEvent,
    JobCancelRequested,
    JobRequested,
    JobState,
    JobStateChanged,
    JobStateSet,
    ProcessingStateChanged,
    ProcessingStateSet,
    ProposalRegistered,
    ProposalRemoved,
    ProposalSettingsSet,
    ReprocessRequested,
    ResultsReady,
    RunAdded,
    RunKnown,
    RunRequested,
    Selection,
    SetComment,
    SetProposalSetting,
    SetTags,
    SetUserVariable,
    ValuesUpdated,
    ValueView,
    VariableDefinition,
    VariableResult,
    VariablesDefined,
    VariablesSet,
)
from runstream_common.settings import KafkaSettings, PostgresSettings
from runstream_common.topics import Topics, dlq, run_key

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

_run = RunRequested(
    request_id="2212:42:raw",
    proposal=2212,
    run=42,
    trigger="raw",
    selection=Selection(names=("xgm",), match=("energy",)),
    context_dir="/ctx",
    proposal_dir="/data/p002212",
    correlation_id="corr-1",
)
_processing = ProcessingStateChanged(
    processing_id="p1", request_id="r1", proposal=1, run=2, trigger="raw", status="running"
)
_job_state = JobStateChanged(
    job_request_id="j", proposal=1, run=2, state=JobState.FAILED, exit_status=3, signal=None
)

CASES: list[tuple[parsers.Parser[Any], Any]] = [
    (parsers.PROPOSALS, ProposalRegistered(proposal=2212, context_dir="/ctx", data_root="/d")),
    (parsers.PROPOSALS, ProposalRemoved(proposal=2212)),
    (parsers.PROPOSAL_SETTINGS, ProposalSettingsSet(proposal=1, settings={"concurrent_jobs": 3})),
    (parsers.RUNS, _run),
    (parsers.RUN_CATALOG, RunKnown(proposal=1, run=2, raw_seen=True, source={"cycle": "202401"})),
    (
        parsers.REPROCESS,
        ReprocessRequested(proposal=1, runs="all", selection=Selection(match=("x",))),
    ),
    (parsers.REPROCESS, ReprocessRequested(proposal=1, runs=(1, 2, 3), trigger="proc")),
    (
        parsers.RESULTS,
        ResultsReady(
            result_id="res",
            request_id="r",
            processing_id="p",
            proposal=1,
            run=2,
            trigger="all",
            context_hash="abc",
            revision=123,
            context_dir="/ctx",
            fragment="/ctx/extracted_data/fragments/p1_r2.res.h5",
            start_time=1.5,
            results=(
                VariableResult(name="a", summary=1.5, units="mJ", max_diff=0.1),
                VariableResult(name="b", summary=(1.0, -2.0), summary_type="complex"),
                VariableResult(name="c", summary_type="thumbnail", in_fragment=True),
                VariableResult(name="d", error="boom", error_cls="ZeroDivisionError"),
                VariableResult(name="e", returned_none=True),
            ),
        ),
    ),
    (
        parsers.RESULTS,
        VariablesDefined(
            proposal=1,
            context_hash="abc",
            revision=1,
            variables=(VariableDefinition(name="a", title="A", tags=("x",), units="mJ"),),
        ),
    ),
    (parsers.PROCESSING, _processing),
    (
        parsers.JOB_REQUESTS,
        JobRequested(
            job_request_id="r:cluster",
            request_id="r",
            processing_id="p",
            proposal=1,
            run=2,
            trigger="raw",
            selection=Selection(names=("heavy",)),
            context_dir="/c",
            proposal_dir="/p",
        ),
    ),
    (parsers.JOB_CONTROL, JobCancelRequested(proposal=1, run=2)),
    (parsers.JOB_STATE, _job_state),
    (parsers.COMMANDS, SetComment(proposal=1, run=2, text="good run")),
    (parsers.COMMANDS, SetUserVariable(proposal=1, run=2, name="sample", value="3.5")),
    (parsers.COMMANDS, SetTags(proposal=1, variable="a", add=("x",), remove=("y",))),
    (parsers.COMMANDS, SetProposalSetting(proposal=1, key="slurm_partition", value=None)),
    (
        parsers.UPDATES,
        ValuesUpdated(proposal=1, run=2, values={"a": ValueView(summary=1, units="mJ")}),
    ),
    (
        parsers.UPDATES,
        VariablesSet(proposal=1, variables=(VariableDefinition(name="a", title="A"),)),
    ),
    (parsers.UPDATES, RunAdded(proposal=1, run=2, added_at=3.0)),
    (parsers.UPDATES, ProcessingStateSet(state=_processing)),
    (parsers.UPDATES, JobStateSet(state=_job_state)),
    (
        parsers.UPDATES,
        CommandRejected(proposal=1, command_event_id="e", command_type="set_tags", reason="no"),
    ),
    (parsers.UPDATES, ProposalSettingsSet(proposal=1, settings={"slurm_time": "1:00:00"})),
]


@pytest.mark.parametrize(("parser", "message"), CASES, ids=lambda v: getattr(v, "type", None))
def test_every_message_round_trips_through_its_topic_parser(parser: Any, message: Any) -> None:
    encoded = parsers.encode(message)
    decoded = parser.parse(encoded)
    assert decoded == message
    assert type(decoded) is type(message)
    body = json.loads(encoded)
    assert body["type"] == message.type
    assert {"event_id", "schema_version", "time", "correlation_id"} <= body.keys()


def test_a_message_on_the_wrong_topic_is_rejected_with_the_allowed_types() -> None:
    with pytest.raises(MessageFormatError) as info:
        parsers.RUNS.parse(parsers.encode(SetComment(proposal=1, run=2, text="x")))
    assert "run_requested" in str(info.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"not json", "Invalid JSON"),
        (b'{"event": "migration_complete", "proposal": 1}', "run: Field required"),
        (
            b'{"event": "migration_complete", "proposal": 1, "run": "forty"}',
            "run: Input should be a valid integer",
        ),
        (b'{"event": "migration_complete", "proposal": [1], "run": 2}', "proposal"),
        (None, "empty record"),
    ],
)
def test_malformed_facility_events_name_the_problem(raw: bytes | None, expected: str) -> None:
    with pytest.raises(MessageFormatError) as info:
        parsers.FACILITY.parse(raw)
    assert expected in str(info.value)
    assert isinstance(info.value, PermanentError)


def test_facility_events_accept_numeric_strings_and_keep_extra_fields() -> None:
    event = parsers.FACILITY.parse(
        b'{"event": "migration_complete", "proposal": "2212", "run": "42", "path": "/x", "cycle": 202401}'
    )
    assert isinstance(event, FacilityEvent)
    assert (event.proposal, event.run) == (2212, 42)
    assert event.extras() == {"path": "/x", "cycle": 202401}


def test_messages_are_immutable_and_reject_unknown_fields() -> None:
    with pytest.raises(Exception, match="frozen"):
        _run.run = 3  # type: ignore[misc]
    body = json.loads(parsers.encode(_run))
    body["surprise"] = 1
    with pytest.raises(MessageFormatError, match="surprise"):
        parsers.RUNS.parse(json.dumps(body))


def test_topic_names_share_a_configurable_prefix_and_have_dead_letter_twins() -> None:
    topics = Topics("beamline7")
    assert all(name.startswith("beamline7.") for name in topics.all())
    assert len(set(topics.all())) == len(topics.all())
    assert set(topics.compacted()) <= set(topics.all())
    assert dlq(topics.runs) == "beamline7.runs.dlq"
    assert KafkaSettings(topic_prefix="x").topics.results == "x.results"
    assert run_key(2212, 42) == b"2212/42"


def test_secrets_are_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNSTREAM_KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("RUNSTREAM_POSTGRES_DSN", "postgresql://u:pw-secret@h/db")
    kafka = KafkaSettings()
    pg = PostgresSettings()
    assert isinstance(kafka.sasl_password, SecretStr)
    assert kafka.sasl_password.get_secret_value() == "hunter2"
    for text in (repr(kafka), str(kafka), kafka.model_dump_json(), repr(pg), pg.model_dump_json()):
        assert "hunter2" not in text
        assert "pw-secret" not in text


def test_kafka_security_options_are_passed_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("RUNSTREAM_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("RUNSTREAM_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("RUNSTREAM_KAFKA_SASL_PASSWORD", "pw")
    kwargs = KafkaSettings().security_kwargs()
    assert kwargs == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "pw",
    }


def test_error_tree_separates_permanent_from_transient() -> None:
    from runstream_common import errors

    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, errors.RunstreamError):
            if obj in (errors.RunstreamError, PermanentError, TransientError):
                continue
            assert issubclass(obj, PermanentError) != issubclass(obj, TransientError), name


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


SERVICES = {
    "ingest": "runstream_ingest",
    "executor": "runstream_executor",
    "store": "runstream_store",
    "slurm-gateway": "runstream_slurm_gateway",
}


def test_no_service_imports_another_service() -> None:
    for folder, own in SERVICES.items():
        others = set(SERVICES.values()) - {own}
        for path in (REPO / "services" / folder).rglob("*.py"):
            leaked = _imports(path) & others
            assert not leaked, f"{path.relative_to(REPO)} imports {sorted(leaked)}"
    for path in (REPO / "libs" / "common").rglob("*.py"):
        leaked = _imports(path) & set(SERVICES.values())
        assert not leaked, f"{path.relative_to(REPO)} imports {sorted(leaked)}"


def test_common_stays_light() -> None:
    code = (
        "import sys, runstream_common.kafka, runstream_common.parsers, runstream_common.admin;"
        "heavy = {'h5py', 'asyncpg', 'numpy', 'xarray', 'extra_data'} & set(sys.modules);"
        "print(sorted(heavy)); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
