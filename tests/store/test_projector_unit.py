"""The DAMNIT projection's batching: a burst of runs is one SQLite transaction, and
announcements that change nothing in the file are published without writing it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from runstream_store.adapters.damnit_source import Target
from runstream_store.damnit import sqlite_file
from runstream_store.damnit.projector import Projector
from runstream_store.damnit.rows import MetaSnapshot, RunSnapshot

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="session")]

P = 4321


class Source:
    """The projection's view of PostgreSQL: runs with a change number each."""

    def __init__(self, context_dir: Path) -> None:
        self.context_dir = context_dir
        self.seqs: dict[int, int] = {}

    async def target(self, proposal: int) -> Target:
        return Target(proposal, str(self.context_dir), True, 0, "db1", None)

    async def proposals(self) -> list[int]:
        return [P]

    async def run_seqs(self, proposal: int) -> dict[int, int]:
        return dict(self.seqs)

    async def runs(self, proposal: int, runs: Sequence[int]) -> list[RunSnapshot]:
        return [RunSnapshot(proposal, r, None, 1.0e9, self.seqs[r]) for r in runs]

    async def meta(self, proposal: int) -> MetaSnapshot:
        return MetaSnapshot(seq=0, variables=())

    async def manual_times(self, proposal: int) -> dict[tuple[int, str], float]:
        return {}

    async def record_db(self, proposal: int, db_id: str, path: str) -> None:
        return None

    async def record_error(self, proposal: int, error: str) -> None:
        raise AssertionError(f"the projection failed: {error}")


class Published:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, messages: list[bytes]) -> None:
        self.messages += [(topic, m) for m in messages]

    async def ensure_topic(self, topic: str) -> None:
        return None


def projector(source: Source, published: Published, linger_s: float) -> Projector:
    return Projector(source, published, topic_prefix="t", linger_s=linger_s)  # type: ignore[arg-type]


def counted_writes(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The runs of every SQLite transaction the projection writes."""
    writes: list[list[int]] = []
    real = sqlite_file.write_batch

    def write_batch(path: Path, batch: sqlite_file.Batch, **kw: Any) -> sqlite_file.Written:
        writes.append([snap.run for snap in batch.runs])
        return real(path, batch, **kw)

    monkeypatch.setattr(sqlite_file, "write_batch", write_batch)
    return writes


async def burst(proj: Projector, source: Source, runs: range) -> None:
    """Runs stored one after another, a few ms apart, as the store handles a burst."""
    for run in runs:
        source.seqs[run] = run
        proj.touch(P, [run])
        await asyncio.sleep(0.01)


def runs_in_file(context_dir: Path) -> set[int]:
    with sqlite3.connect(context_dir / sqlite_file.DB_NAME) as conn:
        return {r[0] for r in conn.execute("SELECT run FROM runstream_projection")}


async def test_a_burst_of_runs_is_written_in_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, published = Source(tmp_path), Published()
    source.seqs[0] = 0
    proj = projector(source, published, linger_s=0.3)
    await proj.sync(P)  # the file exists
    writes = counted_writes(monkeypatch)
    await burst(proj, source, range(1, 6))
    await proj.sync(P)
    assert writes[0] == [1, 2, 3, 4, 5]  # the five changes, together
    assert runs_in_file(tmp_path) == {0, 1, 2, 3, 4, 5}
    await proj.stop()

    # Without the linger, each change is its own transaction (the baseline).
    source2, published2 = Source(tmp_path / "eager"), Published()
    (tmp_path / "eager").mkdir()
    source2.seqs[0] = 0
    eager = projector(source2, published2, linger_s=0)
    await eager.sync(P)
    writes.clear()
    await burst(eager, source2, range(1, 6))
    await eager.sync(P)
    assert len(writes) >= 3
    await eager.stop()


async def test_announcements_alone_do_not_write_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, published = Source(tmp_path), Published()
    source.seqs[1] = 1
    proj = projector(source, published, linger_s=0)
    await proj.sync(P)
    writes = counted_writes(monkeypatch)
    proj.touch(P, [1], messages=[b'{"msg_kind": "processing_finished"}'])
    for _ in range(100):
        if published.messages:
            break
        await asyncio.sleep(0.01)
    assert published.messages == [("t.damnit.db-db1", b'{"msg_kind": "processing_finished"}')]
    assert writes == []  # run 1 is already in the file at its change number
    await proj.stop()
