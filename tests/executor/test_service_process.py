"""The executor's own process is out of reach of its workers' code (issue #17).

Workers run as the service's user; the service makes itself non-dumpable, so
their code cannot read its environment (secrets) or memory through /proc.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

USER = os.environ.get("RUNSTREAM_SLURM_USER", "slurmtest")


PROC_SNOOPING_CONTEXT = """
from damnit_ctx import Variable
import os

def _ancestors():
    pid = os.getpid()
    while pid > 1:
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
        yield pid

@Variable(title="Snoops")
def snoops(run):
    found = []
    for pid in _ancestors():
        for name in ("environ", "mem"):
            try:
                with open(f"/proc/{pid}/{name}", "rb") as f:
                    if name == "environ" and b"s3cr3t" in f.read():
                        found.append(name)
            except OSError as exc:
                pass
    return ",".join(sorted(set(found))) or "nothing"
"""

SERVICE_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from runstream_executor.context import ContextSource
from runstream_executor.engine import RunTarget, evaluate, load_context, select
from runstream_executor.pool import PoolConfig, WorkerPool

async def main(folder, protect):
    pool = WorkerPool(PoolConfig(size=1, preload="numpy", protect_service=protect))
    await pool.start()
    try:
        ctx = await load_context(pool, ContextSource.read(Path(folder) / "context.py"))
        target = RunTarget(1, 1, folder, folder, folder + "/raw", folder + "/proc")
        out = await evaluate(pool, ctx, target, select(ctx, "all"))
    finally:
        await pool.close()
    o = out["snoops"]
    print(json.dumps([o.status, (o.prepared or {}).get("summary"), o.error]))

asyncio.run(main(sys.argv[1], sys.argv[2] == "1"))
"""


async def test_workers_cannot_read_the_service_through_proc(mock_proposal: Path) -> None:
    """The service as an unprivileged user (the local Slurm job user, made by
    ``deploy/local/slurm.sh start``): a worker reading its ancestors' /proc environ
    finds the service's secret only when the service is left dumpable."""
    assert os.geteuid() == 0, "this test switches to the unprivileged user"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        pytest.fail(f"no user {USER}: run deploy/local/slurm.sh start (it creates it)")
    folder = Path(tempfile.mkdtemp(prefix="rs-snoop-"))
    try:
        os.chmod(folder, 0o777)
        shutil.copytree(mock_proposal / "raw" / "r0001", folder / "raw")
        (folder / "context.py").write_text(PROC_SNOOPING_CONTEXT)
        (folder / "service.py").write_text(SERVICE_SCRIPT)
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(folder),
            "RUNSTREAM_POSTGRES_DSN": "postgresql://svc:s3cr3t@db/runstream",
        }
        seen = {}
        for protect in ("1", "0"):
            proc = await asyncio.create_subprocess_exec(
                "setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups",
                sys.executable, str(folder / "service.py"), str(folder), protect,
                env=env, cwd=str(folder),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 120)
            assert proc.returncode == 0, err.decode()[-2000:]
            status, summary, error = json.loads(out.decode().strip().splitlines()[-1])
            assert status == "ok", error
            seen[protect] = summary
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert seen["1"] == "nothing"
    assert seen["0"] == "environ"  # the control: left dumpable, the secret leaks
