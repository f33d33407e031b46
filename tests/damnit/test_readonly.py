"""runs.sqlite on a read-only file system (a read-only bind mount of the file): runstream
goes on ingesting into PostgreSQL, reports the failure (store log, ``runstream damnit
status``, ``runstream damnit sync``), retries, and catches up once the file is writable."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import DamnitStack

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(600),
    pytest.mark.asyncio(loop_scope="session"),
]

CONTEXT = """
from damnit_ctx import Variable

@Variable(title="Trains")
def n_trains(run):
    return len(run.train_ids)
"""


def _mount_read_only(path: Path) -> None:
    for args in (["--bind", str(path), str(path)], ["-o", "remount,bind,ro", str(path)]):
        done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"mount {' '.join(args)}: {done.stderr}"


def _unmount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True, check=False)


async def test_read_only_file_system_is_reported_and_retried(shared_stack: Any) -> None:
    stack: DamnitStack = await shared_stack(CONTEXT, 3104)
    stack.make_runs([1, 2, 3])
    await stack.process([1])
    await stack.wait_projected([1], ("n_trains",))
    _mount_read_only(stack.sqlite)
    try:
        await stack.process([2, 3])

        async def ingested() -> bool:
            values = await stack.values()
            return (2, "n_trains") in values and (3, "n_trains") in values

        await stack.wait_for(ingested, "runs 2 and 3 in PostgreSQL despite the file")

        async def reported() -> Any:
            done = stack.runstream("damnit", "status", str(stack.proposal), "--json")
            info = json.loads(done.stdout)
            return info if info["last_error"] else None

        info = await stack.wait_for(reported, "the failure in `runstream damnit status`", 60)
        assert "readonly" in info["last_error"], info
        assert info["runs_behind"] == 2
        assert set(stack.sqlite_runs()) == {1}
        sync = stack.runstream("damnit", "sync", str(stack.proposal), "--wait", "30")
        assert sync.returncode == 1
        assert "readonly" in sync.stderr.replace("\n", " "), sync.stderr
        assert "DAMNIT projection of proposal" in stack.system.procs["store"].log.read_text()
    finally:
        _unmount(stack.sqlite)

    await stack.wait_projected([1, 2, 3], ("n_trains",))

    async def healed() -> bool:
        done = stack.runstream("damnit", "status", str(stack.proposal), "--json")
        info = json.loads(done.stdout)
        return done.returncode == 0 and info["last_error"] is None and info["runs_behind"] == 0

    await stack.wait_for(healed, "a clean status after the file system is writable", 60)


async def test_switched_off_deleted_and_rebuilt(shared_stack: Any) -> None:
    stack: DamnitStack = await shared_stack(CONTEXT, 3105)
    stack.make_runs([1, 2, 3])
    await stack.process([1])
    await stack.wait_projected([1], ("n_trains",))
    db_id = stack.db_id()

    # Switched off for this proposal: runstream goes on, the file is left alone.
    off = stack.runstream("config", str(stack.proposal), "damnit_projection", "off")
    assert off.returncode == 0, off.stdout + off.stderr
    await stack.process([2])

    async def ingested() -> bool:
        return (2, "n_trains") in await stack.values()

    await stack.wait_for(ingested, "run 2 in PostgreSQL")
    sync = stack.runstream("damnit", "sync", str(stack.proposal), "--wait", "30")
    assert sync.returncode == 1
    assert "switched off" in sync.stderr
    assert set(stack.sqlite_runs()) == {1}

    # Back on: it catches up.
    on = stack.runstream("config", str(stack.proposal), "damnit_projection", "on")
    assert on.returncode == 0, on.stdout + on.stderr
    await stack.wait_projected([1, 2], ("n_trains",))

    # A deleted file comes back, with the same db_id (GUIs keep their topic).
    stack.sqlite.unlink()
    await stack.process([3])
    await stack.wait_projected([1, 2, 3], ("n_trains",))
    assert stack.db_id() == db_id

    rebuilt = stack.runstream("damnit", "sync", str(stack.proposal), "--rebuild", "--wait", "60")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "3 runs written" in rebuilt.stdout
    assert stack.db_id() == db_id
    status = stack.runstream("damnit", "status", str(stack.proposal), "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["topic"] == f"test.damnit.db-{db_id}"
