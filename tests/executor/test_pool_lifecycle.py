"""The pool's life cycle: idle workers retired and forked again, cancelled requests."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from runstream_executor.memory import children, rss_mb, tree_rss_mb
from runstream_executor.pool import PoolConfig, WorkerPool

from .helpers import run_context

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="session")]

LIGHT = "numpy"


async def _until(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.05)


async def test_idle_workers_are_retired_and_forked_again_when_needed() -> None:
    pool = WorkerPool(PoolConfig(size=2, preload=LIGHT, idle_s=1.0, min_size=1))
    await pool.start()
    try:
        assert len(pool.pids) == 2
        await _until(lambda: len(pool.pids) == 1)  # one was idle long enough
        assert pool.retired == 1
        # Two requests at once: the pool grows back to its size.
        first, second = await asyncio.gather(pool.acquire(), pool.acquire())
        assert first is not second
        assert len(pool.pids) == 2
        replies = await asyncio.gather(
            first.request({"op": "ping"}), second.request({"op": "ping"})
        )
        assert {r["pid"] for r in replies} == {first.pid, second.pid}
        await pool.release(first)
        await pool.release(second)
    finally:
        await pool.close()


async def test_a_cancelled_request_costs_its_worker_not_the_next_request(tmp_path: Path) -> None:
    pool = WorkerPool(PoolConfig(size=1, preload=LIGHT))
    await pool.start()
    try:
        worker = await pool.acquire()
        slow = asyncio.ensure_future(
            worker.request(
                {
                    "op": "load",  # a context file that takes its time to load
                    "source": "import time\ntime.sleep(30)\n",
                    "path": str(tmp_path / "context.py"),
                    "hash": "slow",
                },
                time_limit_s=60,
            )
        )
        await asyncio.sleep(0.3)  # the request is on its way (not a timing assertion)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        # Its reply would have answered the next request: the worker is gone instead.
        assert worker.dead
        await pool.release(worker)
        fresh = await pool.acquire()
        assert fresh is not worker
        assert (await fresh.request({"op": "ping"}))["pid"] == fresh.pid
        await pool.release(fresh)
    finally:
        await pool.close()


async def test_process_tree_memory_is_read_from_proc() -> None:
    pool = WorkerPool(PoolConfig(size=1, preload=LIGHT))
    await pool.start()
    try:
        (pid,) = pool.pids
        assert rss_mb(pid) > 5  # an interpreter with numpy
        assert children(pid) == []
        assert tree_rss_mb(pid) == pytest.approx(rss_mb(pid), rel=0.2)
        assert rss_mb(2**22 + 12345) == 0.0  # no such process
    finally:
        await pool.close()


@pytest.mark.parametrize("rest_zygote", [False, True])
async def test_libraries_a_context_uses_end_up_shared_by_every_worker(
    tmp_path: Path, mock_proposal: Path, rest_zygote: bool
) -> None:
    """The zygote starts light; once a context imports xarray, it preloads it, and the
    worker that imported it alone is forked again (so the library is in memory once).
    A zygote that rests (full pool) has a new one start for that, with xarray."""
    pool = WorkerPool(PoolConfig(size=1, preload=LIGHT, share="xarray", rest_zygote=rest_zygote))
    await pool.start()
    try:
        (first,) = pool.pids
        uses = await run_context(
            pool,
            "from damnit_ctx import Variable\nimport xarray\n\n"
            "@Variable\ndef da(run):\n    return xarray.DataArray([1.0, 2.0]).sum().item()\n",
            tmp_path / "uses",
            mock_proposal,
            parallel=1,
        )
        assert uses.summary("da") == 3.0
        await pool.settle()
        (second,) = pool.pids
        assert second != first  # forked again, from a zygote that now has xarray
        probe = await run_context(
            pool,
            "from damnit_ctx import Variable\nimport sys\n\n"
            "@Variable\ndef has(run):\n    return 'xarray' in sys.modules\n",
            tmp_path / "probe",
            mock_proposal,
            parallel=1,
        )
        assert probe.summary("has") is True  # inherited, not imported by this context
        assert pool.pids == [second]  # nothing new to share: the worker stays
    finally:
        await pool.close()


async def test_a_pass_whose_worker_dies_computes_what_died_with_it_again(
    tmp_path: Path, mock_proposal: Path
) -> None:
    """One worker per pass keeps values and data; a crash loses them, not the results."""
    import h5py
    import numpy as np
    from runstream_executor.engine import Pass, load_context, select

    from .helpers import target, write_context

    calls = tmp_path / "calls"
    calls.mkdir()
    source = write_context(
        tmp_path / "ctx",
        f"""
from damnit_ctx import Variable
import os
import numpy as np

CALLS = {str(calls)!r}

def count(name):
    open(os.path.join(CALLS, f"{{name}}-{{os.getpid()}}"), "w").close()

@Variable
def base(run):
    count("base")
    return np.arange(4.0)

@Variable
def image(run):
    count("image")
    return np.ones((8, 8))

@Variable
def crash(run):
    os._exit(7)

@Variable
def after(run, b: "var#base"):
    return float(b.sum())
""",
    )
    pool = WorkerPool(PoolConfig(size=1, preload=LIGHT))
    await pool.start()
    try:
        ctx = await load_context(pool, source)
        names = select(ctx, "all")
        fragment = tmp_path / "fragment.h5"
        async with Pass(pool, ctx, target(mock_proposal, tmp_path / "ctx"), hold=True) as p:
            outcomes = await p.run(names)
            stored = [n for n in names if outcomes[n].held_by is not None]
            failed = await p.write(fragment, stored, start_time=None)
        assert outcomes["crash"].error_cls == "WorkerCrashed"
        assert outcomes["after"].prepared is not None
        assert outcomes["after"].prepared["summary"] == 6.0
        assert failed == {}
        assert sorted(stored) == ["base", "image"]
        with h5py.File(fragment, "r") as f:  # the data computed again reached the fragment
            np.testing.assert_array_equal(f["image/data"][()], np.ones((8, 8)))
            np.testing.assert_array_equal(f["base/data"][()], np.arange(4.0))
        # Computed by the first worker, lost with it, computed again by its replacement.
        assert len(list(calls.glob("base-*"))) == 2
        assert len(list(calls.glob("image-*"))) == 2
    finally:
        await pool.close()


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


async def test_a_full_pool_keeps_a_light_reaper_instead_of_the_zygote() -> None:
    """``rest_zygote``: with every worker up, the zygote turns into a bare interpreter that
    stays their parent (a fraction of the preloaded zygote's memory) and still reports how
    they end; a worker forked later comes from a new zygote, which rests in turn."""
    pool = WorkerPool(PoolConfig(size=2, rest_zygote=True, protect_service=False))
    await pool.start()
    try:
        await _until(lambda: "rs_ctxrunner.reaper" in _cmdline(_parent(pool.pids[0])))
        first, second = pool.pids
        parent = _parent(first)
        assert _parent(second) == parent
        assert rss_mb(parent) < 25  # the preloaded zygote: ~60 MiB
        worker = await pool.acquire()
        worker.kill()
        assert await asyncio.wait_for(worker.wait_exit(), 10) == -9  # reported by the reaper
        await pool.release(worker)
        await pool.settle()
        await _until(lambda: len(pool.pids) == 2)
        (new,) = set(pool.pids) - {first, second}
        await _until(lambda: "rs_ctxrunner.reaper" in _cmdline(_parent(new)))
        assert _parent(new) != parent  # a new zygote forked it, and rests now
        reply = await pool.request({"op": "ping"})
        assert reply["ok"]
        ours = {parent, _parent(new), *pool.pids}
    finally:
        await pool.close()
    await _until(lambda: not ours & set(children(os.getpid())))  # reapers and workers gone


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


def _open_h5(pid: int) -> list[str]:
    names = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            name = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if name.endswith(".h5"):
            names.append(name)
    return names


async def test_a_worker_closes_the_run_files_when_a_pass_ends(
    tmp_path: Path, mock_proposal: Path
) -> None:
    """EXtra-data keeps up to 128 files open per process (~1 MiB of HDF5 caches each):
    a worker closes them when its pass ends, so an idle worker does not grow run by run."""
    from runstream_executor.engine import Pass, load_context, select

    from .helpers import target, write_context

    source = write_context(
        tmp_path / "ctx",
        "from damnit_ctx import Variable\n\n"
        "@Variable\ndef trains(run):\n    return len(run.train_ids)\n\n"
        "@Variable\ndef stamps(run):\n    return len(run.train_timestamps())\n",
    )
    pool = WorkerPool(PoolConfig(size=1, preload=LIGHT))
    await pool.start()
    try:
        ctx = await load_context(pool, source)
        names = select(ctx, "all", (), ())
        async with Pass(pool, ctx, target(mock_proposal, tmp_path / "ctx"), hold=True) as p:
            outcomes = await p.run(names)
            assert outcomes["stamps"].status == "ok"  # read from the files
            home = await p._home()
            assert _open_h5(home.pid)  # the run's files, open while the pass runs
            await p.write(tmp_path / "fragment.h5", names, start_time=None)
        await _until(lambda: _open_h5(home.pid) == [], timeout=10)  # after its reply
    finally:
        await pool.close()
