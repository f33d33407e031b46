"""Request/response shapes per API version: v0.0.38 as the real daemon speaks it
(see test_rest_integration.py) and v0.0.40+ against their OpenAPI documents."""

from __future__ import annotations

import pytest
from runstream_common.errors import ConfigurationError
from runstream_common.messages import JobState
from runstream_slurm_gateway.jobspec import JobSpec
from runstream_slurm_gateway.slurm_api import SlurmApi

from .openapi_shapes import SHAPES, violations

pytestmark = pytest.mark.unit

NEW_VERSIONS = sorted(SHAPES)


def spec(**kw: object) -> JobSpec:
    base: dict[str, object] = dict(
        job_request_id="jr-1",
        proposal=2212,
        run=42,
        name="r42-p2212-runstream",
        argv=("/venv/bin/python", "-m", "runstream_executor.job", "--run", "42"),
        environment={"PATH": "/usr/bin:/bin", "A": "x=y"},
        working_dir="/data/p2212/usr/runstream",
        log_path="/data/p2212/usr/runstream/slurm_logs/r42-p2212.out",
        time_limit_min=120,
        cpus=4,
        memory_mb=2048,
        partition="upex",
    )
    base.update(kw)
    return JobSpec(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("version", NEW_VERSIONS)
def test_submit_body_fits_the_published_job_desc(version: str) -> None:
    api = SlurmApi.for_version(version)
    body = api.submit_body(spec(), "#!/bin/bash\ntrue\n", hold=True)
    shape = SHAPES[version]["job_desc_msg"]
    assert set(body) == {"job"}
    assert violations(body["job"], {"object": shape}) == []
    job = body["job"]
    assert job["environment"] == ["PATH=/usr/bin:/bin", "A=x=y"]
    assert job["time_limit"] == {"set": True, "infinite": False, "number": 120}
    assert job["memory_per_node"]["number"] == 2048
    assert job["hold"] is True
    assert job["script"].startswith("#!/bin/bash")
    assert job["comment"] == "runstream:runstream job_request_id=jr-1 proposal=2212 run=42"


@pytest.mark.parametrize("version", NEW_VERSIONS)
def test_paths_exist_in_the_published_document(version: str) -> None:
    api = SlurmApi.for_version(version)
    prefix = f"/slurm/{version}"
    used = {
        api.submit_path,
        api.jobs_path,
        api.ping_path,
        api.job_path(7).replace("/7", "/{job_id}"),
    }
    assert {p.removeprefix(prefix) for p in used} <= SHAPES[version]["paths"]
    # a job update (release) takes a job_desc_msg: our body must fit it too
    assert violations(api.release_body(), {"object": SHAPES[version]["job_desc_msg"]}) == []


def _verbose(status: list[str], rc: int | None, sig: int | None) -> dict[str, object]:
    unset = {"set": False, "infinite": False, "number": 0}
    return {
        "status": status,
        "return_code": {"set": True, "infinite": False, "number": rc} if rc is not None else unset,
        "signal": {
            "id": {"set": True, "infinite": False, "number": sig} if sig is not None else unset,
            "name": "TERM" if sig == 15 else "",
        },
    }


CASES = [
    # job_state, exit_code, priority, hold, reason -> state, held, exit, signal
    (["COMPLETED"], _verbose(["SUCCESS"], 0, None), 1, False, "None", JobState.COMPLETED, False, 0, None),
    (["FAILED"], _verbose(["ERROR"], 3, None), 1, False, "NonZeroExitCode", JobState.FAILED, False, 3, None),
    (["CANCELLED"], _verbose(["SIGNALED"], 0, 15), 1, False, "None", JobState.CANCELLED, False, None, 15),
    (["TIMEOUT"], _verbose(["SIGNALED"], 0, 15), 1, False, "TimeLimit", JobState.TIMEOUT, False, None, 15),
    (["PENDING"], _verbose(["PENDING"], None, None), 0, True, "JobHeldUser", JobState.PENDING, True, None, None),
    (["PENDING"], _verbose(["PENDING"], None, None), 100, False, "Priority", JobState.PENDING, False, None, None),
    (["RUNNING"], _verbose(["PENDING"], None, None), 100, False, "None", JobState.RUNNING, False, None, None),
    (["CANCELLED", "COMPLETING"], _verbose(["SIGNALED"], 0, 9), 1, False, "None", JobState.RUNNING, False, None, None),
    (["OUT_OF_MEMORY"], _verbose(["ERROR"], 0, 9), 1, False, "OutOfMemory", JobState.FAILED, False, 0, None),
]  # fmt: skip


@pytest.mark.parametrize("version", NEW_VERSIONS)
@pytest.mark.parametrize(
    ("states", "exit_code", "priority", "hold", "reason", "state", "held", "status", "sig"), CASES
)
def test_job_info_of_the_published_shape_decodes(
    version: str,
    states: list[str],
    exit_code: dict[str, object],
    priority: int,
    hold: bool,
    reason: str,
    state: JobState,
    held: bool,
    status: int | None,
    sig: int | None,
) -> None:
    raw = {
        "job_id": 17,
        "name": "r42-p2212-runstream",
        "comment": "runstream:runstream job_request_id=jr-1 proposal=2212 run=42",
        "job_state": states,
        "state_reason": reason,
        "exit_code": exit_code,
        "priority": {"set": True, "infinite": False, "number": priority},
        "hold": hold,
        "standard_output": "/x/slurm_logs/r42-p2212.out",
    }
    assert violations(raw, {"object": SHAPES[version]["job_info"]}) == []
    info = SlurmApi.for_version(version).decode_job(raw)
    assert (info.state, info.held, info.exit_status, info.signal) == (state, held, status, sig)
    assert info.tag is not None
    assert info.tag.job_request_id == "jr-1"
    assert info.log_path == "/x/slurm_logs/r42-p2212.out"


@pytest.mark.parametrize("version", NEW_VERSIONS)
def test_submit_response_job_id(version: str) -> None:
    api = SlurmApi.for_version(version)
    fields = SHAPES[version]["submit_response"]
    body: dict[str, object] = {"job_id": 12, "step_id": "batch", "errors": []}
    if "result" in fields:
        body = {"result": {"job_id": 12, "step_id": "batch"}, "errors": []}
    assert set(body) <= fields
    assert api.submitted_job_id(body) == 12


def test_legacy_shapes_are_what_slurm_22_05_takes() -> None:
    api = SlurmApi.for_version("v0.0.38")
    body = api.submit_body(
        spec(reservation="beamtime", partition="upex"), "#!/bin/sh\n", hold=False
    )
    job = body["job"]
    assert body["script"] == "#!/bin/sh\n"
    assert job["environment"] == {"PATH": "/usr/bin:/bin", "A": "x=y"}
    assert job["time_limit"] == 120
    assert job["memory_per_node"] == 2048
    assert job["reservation"] == "beamtime"
    assert "partition" not in job
    assert api.jobs_path == "/slurm/v0.0.38/jobs"
    assert api.ping_path == "/slurm/v0.0.38/ping"
    info = api.decode_job(
        {"job_id": 3, "job_state": "FAILED", "exit_code": 768, "state_reason": "NonZeroExitCode",
         "priority": 4294901759, "comment": "", "name": "x"}
    )  # fmt: skip
    assert (info.state, info.exit_status, info.signal, info.tag) == (JobState.FAILED, 3, None, None)
    launch = api.decode_job(
        {"job_id": 5, "job_state": "FAILED", "exit_code": 4021, "state_reason": "JobLaunchFailure"}
    )
    assert (launch.exit_status, launch.signal) == (None, None)
    assert launch.reason == "JobLaunchFailure (Slurm exit code 4021)"
    held = api.decode_job(
        {"job_id": 4, "job_state": "PENDING", "priority": 0, "state_reason": "JobHeldUser"}
    )
    assert held.held
    assert held.state is JobState.PENDING


@pytest.mark.parametrize("version", ["v0.0.39", "v1", "0.0.38", "v0.0.36"])
def test_unsupported_versions_are_refused(version: str) -> None:
    with pytest.raises(ConfigurationError):
        SlurmApi.for_version(version)
