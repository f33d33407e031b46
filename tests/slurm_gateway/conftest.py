"""The real one-node Slurm (deploy/local/slurm.sh) and helpers to run the gateway.

Integration tests never skip: if Slurm cannot be started the session fails with
the script's output. A cluster this fixture started is stopped at the end
(``RUNSTREAM_KEEP_SLURM=1`` keeps it).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM_SH = REPO / "deploy" / "local" / "slurm.sh"


def slurm_sh(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SLURM_SH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class SlurmCluster:
    url: str
    user: str
    api_version: str
    jobs_dir: Path
    jwt_key: Path
    token_command: str

    def mint(self, lifespan: int = 600) -> str:
        done = slurm_sh("token", str(lifespan), timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


def _env(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.removeprefix("export ").strip()
        if "=" in line:
            key, _, value = line.partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    started_here = slurm_sh("status", timeout=60).returncode != 0
    if started_here:
        up = slurm_sh("start", timeout=600)
        if up.returncode != 0:
            pytest.fail(
                "could not start Slurm (deploy/local/slurm.sh start):\n"
                + up.stdout[-4000:]
                + up.stderr[-4000:],
                pytrace=False,
            )
    env = _env(slurm_sh("env", timeout=30).stdout)
    yield SlurmCluster(
        url=env["RUNSTREAM_SLURM_GATEWAY_SLURM__URL"],
        user=env["RUNSTREAM_SLURM_GATEWAY_SLURM__USER"],
        api_version=env["RUNSTREAM_SLURM_GATEWAY_SLURM__API_VERSION"],
        jobs_dir=Path(env["RUNSTREAM_SLURM_JOBS_DIR"]),
        jwt_key=Path(env["RUNSTREAM_SLURM_JWT_KEY"]),
        token_command=env["RUNSTREAM_SLURM_GATEWAY_TOKEN__COMMAND"],
    )
    if started_here and not os.environ.get("RUNSTREAM_KEEP_SLURM"):
        slurm_sh("stop", timeout=120)


@pytest.fixture
def job_dir(slurm: SlurmCluster) -> Iterator[Path]:
    """A context dir the unprivileged job user can reach and write (tmp_path cannot);
    removed afterwards."""
    path = slurm.jobs_dir / f"t-{uuid.uuid4().hex[:10]}"
    path.mkdir(mode=0o777)
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)
