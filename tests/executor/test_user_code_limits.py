"""Limits and isolation of user code in the real worker processes (issues #16, #17).

Result size, printed output, file size and process limits, child processes ended
with their variable, a minimal environment without the service's secrets, and
reuse files that the service reads without unpickling them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import pickle
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import h5py
import pytest
import pytest_asyncio
from runstream_common.messages import ProcessingStatus, ResultsReady
from runstream_common.topics import Topics
from runstream_executor import reuse
from runstream_executor.engine import evaluate, load_context, select
from runstream_executor.handlers import RunProcessor
from runstream_executor.pool import PoolConfig, WorkerPool
from runstream_executor.settings import Settings

from .helpers import run_context, target, write_context
from .test_triggers import FixedPools, Recorder, request

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="session")]

OUTPUT_CAP_MB = 10
FILE_SIZE_MB = 16
NPROC = 50_000


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def limited() -> AsyncIterator[WorkerPool]:
    """Workers with explicit limits (the result limit is the default, 1 GiB)."""
    config = PoolConfig(
        size=2,
        time_limit_s=10.0,
        memory_limit_mb=4096,
        max_output_mb=OUTPUT_CAP_MB,
        file_size_mb=FILE_SIZE_MB,
        nproc=NPROC,
        preload="numpy,h5py,extra_data",
    )
    assert config.max_result_mb == 1024
    pool = WorkerPool(config)
    await pool.start()
    yield pool
    await pool.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


HUGE_CONTEXT = """
from damnit_ctx import Variable, Cell
import numpy as np
import xarray as xr

@Variable(title="Huge")
def huge(run):
    return np.zeros(5 * 2**30, dtype=np.uint8)  # calloc'd: 5 GB that were never touched

@Variable(title="Huge list")
def huge_list(run):
    return [np.zeros(2**29, dtype=np.uint8) for _ in range(3)]  # 1.5 GiB in all

@Variable(title="Huge xarray")
def huge_xarray(run):
    return xr.DataArray(np.zeros((2**14, 2**14)), dims=("x", "y"))  # 2 GiB of float64

@Variable(title="Huge coordinates")
def huge_coords(run):
    n = 2**27  # 128 MiB of data, 1 GiB in a (non-index) coordinate
    return xr.DataArray(np.zeros(n, dtype=np.uint8), dims="x", coords={"pos": ("x", np.zeros(n))})

@Variable(title="Huge cell")
def huge_cell(run):
    return Cell(np.zeros(2**31, dtype=np.uint8), summary_value=1.0)

@Variable(title="Huge transient", transient=True)
def huge_transient(run):
    return {"frames": np.zeros(2**31, dtype=np.uint8)}

@Variable(title="Uses transient")
def uses_transient(run, d: "var#huge_transient"):
    return 1

@Variable(title="Small list")
def small_list(run):
    return [np.arange(3.0), np.arange(3.0)]

@Variable(title="Fine")
def fine(run):
    return np.arange(10.0)

@Variable(title="After")
def after(run, f: "var#fine"):
    return float(f.sum())
"""


async def test_results_over_the_size_limit_are_error_values(
    limited: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    ev = await run_context(limited, HUGE_CONTEXT, tmp_path / "ctx", mock_proposal)
    for name in ("huge", "huge_list", "huge_xarray", "huge_coords", "huge_cell", "huge_transient"):
        message, cls = ev.error(name)
        assert cls == "ResultTooLarge", (name, message, cls)
        assert message is not None
        assert "more than the limit of 1.0 GiB per variable" in message
        assert "max_result_mb" in message
    assert "huge returned 5.0 GiB" in (ev.error("huge")[0] or "")
    assert ev.error("uses_transient")[1] == "DependencyError"
    assert ev.outcomes["fine"].status == "ok"
    assert ev.summary("after") == 45.0
    assert ev.outcomes["small_list"].status == "ok"
    assert limited.pids
    assert all(_alive(p) for p in limited.pids)  # no worker was lost


async def test_the_pass_goes_on_and_stores_the_other_variables(
    limited: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    ctx_dir = tmp_path / "ctx"
    write_context(ctx_dir, HUGE_CONTEXT)
    rec = Recorder()
    processor = RunProcessor(Settings(), FixedPools(limited), rec, Topics("t"))  # type: ignore[arg-type]
    report = await processor.process(request(ctx_dir, mock_proposal, "raw"))
    assert report.status is ProcessingStatus.FINISHED
    (results,) = rec.of(ResultsReady)
    by_name = {r.name: r for r in results.results}
    assert by_name["huge"].error_cls == "ResultTooLarge"
    assert by_name["huge_xarray"].error_cls == "ResultTooLarge"
    assert by_name["after"].summary == 45.0
    assert results.fragment is not None
    with h5py.File(results.fragment, "r") as f:
        assert list(f["fine/data"][()]) == list(range(10))
        assert "small_list" in f
        assert "huge" not in f
    # The executor keeps going: the next run is processed normally.
    await processor.process(request(ctx_dir, mock_proposal, "raw", rid="req-2"))
    assert {r.name: r.summary for r in rec.of(ResultsReady)[-1].results}["after"] == 45.0


PRINTING_CONTEXT = """
from damnit_ctx import Variable
import subprocess, sys

@Variable(title="Loud")
def loud(run):
    line = "x" * 999 + "\\n"
    for _ in range(50_000):  # 50 MB
        sys.stdout.write(line)
    sys.stdout.flush()
    subprocess.run(["head", "-c", "5000000", "/dev/zero"], check=True)  # children too
    return 1

@Variable(title="Later")
def later(run, x: "var#loud"):
    print("printed after the cap")
    return 2
"""


async def test_printed_output_is_capped_per_pass(
    limited: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    ctx_dir = tmp_path / "ctx"
    ctx = await load_context(limited, write_context(ctx_dir, PRINTING_CONTEXT))
    log_file = tmp_path / "logs" / "r1-p1234.out"
    outcomes = await evaluate(
        limited,
        ctx,
        target(mock_proposal, ctx_dir),
        select(ctx, "all"),
        parallel=1,
        log_file=str(log_file),
    )
    assert outcomes["loud"].status == "ok"
    assert outcomes["later"].status == "ok"
    size = log_file.stat().st_size
    cap = OUTPUT_CAP_MB * 2**20
    assert cap <= size < cap + 4096
    tail = log_file.read_bytes()[cap:].decode()
    assert "[runstream: output truncated: this pass printed more than 10.0 MiB" in tail
    assert "loud printed" in tail
    assert "dropped]" in tail
    assert "printed after the cap" not in tail


SPAWNING_CONTEXT = """
from damnit_ctx import Variable
import subprocess, time
from pathlib import Path

def _spawn(name):
    # A shell that starts a detached child and exits: the child is orphaned.
    subprocess.run(["sh", "-c", f"setsid sleep 1000 >/dev/null 2>&1 & echo $! > {name}.pid"],
                   check=True)
    while not Path(f"{name}.pid").read_text().strip():
        time.sleep(0.01)
    return int(Path(f"{name}.pid").read_text())

@Variable(title="Spawns")
def spawns(run):
    return _spawn("spawns")

@Variable(title="Spawns and hangs")
def hangs(run):
    _spawn("hangs")
    time.sleep(600)
"""


async def test_processes_a_variable_starts_end_with_it(
    limited: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    ctx_dir = tmp_path / "ctx"
    try:
        ev = await run_context(limited, SPAWNING_CONTEXT, ctx_dir, mock_proposal, parallel=1)
        pid = int((ctx_dir / "spawns.pid").read_text())
        assert ev.summary("spawns") == pid
        assert not _alive(pid), "the background sleep outlived its variable"
        # On a timeout the worker is killed, and the orphans it adopted with it.
        assert ev.error("hangs")[1] == "TimeLimitExceeded"
        hung = int((ctx_dir / "hangs.pid").read_text())
        for _ in range(100):
            if not _alive(hung):
                break
            await asyncio.sleep(0.05)
        assert not _alive(hung), "the background sleep outlived its timed-out variable"
    finally:
        for name in ("spawns", "hangs"):
            with contextlib.suppress(OSError, ValueError):
                _kill(int((ctx_dir / f"{name}.pid").read_text()))


RLIMIT_CONTEXT = """
from damnit_ctx import Variable
import resource

@Variable(title="Writes big")
def writes_big(run):
    with open("big.bin", "wb") as f:
        f.write(b"\\0" * (20 * 2**20))
    return 1

@Variable(title="Limits")
def limits(run):
    return str([resource.getrlimit(resource.RLIMIT_FSIZE)[0], resource.getrlimit(resource.RLIMIT_NPROC)[0]])
"""


async def test_file_size_and_process_limits(
    limited: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    ev = await run_context(limited, RLIMIT_CONTEXT, tmp_path / "ctx", mock_proposal)
    message, cls = ev.error("writes_big")
    assert cls == "OSError", message
    assert "File too large" in (message or "")
    assert (tmp_path / "ctx" / "big.bin").stat().st_size <= FILE_SIZE_MB * 2**20
    assert ev.summary("limits") == str([FILE_SIZE_MB * 2**20, NPROC])
    assert all(_alive(p) for p in limited.pids)  # EFBIG, not SIGXFSZ: the workers live


SECRETS_CONTEXT = """
from damnit_ctx import Variable
import os

@Variable(title="Secrets")
def secrets(run):
    found = {k: v for k, v in os.environ.items()
             if k.startswith("RUNSTREAM") or "SECRET" in k or "s3cr3t" in v}
    return repr(sorted(found.items()))

@Variable(title="Allowed")
def allowed(run):
    return os.environ.get("RS_TEST_ALLOWED", "missing") + "," + ("PATH" in os.environ and "path")
"""


async def test_workers_do_not_see_the_services_secrets(
    tmp_path: Path, mock_proposal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNSTREAM_POSTGRES_DSN", "postgresql://svc:s3cr3t@db/runstream")
    monkeypatch.setenv("RUNSTREAM_KAFKA_SASL_PASSWORD", "s3cr3t-kafka")
    monkeypatch.setenv("RUNSTREAM_SLURM_TOKEN", "s3cr3t-jwt")
    monkeypatch.setenv("MY_SECRET_TOKEN", "s3cr3t-other")
    monkeypatch.setenv("RS_TEST_ALLOWED", "yes")
    settings = Settings(workers=1, parallel_variables=1, preload="numpy", worker_env="RS_TEST_*")
    pool = WorkerPool(settings.pool_config())
    await pool.start()
    try:
        ctx_dir = tmp_path / "ctx"
        write_context(ctx_dir, SECRETS_CONTEXT)
        rec = Recorder()
        processor = RunProcessor(settings, FixedPools(pool), rec, Topics("t"))  # type: ignore[arg-type]
        await processor.process(request(ctx_dir, mock_proposal, "raw"))
    finally:
        await pool.close()
    (results,) = rec.of(ResultsReady)
    by_name = {r.name: r.summary for r in results.results}
    assert by_name["secrets"] == "[]"
    assert by_name["allowed"] == "yes,path"


def _planting_context(marker: Path) -> str:
    payload = (
        "import os\n"
        "class Boom:\n"
        "    def __reduce__(self):\n"
        f"        return (os.system, ('touch {marker}',))\n"
    )
    return f"""
from damnit_ctx import Variable
import json, os, pickle
from pathlib import Path
import numpy as np

{payload}

@Variable(title="Base")
def base(run):
    # Plant a pickle wherever the service keeps (or kept) this run's reuse data.
    for name in json.loads(Path("plant.json").read_text()):
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_bytes(pickle.dumps({{"base": Boom()}}))
    return np.arange(10.0)

@Variable(title="Calibrated", data="proc")
def calibrated(run, b: "var#base"):
    return float(b.sum())
"""


async def test_planted_pickles_are_never_loaded_by_the_service(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    marker = tmp_path / "pwned"
    ctx_dir = tmp_path / "ctx"
    source = write_context(ctx_dir, _planting_context(marker))
    settings = Settings()
    base = ctx_dir / settings.reuse_subdir
    current = reuse.reuse_path(base, 1234, 1, source.hash)
    legacy = base / f"p1234_r1.{hashlib.sha256(source.source.encode()).hexdigest()[:24]}.pkl"
    (ctx_dir / "plant.json").write_text(json.dumps([str(current), str(legacy)]))

    # The reuse reader, on a planted pickle: ignored, never unpickled.
    current.parent.mkdir(parents=True)
    current.write_bytes(pickle.dumps({"x": 1}))
    assert reuse.load_raw(current) == {}

    rec = Recorder()
    processor = RunProcessor(settings, FixedPools(pool), rec, Topics("t"))  # type: ignore[arg-type]
    await processor.process(request(ctx_dir, mock_proposal, "raw"))
    await processor.process(request(ctx_dir, mock_proposal, "proc", rid="req-2"))
    await asyncio.sleep(0.2)
    assert not marker.exists(), "the service unpickled a file the context planted"
    raw, proc = rec.of(ResultsReady)
    assert {r.name: r.error_cls for r in raw.results} == {"base": None}
    assert [(r.name, r.summary) for r in proc.results] == [("calibrated", 45.0)]


def _forging_context(marker: Path) -> str:
    return f"""
from damnit_ctx import Variable
import os, pickle, stat, struct

class Boom:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))

@Variable(title="Forges a reply")
def forges(run):
    # Write a reply frame of our own on every socket or pipe this process holds.
    frame = pickle.dumps({{"ok": True, "status": "ok", "boom": Boom()}}, protocol=4)
    for fd in map(int, os.listdir("/proc/self/fd")):
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode):
                os.write(fd, struct.pack("!Q", len(frame)) + frame)
        except OSError:
            pass
    return 1
"""


async def test_a_forged_reply_frame_is_refused_and_ends_only_its_worker(
    limited: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    marker = tmp_path / "pwned-service"
    ev = await run_context(limited, _forging_context(marker), tmp_path / "ctx", mock_proposal)
    await asyncio.sleep(0.2)
    assert not marker.exists(), "the service unpickled what user code wrote on its channel"
    message, cls = ev.error("forges")
    assert cls == "ProtocolViolation", message
    assert "posix.system" in (message or "") or "os.system" in (message or "")
    await limited.settle()
    again = await run_context(limited, HUGE_CONTEXT, tmp_path / "ctx2", mock_proposal)
    assert again.summary("after") == 45.0  # the pool goes on with a new worker


async def test_processes_started_while_a_context_loads_end_with_the_load(
    limited: WorkerPool, tmp_path: Path
) -> None:
    ctx_dir = tmp_path / "ctx"
    code = SPAWNING_CONTEXT + f'\n_spawn("{ctx_dir / "at_import"}")\n'
    try:
        ctx = await load_context(limited, write_context(ctx_dir, code))
        assert "spawns" in ctx.variables
        pid = int((ctx_dir / "at_import.pid").read_text())
        assert not _alive(pid), "a process started by the context's module code outlived the load"
    finally:
        with contextlib.suppress(OSError, ValueError):
            _kill(int((ctx_dir / "at_import.pid").read_text()))
