"""Admission by memory (issue #13): large variables of runs in flight take turns.

The rule in memory (fake workers report what each variable used, as real ones do),
and the real worker's report of its peak: what the rule learns from.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from runstream_executor.admission import Admission
from runstream_executor.context import ContextSource, LoadedContext, VarDef
from runstream_executor.engine import Pass, RunTarget, load_context, select
from runstream_executor.pool import Worker, WorkerPool

from .helpers import target, write_context

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="session")]

USED_MB = {"big": 200.0, "small": 1.0}


class FakeWorker(Worker):
    """Answers evals after a short while, reporting what the variable used; logs intervals."""

    def __init__(self, log: list[tuple[str, str, float, float]], label: str) -> None:
        self.dead = False
        self.pinned = set()
        self.log = log
        self.label = label

    async def request(self, msg: dict[str, Any], **limits: Any) -> dict[str, Any]:  # type: ignore[override]
        if msg["op"] != "eval":
            return {"ok": True}
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.sleep(0.05 if msg["name"] == "big" else 0.01)
        self.log.append((self.label, msg["name"], began, loop.time()))
        return {
            "ok": True,
            "status": "ok",
            "pinned": False,
            "value": None,
            "duration": 0.0,
            "peak_mb": USED_MB[msg["name"]],
        }


class FakePool:
    """One home worker per pass (as a pool of several workers would give)."""

    def __init__(self, admission: Admission) -> None:
        self.config = SimpleNamespace(share="", time_limit_s=30.0)
        self.guard = SimpleNamespace(admission=admission)
        self.log: list[tuple[str, str, float, float]] = []
        self.count = 0

    async def acquire(self, prefer: Any = None) -> FakeWorker:
        if prefer is not None:  # a pass taking back the home it lent
            return prefer  # type: ignore[no-any-return]
        self.count += 1
        return FakeWorker(self.log, f"w{self.count}")

    def try_acquire(self) -> None:
        return None

    async def release(self, worker: Any) -> None:
        return None

    def is_idle(self, worker: Any) -> bool:
        return True  # a lent home goes to nobody else here


def _ctx(tmp_path: Path) -> LoadedContext:
    source = ContextSource(path=str(tmp_path / "context.py"), source="", hash="h", revision=0)
    variables = {
        n: VarDef(n, n, None, None, (), "raw", False, False, None, None, (), ())
        for n in ("big", "small")
    }
    return LoadedContext(source=source, variables=variables)


async def _passes(pool: FakePool, ctx: LoadedContext, tmp_path: Path, runs: list[int]) -> None:
    async def one(run: int) -> None:
        target = RunTarget(1, run, "/p", str(tmp_path), "/p/raw", "/p/proc")
        async with Pass(pool, ctx, target, parallel=1) as run_pass:  # type: ignore[arg-type]
            outcomes = await run_pass.run(["big", "small"])
        assert {o.status for o in outcomes.values()} == {"ok"}

    await asyncio.gather(*(one(r) for r in runs))


def _overlaps(log: list[tuple[str, str, float, float]], name: str) -> bool:
    spans = sorted((a, b) for _, n, a, b in log if n == name)
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))


async def test_large_variables_of_runs_in_flight_take_turns(tmp_path: Path) -> None:
    admission = Admission(limit_mb=300)  # one "big" (200) fits, two do not
    pool = FakePool(admission)
    ctx = _ctx(tmp_path)
    await _passes(pool, ctx, tmp_path, [1])  # the first run: nothing known, nothing waits
    assert admission.expected[("h", "big")] == 200.0
    pool.log.clear()
    await _passes(pool, ctx, tmp_path, [2, 3, 4])
    assert not _overlaps(pool.log, "big"), pool.log
    assert admission.waited > 0
    assert admission.running == 0
    assert admission.running_mb == 0.0
    # a pass whose large variable had to wait computed its small one meanwhile
    orders = []
    for label in {w for w, *_ in pool.log}:
        mine = sorted((a, n) for w, n, a, _ in pool.log if w == label)
        orders.append([n for _, n in mine])
    assert ["small", "big"] in orders, orders


async def test_without_a_limit_large_variables_run_together(tmp_path: Path) -> None:
    admission = Admission(limit_mb=0)
    pool = FakePool(admission)
    ctx = _ctx(tmp_path)
    await _passes(pool, ctx, tmp_path, [1])
    pool.log.clear()
    await _passes(pool, ctx, tmp_path, [2, 3])
    assert _overlaps(pool.log, "big")
    assert admission.waited == 0


async def test_one_large_variable_always_runs_whatever_its_size() -> None:
    admission = Admission(limit_mb=100)
    admission.learn(("h", "huge"), 5000.0)
    need = admission.need(("h", "huge"))
    assert need == 5000.0
    assert admission.try_take(need)
    assert not admission.try_take(need)
    assert admission.try_take(admission.need(("h", "unknown")))  # small or unknown: never waits
    admission.give(need)
    assert admission.try_take(need)


BIG = """
from damnit_ctx import Variable
import numpy as np

@Variable(title="Big")
def big(run):
    return float(np.ones(12_000_000).sum())  # 96 MB at once

@Variable(title="Small")
def small(run):
    return 1
"""


async def test_a_worker_reports_how_much_a_variable_grew_it(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    source = write_context(tmp_path / "ctx", BIG)
    ctx = await load_context(pool, source)
    admission = Admission(limit_mb=1)
    run_pass = Pass(pool, ctx, target(mock_proposal, tmp_path / "ctx"), parallel=1)
    run_pass.admission = admission
    async with run_pass:
        outcomes = await run_pass.run(select(ctx, "all", (), ()))
    assert outcomes["big"].status == "ok"
    assert 80 <= admission.expected[(source.hash, "big")] < 400
    assert admission.expected[(source.hash, "small")] < 16


class KeepingWorker(Worker):
    """A fake worker that keeps pinned values per pass (session), as real ones do.

    A variable whose pinned input is not in this worker fails: so a pass that lent its
    home must get that very worker back.
    """

    def __init__(self, log: list[tuple[str, str, int, float, float]], pid: int) -> None:
        self.pid = pid
        self.dead = False
        self.pinned = set()
        self.imported = set()
        self.idle_since = 0.0
        self.log = log
        self.kept: set[tuple[str, str]] = set()

    def running(self) -> bool:
        return True

    def _rss_mb(self, *, children: bool = True) -> float:
        return 50.0

    async def request(self, msg: dict[str, Any], **limits: Any) -> dict[str, Any]:  # type: ignore[override]
        if msg["op"] != "eval":
            self.kept = {k for k in self.kept if k[0] != msg.get("session")}
            return {"ok": True}
        loop = asyncio.get_running_loop()
        began = loop.time()
        name, session = msg["name"], msg["session"]
        missing = [v for kind, v in msg["inputs"].values() if (session, v) not in self.kept]
        await asyncio.sleep(0.05 if name == "big" else 0.01)
        self.log.append((name, session, self.pid, began, loop.time()))
        if missing:
            return {"ok": True, "status": "error", "error": f"lost {missing}", "pinned": False}
        if msg["pin"]:
            self.kept.add((session, name))
        return {
            "ok": True,
            "status": "ok",
            "pinned": bool(msg["pin"]),
            "value": None,
            "duration": 0.0,
            "peak_mb": USED_MB[name.rstrip("0123456789")],
        }


def _chain_ctx(tmp_path: Path) -> LoadedContext:
    """``small`` (kept at home) -> ``big`` (needs it) , and ``small2`` (independent)."""
    source = ContextSource(path=str(tmp_path / "context.py"), source="", hash="h", revision=0)
    arg = {"param": "s", "annotation": "var#small", "matches": ["small"], "glob": False}
    variables = {
        "small": VarDef("small", "small", None, None, (), "raw", False, False, None, None, (), ()),
        "big": VarDef(
            "big", "big", None, None, (), "raw", False, False, None, None, (arg,), ("small",)
        ),
        "small2": VarDef(
            "small2", "small2", None, None, (), "raw", False, False, None, None, (), ()
        ),
    }
    return LoadedContext(source=source, variables=variables)


async def test_a_pass_waiting_for_admission_lends_its_home_and_gets_it_back(
    tmp_path: Path,
) -> None:
    """Two workers, three runs: while run A's large variable computes and run B's waits,
    run C's small variables use B's home (B lent it); B then gets its own home back, with
    the value its large variable needs, and the large variables never overlap."""
    from runstream_executor.pool import PoolConfig

    admission = Admission(limit_mb=300)
    admission.learn(("h", "big"), 200.0)
    pool = WorkerPool(PoolConfig(size=2, recycle_rss_mb=0, protect_service=False))
    pool.guard.admission = admission  # type: ignore[attr-defined]
    log: list[tuple[str, str, int, float, float]] = []
    for pid in (101, 102):
        worker = KeepingWorker(log, pid)
        pool._all.add(worker)
        pool._idle.append(worker)
    ctx = _chain_ctx(tmp_path)
    sessions: dict[int, str] = {}

    async def one(run: int) -> None:
        await asyncio.sleep(0.001 * run)  # start in this order
        target = RunTarget(1, run, "/p", str(tmp_path), "/p/raw", "/p/proc")
        async with Pass(pool, ctx, target, parallel=1) as run_pass:
            sessions[run] = run_pass.session
            outcomes = await run_pass.run(["small", "big", "small2"])
        assert {n: o.status for n, o in outcomes.items()} == dict.fromkeys(outcomes, "ok")

    await asyncio.gather(*(one(r) for r in (1, 2, 3)))
    by = {(n, s): (pid, a, b) for n, s, pid, a, b in log}
    bigs = sorted(by[("big", sessions[r])][1:] for r in (1, 2, 3))
    assert all(b[0] >= a[1] for a, b in itertools.pairwise(bigs)), bigs  # one at a time
    first_big_end = bigs[0][1]
    started_small = [by[("small", sessions[r])][1] for r in (1, 2, 3)]
    assert sorted(started_small)[2] < first_big_end  # the third run did not wait for a worker
    for r in (1, 2, 3):  # each large variable ran where its input was kept
        assert by[("big", sessions[r])][0] == by[("small", sessions[r])][0]
    assert not any(w.pinned for w in pool._all)  # nothing left marked as lent
    assert admission.running == 0


async def test_a_new_revision_of_the_context_starts_from_what_the_last_one_used() -> None:
    admission = Admission(limit_mb=300)
    admission.learn(("rev1", "big"), 200.0, also=("file:/ctx/context.py", "big"))
    assert admission.need(("rev2", "big")) == 0.0  # nothing known of this revision itself
    assert admission.need(("rev2", "big"), ("file:/ctx/context.py", "big")) == 200.0
    admission.learn(("rev2", "big"), 20.0, also=("file:/ctx/context.py", "big"))
    assert admission.need(("rev2", "big"), ("file:/ctx/context.py", "big")) == 0.0  # small now


async def test_admission_defaults_to_the_memory_budget() -> None:
    from runstream_executor.settings import Settings

    assert Settings(memory_budget_mb=4000).effective_admission_memory_mb == 4000
    assert Settings(memory_budget_mb=4000, admission_memory_mb=0).effective_admission_memory_mb == 0
    assert Settings(admission_memory_mb=300).effective_admission_memory_mb == 300


async def test_when_room_frees_a_pass_whose_lent_home_is_free_goes_first(tmp_path: Path) -> None:
    """X waits first, but its lent home is busy (another pass uses it); Y's is free: Y's
    large variable takes the room, X's follows once its home is back."""
    from runstream_executor.pool import PoolConfig

    admission = Admission(limit_mb=300)
    admission.learn(("h", "big"), 200.0)
    pool = WorkerPool(PoolConfig(size=2, recycle_rss_mb=0, protect_service=False))
    pool.guard.admission = admission  # type: ignore[attr-defined]
    log: list[tuple[str, str, int, float, float]] = []
    w1, w2 = KeepingWorker(log, 101), KeepingWorker(log, 102)
    for worker in (w1, w2):
        pool._all.add(worker)
        pool._idle.append(worker)
    ctx = _chain_ctx(tmp_path)
    assert admission.try_take(200.0)  # a large variable of some other run is computing
    sessions: dict[str, str] = {}

    async def one(label: str) -> None:
        target = RunTarget(1, 1, "/p", str(tmp_path), "/p/raw", "/p/proc")
        async with Pass(pool, ctx, target, parallel=1) as run_pass:
            sessions[label] = run_pass.session
            outcomes = await run_pass.run(["small", "big", "small2"])
        assert {o.status for o in outcomes.values()} == {"ok"}

    async def until(predicate: Any) -> None:
        for _ in range(500):
            if predicate():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("condition not met")

    other = await pool.acquire()  # w1 busy: X's home is w2
    x = asyncio.ensure_future(one("x"))
    await until(lambda: w2.pinned)  # X waits for room, its home w2 lent
    borrower = await pool.acquire(prefer=w2)  # another pass uses X's home meanwhile
    await pool.release(other)
    y = asyncio.ensure_future(one("y"))
    await until(lambda: w1.pinned)  # Y waits too, its home w1 lent and free
    admission.give(200.0)  # the room frees
    await until(lambda: any(n == "big" for n, *_ in log))
    await pool.release(borrower)  # X's home comes back
    await asyncio.gather(x, y)
    bigs = [s for n, s, *_ in sorted(log, key=lambda e: e[3]) if n == "big"]
    assert bigs == [sessions["y"], sessions["x"]]
