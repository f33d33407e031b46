"""In-memory ports for the store's handler unit tests (no PostgreSQL, no HDF5, no Kafka).

Each fake keeps the rules of the adapter it stands for, so a test can say what the
handler did through what the port holds afterwards:

- :class:`MemoryDatabase` follows ``adapters/postgres.Repository``: one application per
  ``result_id``, every value into the history, a value of an older revision never
  replacing a newer one, the latest state per processing pass and per job, the same
  :class:`InvalidCommand` reasons for unknown runs, variables and title clashes.
- :class:`MemoryFiles` records merge requests instead of writing HDF5; fragments are
  paths the test declares present.
- :class:`RecordingFeed` and :class:`RecordingProjection` record what would be published
  and which committed changes the DAMNIT projection was told about.

All fakes may share one ``journal`` (a list of ``"port.operation"`` entries) so a test can
check the order of effects across ports.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from runstream_common.errors import InvalidCommand
from runstream_common.messages import (
    ImportDamnit,
    JobStateChanged,
    ProcessingStateChanged,
    ProposalSettingsSet,
    ResultsReady,
    RunKnown,
    VariableDefinition,
)
from runstream_common.topics import proposal_key
from runstream_store.adapters.hdf5_merge import MergeOutcome, MergeRequest
from runstream_store.adapters.postgres import RunRow, VariableRow
from runstream_store.values import StoredValue

M = TypeVar("M", bound=BaseModel)
RunId = tuple[int, int]


@dataclass
class _Variable:
    title: str
    description: str | None = None
    units: str | None = None
    user_type: str | None = None
    data: str = "raw"
    cluster: bool = False
    revision: int | None = None
    tags: dict[str, str] = field(default_factory=dict)  # tag -> source ("context" / "user")


class MemoryDatabase:
    """The Database port in memory, with the Repository's rules."""

    def __init__(self, journal: list[str] | None = None, *, now: float = 1_700_000_100.0) -> None:
        self.journal = journal if journal is not None else []
        self.now = now  # ``added_at`` of runs the results create
        self.applied: set[str] = set()
        self.context_dirs: dict[int, str | None] = {}
        self.runs: dict[RunId, RunRow] = {}
        self.values: dict[RunId, dict[str, StoredValue]] = {}
        self.value_history: dict[tuple[int, int, str], list[tuple[StoredValue, bool]]] = {}
        self.vars: dict[int, dict[str, _Variable]] = {}
        self.proposal_settings: dict[int, dict[str, Any]] = {}
        self.processing: dict[str, ProcessingStateChanged] = {}
        self.jobs: dict[str, JobStateChanged] = {}

    def _ensure_proposal(self, proposal: int, context_dir: str | None) -> None:
        self.context_dirs[proposal] = context_dir or self.context_dirs.get(proposal)

    # ------------------------------------------------------------------ results
    async def is_applied(self, result_id: str) -> bool:
        return result_id in self.applied

    async def current_revisions(
        self, proposal: int, run: int, names: Sequence[str]
    ) -> dict[str, int]:
        current = self.values.get((proposal, run), {})
        return {n: current[n].revision for n in names if n in current}

    async def apply_results(
        self, message: ResultsReady, values: dict[str, StoredValue], winners: set[str]
    ) -> RunRow | None:
        self.journal.append("db.apply_results")
        if message.result_id in self.applied:
            return None
        self.applied.add(message.result_id)
        p, r = message.proposal, message.run
        self._ensure_proposal(p, message.context_dir)
        row = self.runs.get((p, r))
        if row is None:
            row = RunRow(p, r, message.start_time, self.now, announced=False)
        elif message.start_time is not None:
            row = replace(row, start_time=message.start_time)
        self.runs[(p, r)] = row
        current = self.values.setdefault((p, r), {})
        for name, value in values.items():
            superseded = name not in winners
            self.value_history.setdefault((p, r, name), []).append((value, superseded))
            if not superseded and (name not in current or current[name].revision <= value.revision):
                current[name] = value
        return row

    async def current_values(
        self, proposal: int, run: int, names: Sequence[str] | None = None
    ) -> dict[str, StoredValue]:
        current = self.values.get((proposal, run), {})
        return {n: v for n, v in current.items() if names is None or n in names}

    async def history(self, proposal: int, run: int, name: str) -> list[tuple[StoredValue, bool]]:
        """Every recorded value of one variable of one run, oldest first, with its superseded flag."""
        return list(self.value_history.get((proposal, run, name), []))

    # ------------------------------------------------------------------ runs
    async def get_run(self, proposal: int, run: int) -> RunRow | None:
        return self.runs.get((proposal, run))

    async def context_dir(self, proposal: int) -> str | None:
        return self.context_dirs.get(proposal)

    async def register_context_dir(self, proposal: int, context_dir: str) -> None:
        self._ensure_proposal(proposal, context_dir)

    async def record_run_known(self, message: RunKnown, added_at: float) -> RunRow:
        self._ensure_proposal(message.proposal, None)
        key = (message.proposal, message.run)
        row = self.runs.setdefault(key, RunRow(*key, None, added_at, announced=False))
        return row

    async def mark_announced(self, proposal: int, run: int) -> None:
        self.journal.append("db.mark_announced")
        self.runs[(proposal, run)] = replace(self.runs[(proposal, run)], announced=True)

    # ------------------------------------------------------------------ variables
    async def define_variables(
        self,
        proposal: int,
        context_hash: str,
        revision: int,
        variables: Sequence[VariableDefinition],
    ) -> list[VariableDefinition]:
        self._ensure_proposal(proposal, None)
        mine = self.vars.setdefault(proposal, {})
        applied = []
        for var in variables:
            old = mine.get(var.name)
            if old is not None and old.revision is not None and old.revision > revision:
                continue
            tags = {t: s for t, s in (old.tags if old else {}).items() if s != "context"}
            tags.update({t: "context" for t in var.tags if t})
            mine[var.name] = _Variable(
                var.title, var.description, var.units, None, var.data, var.cluster, revision, tags
            )
            applied.append(var)
        return applied

    async def define_user_variable(
        self, proposal: int, name: str, title: str, variable_type: str, description: str | None
    ) -> VariableRow:
        self._ensure_proposal(proposal, None)
        mine = self.vars.setdefault(proposal, {})
        old = mine.get(name)
        if old is not None and old.user_type is None:
            raise InvalidCommand(f"{name!r} is a variable of the context file, not a user variable")
        clash = [n for n, v in mine.items() if v.title == title and n != name]
        if clash:
            raise InvalidCommand(f"the title {title!r} is already used by {clash[0]!r}")
        if old is None:
            mine[name] = _Variable(title, description, user_type=variable_type)
        else:
            old.title, old.description, old.user_type = title, description, variable_type
        return _row(name, mine[name])

    async def variable(self, proposal: int, name: str) -> VariableRow | None:
        var = self.vars.get(proposal, {}).get(name)
        return _row(name, var) if var is not None else None

    async def variables(self, proposal: int) -> list[VariableRow]:
        return [_row(n, v) for n, v in sorted(self.vars.get(proposal, {}).items())]

    async def set_tags(
        self, proposal: int, variable: str, add: Sequence[str], remove: Sequence[str]
    ) -> VariableRow:
        var = self.vars.get(proposal, {}).get(variable)
        if var is None:
            raise InvalidCommand(f"proposal {proposal} has no variable {variable!r}")
        for tag in remove:
            var.tags.pop(tag, None)
        for tag in add:
            var.tags.setdefault(tag, "user")
        return _row(variable, var)

    # ------------------------------------------------------------------ manual values
    async def set_manual_value(
        self, proposal: int, run: int, name: str, value: StoredValue
    ) -> bool:
        self.journal.append("db.set_manual_value")
        if (proposal, run) not in self.runs:
            raise InvalidCommand(f"run {run} of proposal {proposal} is not known")
        history = self.value_history.setdefault((proposal, run, name), [])
        if value.result_id is not None and any(v.result_id == value.result_id for v, _ in history):
            return False
        history.append((value, False))
        self.values.setdefault((proposal, run), {})[name] = value
        return True

    # ------------------------------------------------------------------ settings
    async def set_setting(self, proposal: int, key: str, value: Any | None) -> dict[str, Any]:
        self._ensure_proposal(proposal, None)
        mine = self.proposal_settings.setdefault(proposal, {})
        if value is None:
            mine.pop(key, None)
        else:
            mine[key] = value
        return dict(sorted(mine.items()))

    async def settings(self, proposal: int) -> dict[str, Any]:
        return dict(sorted(self.proposal_settings.get(proposal, {}).items()))

    # ------------------------------------------------------------------ processing and jobs
    async def record_processing(self, message: ProcessingStateChanged) -> bool:
        return _keep_latest(self.processing, message.processing_id, message, message.time)

    async def record_job(self, message: JobStateChanged) -> bool:
        return _keep_latest(self.jobs, message.job_request_id, message, message.time)


def _keep_latest(table: dict[str, Any], key: str, message: Any, time: datetime) -> bool:
    old = table.get(key)
    if old is not None and old.time > time:
        return False
    table[key] = message
    return True


def _row(name: str, var: _Variable) -> VariableRow:
    return VariableRow(
        name, var.title, var.description, var.units, var.user_type, var.data, var.cluster,
        tuple(sorted(var.tags)),
    )  # fmt: skip


class MemoryFiles:
    """The Files port: merge requests recorded, fragments present when the test says so."""

    def __init__(self, journal: list[str] | None = None) -> None:
        self.journal = journal if journal is not None else []
        self.fragments: set[Path] = set()  # fragments on "disk"
        self.merges: list[MergeRequest] = []
        self.deleted: list[Path] = []
        self.waited: list[tuple[Path, float]] = []
        self.fail: dict[str, str] = {}  # variable -> reason the merge reports it failed
        self.summaries: dict[str, float | complex] = {}  # scalars "read from the fragment"
        self.broken: Exception | None = None  # raised by merge() when set
        self._locks: dict[str, asyncio.Lock] = {}
        self.held: set[str] = set()
        self.merged_unlocked: list[Path] = []  # merges of a target whose lock was not held

    def run_file(self, context_dir: str, proposal: int, run: int) -> Path:
        return Path(context_dir) / "extracted_data" / f"p{proposal}_r{run}.h5"

    @contextlib.asynccontextmanager
    async def _hold(self, key: str) -> AsyncIterator[None]:
        async with self._locks.setdefault(key, asyncio.Lock()):
            self.held.add(key)
            try:
                yield
            finally:
                self.held.discard(key)

    def hold(self, key: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self._hold(key)

    async def merge(self, request: MergeRequest) -> MergeOutcome:
        self.journal.append("files.merge")
        await asyncio.sleep(0)  # the real merge runs in a thread: other tasks go on meanwhile
        if str(request.target) not in self.held:
            self.merged_unlocked.append(request.target)
        if self.broken is not None:
            raise self.broken
        self.merges.append(request)
        names = {item.name for item in request.items}
        return MergeOutcome(
            failed={n: why for n, why in self.fail.items() if n in names},
            summaries={n: s for n, s in self.summaries.items() if n in names},
        )

    async def wait_for(self, path: Path, timeout_s: float) -> bool:
        self.waited.append((path, timeout_s))
        return path in self.fragments

    async def delete(self, path: Path) -> bool:
        self.journal.append("files.delete")
        self.deleted.append(path)
        if path in self.fragments:
            self.fragments.discard(path)
            return True
        return False


class RecordingFeed:
    """The Feed port, recording ``(topic, key, message)`` as KafkaFeed would publish them."""

    def __init__(self, journal: list[str] | None = None) -> None:
        self.journal = journal if journal is not None else []
        self.sent: list[tuple[str, bytes, BaseModel]] = []
        self.fail_once: Exception | None = None  # the next update raises it (Kafka down)

    async def update(self, message: BaseModel, key: bytes) -> None:
        if self.fail_once is not None:
            error, self.fail_once = self.fail_once, None
            raise error
        self.journal.append(f"feed.{getattr(message, 'type', type(message).__name__)}")
        self.sent.append(("updates", key, message))

    async def settings(self, message: ProposalSettingsSet) -> None:
        self.journal.append("feed.proposal_settings_set")
        key = proposal_key(message.proposal)
        self.sent.append(("proposal-settings", key, message))
        self.sent.append(("updates", key, message))

    def of_type(self, cls: type[M]) -> list[M]:
        """The messages of one type published on the updates topic, in order."""
        return [m for topic, _, m in self.sent if topic == "updates" and isinstance(m, cls)]

    def clear(self) -> None:
        self.sent.clear()


@dataclass(frozen=True)
class Touch:
    proposal: int
    runs: tuple[int, ...]
    meta: bool
    full: bool
    messages: tuple[bytes, ...]


@dataclass(frozen=True)
class Synced:
    """What ``Projector.sync`` returns (its SyncResult's fields)."""

    proposal: int
    path: str
    db_id: str
    runs_written: int


class RecordingProjection:
    """The Projection port: touches recorded; ``sync`` answers or raises ``sync_error``."""

    def __init__(self, journal: list[str] | None = None) -> None:
        self.journal = journal if journal is not None else []
        self.touches: list[Touch] = []
        self.syncs: list[tuple[int, bool]] = []
        self.sync_error: Exception | None = None

    def touch(
        self,
        proposal: int,
        runs: Sequence[int] = (),
        *,
        meta: bool = False,
        full: bool = False,
        messages: Sequence[bytes] = (),
    ) -> None:
        self.journal.append("projection.touch")
        self.touches.append(Touch(proposal, tuple(runs), meta, full, tuple(messages)))

    async def sync(self, proposal: int, *, rebuild: bool = False) -> Synced:
        self.syncs.append((proposal, rebuild))
        if self.sync_error is not None:
            raise self.sync_error
        return Synced(proposal, f"/ctx/p{proposal}/runs.sqlite", f"db-{proposal}", 3)


class RecordingImporter:
    """The Importer port: records the folders and answers with fixed counts."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.imported: list[ImportDamnit] = []

    async def import_folder(self, command: ImportDamnit) -> dict[str, int]:
        self.imported.append(command)
        return dict(self.counts)
