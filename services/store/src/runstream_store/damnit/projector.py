"""The DAMNIT projection: keeps each proposal's ``runs.sqlite`` in step with PostgreSQL.

Handlers call :meth:`Projector.touch` after their PostgreSQL commit (and after the
runstream feed); it only records what changed and wakes the proposal's worker, so a
slow or failing file system never holds up ingestion. The worker gathers everything
pending for the proposal, reads it from PostgreSQL, writes it to ``runs.sqlite`` in one
SQLite transaction (in a thread) and only then publishes DAMNIT's messages on
``<prefix>.damnit.db-{db_id}``. A failure (read-only or full file system, a locked
database, PostgreSQL down) is logged, recorded in ``damnit_projections.last_error``
and retried with back-off; the pending work is kept.

Convergence: PostgreSQL numbers every change of a run (``runs.changed_seq``) and of a
proposal's variables/settings (``proposals.meta_seq``); the file records the numbers
it holds in the same transaction as the data. ``full`` work (start-up, the periodic
check, ``runstream damnit sync``) compares the two and writes whatever is behind; a
missing file is rebuilt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runstream_common.messages.damnit import (
    DamnitRunValues,
    DamnitVariable,
    RunValuesUpdatedMsg,
    VariableSetMsg,
)
from runstream_common.topics import DAMNIT_TOPIC_PREFIX, damnit_db_topic

from ..adapters.damnit_source import ProjectionSource
from . import blobs, sqlite_file
from .rows import VariableSnapshot

log = logging.getLogger("runstream.store.damnit")

CHUNK_RUNS = 500


class Publisher(Protocol):
    async def publish(self, topic: str, messages: list[bytes]) -> None: ...
    async def ensure_topic(self, topic: str) -> None: ...


PendingEdits = Callable[[int, str, Path, int, list[str]], Awaitable[None]]
PendingVariables = Callable[[int, str, Path, list[str]], Awaitable[None]]


@dataclass
class Work:
    runs: set[int] = field(default_factory=set)
    meta: bool = False
    full: bool = False
    rebuild: bool = False
    messages: list[bytes] = field(default_factory=list)
    waiters: list[asyncio.Future[SyncResult]] = field(default_factory=list)

    def merge(self, other: Work) -> None:
        self.runs |= other.runs
        self.meta |= other.meta
        self.full |= other.full
        self.rebuild |= other.rebuild
        self.messages = other.messages + self.messages
        self.waiters.extend(other.waiters)


@dataclass(frozen=True)
class SyncResult:
    proposal: int
    path: str
    db_id: str
    runs_written: int


class ProjectionDisabled(Exception):
    """The proposal has no context folder, or its projection is switched off."""


class Projector:
    def __init__(
        self,
        source: ProjectionSource,
        publisher: Publisher,
        *,
        topic_prefix: str = DAMNIT_TOPIC_PREFIX,
        retry_min_s: float = 1.0,
        retry_max_s: float = 60.0,
        reconcile_interval_s: float = 60.0,
        linger_s: float = 0.0,
        before_commit: Callable[[], None] | None = None,
        on_new_db: Callable[[str, int], Awaitable[None]] | None = None,
    ) -> None:
        self.source = source
        self.publisher = publisher
        self.topic_prefix = topic_prefix
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.reconcile_interval_s = reconcile_interval_s
        self.linger_s = linger_s
        self.before_commit = before_commit
        self.on_new_db = on_new_db
        self.on_pending_edits: PendingEdits | None = None
        self.on_pending_variables: PendingVariables | None = None
        self._work: dict[int, Work] = {}
        self._workers: dict[int, asyncio.Task[None]] = {}
        self._failures: dict[int, int] = {}
        self._known: dict[int, tuple[str, str]] = {}  # proposal -> (db_id, path) recorded
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # ------------------------------------------------------------------ API for handlers
    def touch(
        self,
        proposal: int,
        runs: Iterable[int] = (),
        *,
        meta: bool = False,
        full: bool = False,
        messages: Iterable[bytes] = (),
    ) -> None:
        """Note a committed change; the proposal's worker writes it soon. Never raises."""
        if self._closed:
            return
        self._add(proposal, Work(runs=set(runs), meta=meta, full=full, messages=list(messages)))

    async def sync(self, proposal: int, *, rebuild: bool = False) -> SyncResult:
        """Bring the file up to date now (or rebuild it); raises what stopped it."""
        future: asyncio.Future[SyncResult] = asyncio.get_running_loop().create_future()
        self._add(proposal, Work(full=True, meta=True, rebuild=rebuild, waiters=[future]))
        return await future

    def _add(self, proposal: int, work: Work) -> None:
        current = self._work.get(proposal)
        if current is None:
            self._work[proposal] = work
        else:
            current.merge(work)
        worker = self._workers.get(proposal)
        if worker is None or worker.done():
            self._workers[proposal] = asyncio.get_running_loop().create_task(
                self._worker(proposal), name=f"damnit-projection-{proposal}"
            )

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Catch up every proposal now, then check them periodically."""
        task = asyncio.get_running_loop().create_task(self._reconcile_loop())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        self._closed = True
        for task in [*self._tasks, *self._workers.values()]:
            task.cancel()
        for task in [*self._tasks, *self._workers.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _reconcile_loop(self) -> None:
        while not self._closed:
            try:
                for proposal in await self.source.proposals():
                    self.touch(proposal, full=True)
            except Exception as exc:  # PostgreSQL away: try again next round
                log.warning("DAMNIT projection: cannot list proposals: %s", exc)
            await asyncio.sleep(self.reconcile_interval_s)

    # ------------------------------------------------------------------ the worker
    async def _worker(self, proposal: int) -> None:
        while not self._closed and (work := await self._next(proposal)) is not None:
            try:
                result = await self._project(proposal, work)
            except ProjectionDisabled as exc:
                log.debug("DAMNIT projection of proposal %d: %s", proposal, exc)
                self._failures.pop(proposal, None)
                for waiter in work.waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
            except Exception as exc:
                failures = self._failures[proposal] = self._failures.get(proposal, 0) + 1
                delay = min(self.retry_max_s, self.retry_min_s * 2 ** (failures - 1))
                log.error(
                    "DAMNIT projection of proposal %d failed (attempt %d, again in %.0f s): %s",
                    proposal, failures, delay, _describe(exc),
                )  # fmt: skip
                with contextlib.suppress(Exception):
                    await self.source.record_error(proposal, _describe(exc))
                for waiter in work.waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
                work.waiters = []
                again = self._work.setdefault(proposal, Work())
                again.merge(work)
                await asyncio.sleep(delay)
            else:
                if self._failures.pop(proposal, None):
                    log.info("DAMNIT projection of proposal %d is writing again", proposal)
                for waiter in work.waiters:
                    if not waiter.done():
                        waiter.set_result(result)
        self._workers.pop(proposal, None)

    async def _next(self, proposal: int) -> Work | None:
        """The proposal's changes so far, after ``linger_s``: a burst is written at once."""
        if self.linger_s and proposal in self._work:
            await asyncio.sleep(self.linger_s)
        return self._work.pop(proposal, None)

    async def _project(self, proposal: int, work: Work) -> SyncResult:
        target = await self.source.target(proposal)
        if target is None or not target.context_dir:
            raise ProjectionDisabled(f"proposal {proposal} has no context folder yet")
        if not target.enabled:
            raise ProjectionDisabled(f"the DAMNIT database of proposal {proposal} is switched off")
        folder = Path(target.context_dir)
        if not await asyncio.to_thread(folder.is_dir):  # removed, or not mounted here
            raise ProjectionDisabled(
                f"the context folder {folder} of proposal {proposal} is missing"
            )
        path = folder / sqlite_file.DB_NAME
        state = await asyncio.to_thread(sqlite_file.read_state, path, proposal)
        if state is not None and state.proposal not in (None, proposal):
            raise RuntimeError(f"{path} belongs to proposal {state.proposal}, not {proposal}")
        rebuild = work.rebuild or state is None
        db_id = (state.db_id if state else None) or target.db_id or sqlite_file.new_db_id()
        runs = set(work.runs)
        if rebuild or work.full or runs:
            seqs = await self.source.run_seqs(proposal)
            have = state.seqs if state is not None and not rebuild else {}
            if rebuild or work.full:
                runs |= set(seqs)
            # a run the file already holds at its latest change number is not written again
            runs = {r for r in runs if r not in seqs or have.get(r, -1) < seqs[r]}
        meta_behind = state is None or target.meta_seq > state.meta_seq
        meta = await self.source.meta(proposal) if (work.meta or rebuild or meta_behind) else None
        if not (runs or meta or rebuild or work.messages):
            # Nothing behind: no write (no lock a GUI could wait for). Only look for GUI
            # edits whose announcement never came (AMORE_BROKER=none, Kafka was down).
            await self._remember(proposal, db_id, path)
            await self._scan_edits(proposal, db_id, path)
            return SyncResult(proposal=proposal, path=str(path), db_id=db_id, runs_written=0)
        if not (runs or meta or rebuild):  # only announcements owed (processing, job states)
            return await self._announce_only(proposal, db_id, path, work)
        ordered = sorted(runs)
        chunks = [ordered[i : i + CHUNK_RUNS] for i in range(0, len(ordered), CHUNK_RUNS)] or [[]]
        written, first = 0, True
        for chunk in chunks:
            snaps = await self.source.runs(proposal, chunk)
            found = await asyncio.to_thread(blobs.read_blobs, target.context_dir, proposal, snaps)
            batch = sqlite_file.Batch(
                proposal=proposal,
                db_id=db_id,
                runs=snaps,
                blobs=found,
                meta=meta if first else None,
                rebuild=rebuild and first,
            )
            outcome = await self._write(path, batch)
            db_id, first = outcome.db_id, False
            written += outcome.runs_written
            await self._remember(proposal, outcome.db_id, path)
            # Owed announcements stay in ``work`` until sent: a failure retries them.
            work.messages = [*self._messages(proposal, outcome), *work.messages]
            if work.messages:
                await self.publisher.publish(
                    damnit_db_topic(db_id, self.topic_prefix), work.messages
                )
            work.messages = []
            self._pending(proposal, db_id, path, outcome)
        return SyncResult(proposal=proposal, path=str(path), db_id=db_id, runs_written=written)

    async def _announce_only(self, proposal: int, db_id: str, path: Path, work: Work) -> SyncResult:
        """Publish owed announcements that change nothing in the file: no write, no lock."""
        await self._remember(proposal, db_id, path)
        await self.publisher.publish(damnit_db_topic(db_id, self.topic_prefix), work.messages)
        work.messages = []
        return SyncResult(proposal=proposal, path=str(path), db_id=db_id, runs_written=0)

    async def _write(self, path: Path, batch: sqlite_file.Batch) -> sqlite_file.Written:
        try:
            return await asyncio.to_thread(
                sqlite_file.write_batch, path, batch, before_commit=self.before_commit
            )
        except sqlite3.DatabaseError as exc:
            if "not a database" not in str(exc) and "malformed" not in str(exc):
                raise
            kept = await asyncio.to_thread(sqlite_file.move_aside, path)
            log.error("DAMNIT projection: %s is unreadable (%s); kept as %s, rebuilding",
                      path, exc, kept)  # fmt: skip
            raise

    async def _remember(self, proposal: int, db_id: str, path: Path) -> None:
        """Record the database's id and place (once, or after a failure: clears last_error)."""
        key = (db_id, str(path))
        if self._known.get(proposal) == key and not self._failures.get(proposal):
            return
        await self.source.record_db(proposal, db_id, str(path))
        await self.publisher.ensure_topic(damnit_db_topic(db_id, self.topic_prefix))
        if self.on_new_db is not None:
            await self.on_new_db(db_id, proposal)
        self._known[proposal] = key

    async def _scan_edits(self, proposal: int, db_id: str, path: Path) -> None:
        if self.on_pending_edits is None:
            return
        in_file = await asyncio.to_thread(sqlite_file.manual_rows, path, proposal)
        if not in_file:
            return
        in_pg = await self.source.manual_times(proposal)
        outcome = sqlite_file.Written(db_id=db_id)
        for (run, name), written in in_file.items():
            if written > in_pg.get((run, name), float("-inf")):
                outcome.pending.setdefault(run, []).append(name)
        self._pending(proposal, db_id, path, outcome)

    def _messages(self, proposal: int, outcome: sqlite_file.Written) -> list[bytes]:
        out = [variable_set(v) for v in outcome.variables]
        for run in sorted(outcome.changed):
            names = outcome.changed[run]
            msg = RunValuesUpdatedMsg(
                data=DamnitRunValues(proposal=proposal, run=run, values=dict.fromkeys(names))
            )
            out.append(msg.model_dump_json().encode())
        return out

    def _pending(self, proposal: int, db_id: str, path: Path, outcome: sqlite_file.Written) -> None:
        jobs: list[Awaitable[None]] = []
        if outcome.pending_variables and self.on_pending_variables is not None:
            jobs.append(self.on_pending_variables(proposal, db_id, path, outcome.pending_variables))
        if self.on_pending_edits is not None:
            for run, names in outcome.pending.items():
                jobs.append(self.on_pending_edits(proposal, db_id, path, run, names))
        for job in jobs:
            task = asyncio.ensure_future(job)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


def variable_set(var: VariableSnapshot) -> bytes:
    msg = VariableSetMsg(
        data=DamnitVariable(
            name=var.name,
            title=var.title,
            description=var.description,
            tags=list(var.tags),
            attributes=None,
            type=var.user_type,
        )
    )
    return msg.model_dump_json().encode()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
