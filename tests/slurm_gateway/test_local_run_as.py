"""Local-backend jobs run as another user and cannot reach the gateway's Slurm key.

The gateway runs as a real process (``runstream serve slurm-gateway``) holding the
local Slurm cluster's JWT key twice: as its key file and in its environment. A
``cluster=True`` variable then tries to read both from inside the job. With
``local.run_as`` (the job user of deploy/local/slurm.sh) it gets nothing; without it
(the control, same job) it reads both, so the test can tell the difference.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import textwrap
from pathlib import Path

import pytest
from runstream_common.admin import ensure_topics
from runstream_common.messages import ResultsReady, Selection
from runstream_common.settings import KafkaSettings
from support.services import System

from .conftest import REPO, SlurmCluster
from .helpers import job_request
from .kafka_helpers import producer, send
from .test_cluster_variable_e2e import collect_results, make_run

pytestmark = pytest.mark.integration

MARKER = "RUNSTREAM_SLURM_GATEWAY_TOKEN__KEY"

CONTEXT = """
from damnit_ctx import Variable
import os

KEY_FILE = {key_file!r}
MARKER = {marker!r}.encode()


def _read(path):
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        return type(exc).__name__


def _ancestors():
    pid, found = os.getpid(), []
    while pid > 1:
        with open(f"/proc/{{pid}}/stat") as fh:
            pid = int(fh.read().rsplit(")", 1)[1].split()[1])
        found.append(pid)
    return found


@Variable(title="What the job can reach", cluster=True)
def reach(run):
    key = _read(KEY_FILE)
    key = f"read {{len(key)}} bytes" if isinstance(key, bytes) else key
    leaked = any(
        isinstance(env, bytes) and MARKER in env
        for env in (_read(f"/proc/{{pid}}/environ") for pid in _ancestors())
    )
    own = sorted(k for k in os.environ if "TOKEN" in k or "JWT" in k or "POSTGRES" in k)
    return f"uid={{os.getuid()}} key={{key}} environ_leak={{leaked}} env={{own}}"
"""


def gateway_env(kafka: KafkaSettings, slurm: SlurmCluster, journal: Path, context_dir: Path,
                run_as: str | None) -> dict[str, str]:  # fmt: skip
    python = REPO / ".venv" / "bin" / "python"  # the job user can run it (slurm.sh install)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env.update(
        {
            "RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "RUNSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
            "RUNSTREAM_SLURM_GATEWAY_BACKEND": "local",
            "RUNSTREAM_SLURM_GATEWAY_LOCAL__JOURNAL_DIR": str(journal),
            "RUNSTREAM_SLURM_GATEWAY_SETTINGS_WAIT_S": "0",
            "RUNSTREAM_SLURM_GATEWAY_TOKEN__SOURCE": "hs256",
            "RUNSTREAM_SLURM_GATEWAY_TOKEN__KEY_FILE": str(slurm.jwt_key),
            # the same key in the gateway's environment, where a job might look for it
            MARKER: "base64:" + base64.b64encode(slurm.jwt_key.read_bytes()).decode(),
            "RUNSTREAM_SLURM_GATEWAY_JOB__TIME": "5",
            "RUNSTREAM_SLURM_GATEWAY_JOB__COMMAND_PREFIX": json.dumps(
                [str(python), "-m", "runstream_executor.job"]
            ),
            "RUNSTREAM_SLURM_GATEWAY_JOB__EXTRA_ENV": json.dumps(
                {
                    "HOME": str(context_dir),
                    "RUNSTREAM_EXECUTOR_WORKERS": "1",
                    "RUNSTREAM_EXECUTOR_PRELOAD": "numpy",
                }
            ),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if run_as:
        env["RUNSTREAM_SLURM_GATEWAY_LOCAL__RUN_AS"] = run_as
    return env


async def reach_of_a_job(kafka: KafkaSettings, slurm: SlurmCluster, job_dir: Path,
                         run_as: str | None) -> str:  # fmt: skip
    """Run the ``reach`` variable as a local job of a gateway process; its value."""
    context_dir = job_dir / ("as-user" if run_as else "as-gateway")
    context_dir.mkdir(mode=0o777)
    context_dir.chmod(0o777)
    (context_dir / "context.py").write_text(
        textwrap.dedent(CONTEXT.format(key_file=str(slurm.jwt_key), marker=MARKER))
    )
    proposal_dir = context_dir / "p001234"
    make_run(proposal_dir)
    logs = job_dir / f"logs-{run_as or 'gateway'}"
    logs.mkdir()
    system = System(
        env=gateway_env(kafka, slurm, logs / "journal", context_dir, run_as), log_dir=logs
    )
    request = f"reach-{run_as or 'gateway'}"
    req = job_request(
        1234, 1, str(context_dir), proposal_dir=str(proposal_dir), request_id=request,
        selection=Selection(names=("reach",)),
    )  # fmt: skip
    await system.start("slurm-gateway")
    try:
        async with producer(kafka) as p:
            await send(p, kafka, req)
        results, _ = await collect_results(kafka, request)
    finally:
        system.stop()
    values = [r for msg in results if isinstance(msg, ResultsReady) and msg.request_id == request
              for r in msg.results
              if r.name == "reach"]  # fmt: skip
    log = (context_dir / "slurm_logs" / "r1-p1234.out").read_text(errors="replace")
    assert len(values) == 1, f"{system.logs()}\n----- job log -----\n{log[-3000:]}"
    assert values[0].error is None, values[0].error
    return str(values[0].summary)


@pytest.mark.timeout(300)
async def test_local_jobs_run_as_another_user_cannot_read_the_gateways_slurm_key(
    slurm: SlurmCluster, kafka_settings: KafkaSettings, job_dir: Path
) -> None:
    assert os.geteuid() == 0, "the gateway must be able to switch users for this test"
    await ensure_topics(kafka_settings, kafka_settings.topics.all())
    job_uid = pwd.getpwnam(slurm.user).pw_uid

    confined = await reach_of_a_job(kafka_settings, slurm, job_dir, run_as=slurm.user)
    assert confined == f"uid={job_uid} key=PermissionError environ_leak=False env=[]"

    # The control: the same job as the gateway's own user reads the key and the environment.
    exposed = await reach_of_a_job(kafka_settings, slurm, job_dir, run_as=None)
    assert exposed.startswith(f"uid={os.geteuid()} key=read ")
    assert "environ_leak=True" in exposed
