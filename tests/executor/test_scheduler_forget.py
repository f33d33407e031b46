"""The issue's scheduler bug (#16): workers holding values of a pass are told to forget them.

The old scheduler overwrote its set of holders (``inputs, holders = plan``); since the
rewrite a pass keeps values only in its home worker and tells that one to forget. The
one way left for a value to stay elsewhere: a variable evaluated beside the home whose
value was asked for as a pickle (kept for later proc/cluster passes) but cannot be
pickled, so the worker pins it. That worker must be told to forget the pass too.
In memory (fake workers): what is sent to whom is the point.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from runstream_executor.context import ContextSource, LoadedContext, VarDef
from runstream_executor.engine import Pass, RunTarget
from runstream_executor.pool import Worker

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="session")]


class FakeWorker(Worker):
    def __init__(self, name: str) -> None:  # no Worker.__init__: there is no process
        self.name = name
        self.dead = False
        self.requests: list[dict[str, Any]] = []
        self.kept: set[tuple[str, str]] = set()

    async def request(self, msg: dict[str, Any], **limits: Any) -> dict[str, Any]:  # type: ignore[override]
        self.requests.append(msg)
        if msg["op"] == "forget":
            self.kept = {k for k in self.kept if k[0] != msg["session"]}
            return {"ok": True}
        if msg["name"] == "slow":
            await asyncio.sleep(0.2)  # keeps the home busy, so "handle" runs beside it
        # like the worker: a value asked for as a pickle that cannot be pickled stays here
        pinned = bool(msg["keep"]) and (bool(msg["pin"]) or msg["name"] == "handle")
        if pinned:
            self.kept.add((msg["session"], msg["name"]))
        value = None if pinned else (b"pickle" if msg["pickle"] else None)
        return {"ok": True, "status": "ok", "pinned": pinned, "value": value, "duration": 0.0}


class FakePool:
    def __init__(self) -> None:
        self.config = SimpleNamespace(share="", time_limit_s=30.0)
        self.home = FakeWorker("home")
        self.helper = FakeWorker("helper")
        self.idle = [self.helper]

    async def acquire(self, prefer: Any = None) -> FakeWorker:
        return self.home

    def try_acquire(self) -> FakeWorker | None:
        return self.idle.pop() if self.idle else None

    async def release(self, worker: FakeWorker) -> None:
        if worker is self.helper:
            self.idle.append(worker)

    def is_idle(self, worker: FakeWorker) -> bool:
        return worker in self.idle


def var(name: str) -> VarDef:
    return VarDef(name, name, None, None, (), "raw", False, False, None, None, (), ())


async def test_a_helper_that_pinned_a_value_is_told_to_forget_it(tmp_path: Path) -> None:
    source = ContextSource(path=str(tmp_path / "context.py"), source="", hash="h", revision=0)
    ctx = LoadedContext(source=source, variables={"slow": var("slow"), "handle": var("handle")})
    pool = FakePool()
    target = RunTarget(1, 1, "/p", str(tmp_path), "/p/raw", "/p/proc")
    async with Pass(pool, ctx, target, parallel=2) as run_pass:  # type: ignore[arg-type]
        outcomes = await run_pass.run(["slow", "handle"], keep={"handle"})
        session = run_pass.session
    assert {o.status for o in outcomes.values()} == {"ok"}
    assert any(r["op"] == "eval" and r["name"] == "handle" for r in pool.helper.requests)
    assert pool.helper.kept == set(), "the helper still keeps the pass's value"
    assert {"op": "forget", "session": session} in pool.helper.requests
