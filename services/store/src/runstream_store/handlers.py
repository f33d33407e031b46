"""What the store does with each message it consumes.

Ports: the database (:class:`Database`), the run files (:class:`Files`) and the
change feed (:class:`Feed`). The order of effects for one ``ResultsReady`` makes
every crash converge when the message comes again:

1. already applied (``result_id`` recorded)? -> re-publish its current values, delete the
   fragment, done;
2. under the run file's lock: find which variables this revision may replace, merge them
   into the run file (atomic replace), commit values + history + result_id in one
   transaction, publish ``RunAdded`` (a new run) and then ``ValuesUpdated``, delete the
   fragment. The offset is committed after the handler returns.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel
from runstream_common.errors import InvalidCommand, PermanentError
from runstream_common.kafka import Delivery
from runstream_common.messages import (
    CommandRejected,
    DamnitSynced,
    DefineUserVariable,
    ImportDamnit,
    JobStateChanged,
    JobStateSet,
    ProcessingStateChanged,
    ProcessingStateSet,
    ProcessingStatus,
    ProposalRegistered,
    ProposalSettingsSet,
    ResultAttrs,
    ResultsReady,
    RunAdded,
    RunKnown,
    SetComment,
    SetProposalSetting,
    SetTags,
    SetUserVariable,
    SyncDamnit,
    ValuesUpdated,
    ValueView,
    VariableDefinition,
    VariableResult,
    VariablesDefined,
    VariablesSet,
)
from runstream_common.topics import proposal_key, run_key

from .adapters.hdf5_merge import MergeItem, MergeOutcome, MergeRequest
from .adapters.postgres import RunRow, VariableRow
from .damnit import announce
from .hooks import Hooks
from .hooks import call as call_hook
from .proposal_settings import PARSERS, parse_setting
from .user_input import check_user_variable_name, parse_user_value
from .values import COMMENT, PROVENANCE_COMMENT, PROVENANCE_MANUAL, StoredValue

log = logging.getLogger("runstream.store")


class Database(Protocol):
    async def is_applied(self, result_id: str) -> bool: ...
    async def current_revisions(
        self, proposal: int, run: int, names: Sequence[str]
    ) -> dict[str, int]: ...
    async def apply_results(
        self, message: ResultsReady, values: dict[str, StoredValue], winners: set[str]
    ) -> RunRow | None: ...
    async def current_values(
        self, proposal: int, run: int, names: Sequence[str] | None = None
    ) -> dict[str, StoredValue]: ...
    async def get_run(self, proposal: int, run: int) -> RunRow | None: ...
    async def context_dir(self, proposal: int) -> str | None: ...
    async def register_context_dir(self, proposal: int, context_dir: str) -> None: ...
    async def record_run_known(self, message: RunKnown, added_at: float) -> RunRow: ...
    async def mark_announced(self, proposal: int, run: int) -> None: ...
    async def define_variables(
        self,
        proposal: int,
        context_hash: str,
        revision: int,
        variables: Sequence[VariableDefinition],
    ) -> list[VariableDefinition]: ...
    async def define_user_variable(
        self, proposal: int, name: str, title: str, variable_type: str, description: str | None
    ) -> VariableRow: ...
    async def variable(self, proposal: int, name: str) -> VariableRow | None: ...
    async def variables(self, proposal: int) -> list[VariableRow]: ...
    async def set_tags(
        self, proposal: int, variable: str, add: Sequence[str], remove: Sequence[str]
    ) -> VariableRow: ...
    async def set_manual_value(
        self, proposal: int, run: int, name: str, value: StoredValue
    ) -> bool: ...
    async def set_setting(self, proposal: int, key: str, value: Any | None) -> dict[str, Any]: ...
    async def settings(self, proposal: int) -> dict[str, Any]: ...
    async def record_processing(self, message: ProcessingStateChanged) -> bool: ...
    async def record_job(self, message: JobStateChanged) -> bool: ...


class Files(Protocol):
    def run_file(self, context_dir: str, proposal: int, run: int) -> Path: ...
    def hold(self, key: str) -> Any: ...
    async def merge(self, request: MergeRequest) -> MergeOutcome: ...
    async def wait_for(self, path: Path, timeout_s: float) -> bool: ...
    async def delete(self, path: Path) -> bool: ...


class Feed(Protocol):
    async def update(self, message: BaseModel, key: bytes) -> None: ...
    async def settings(self, message: ProposalSettingsSet) -> None: ...


class Projection(Protocol):
    """The DAMNIT projection (damnit/projector.py); told about every committed change."""

    def touch(
        self,
        proposal: int,
        runs: Sequence[int] = (),
        *,
        meta: bool = False,
        full: bool = False,
        messages: Sequence[bytes] = (),
    ) -> None: ...

    async def sync(self, proposal: int, *, rebuild: bool = False) -> Any: ...


class Importer(Protocol):
    async def import_folder(self, command: ImportDamnit) -> dict[str, int]: ...


def needs_fragment(result: VariableResult) -> bool:
    """Whether the result's data or summary lives in the fragment."""
    if result.is_error or result.returned_none:
        return False
    return result.in_fragment or (
        result.summary is None and result.summary_type in ("thumbnail", "trendline", "numpy")
    )


def merge_item(result: VariableResult) -> MergeItem:
    if result.is_error:
        action: Literal["fragment", "inline", "error", "clear"] = "error"
    elif result.returned_none:
        action = "clear"
    elif needs_fragment(result):
        action = "fragment"
    else:
        action = "inline"
    return MergeItem(
        name=result.name,
        action=action,
        summary=result.summary,
        **ResultAttrs.attrs_of(result),
    )


class Handlers:
    """The store's message handlers, over its three ports."""

    def __init__(
        self,
        db: Database,
        files: Files,
        feed: Feed,
        *,
        fragment_wait_s: float = 30.0,
        compress_min_bytes: int = 0,
        copy_chunk_bytes: int = 64 * 1024 * 1024,
        hooks: Hooks | None = None,
        projection: Projection | None = None,
        importer: Importer | None = None,
        slurm_cluster: str | None = None,
    ) -> None:
        self.db = db
        self.files = files
        self.feed = feed
        self.projection = projection
        self.importer = importer
        self.slurm_cluster = slurm_cluster
        self.fragment_wait_s = fragment_wait_s
        self.compress_min_bytes = compress_min_bytes
        self.copy_chunk_bytes = copy_chunk_bytes
        self.hooks = hooks or Hooks()  # tests only (fault injection)

    # ------------------------------------------------------------------ results topic
    async def on_results(
        self, message: ResultsReady | VariablesDefined, delivery: Delivery
    ) -> None:
        """Results of the executor: merge into the run file and the database; variable definitions."""
        if isinstance(message, VariablesDefined):
            await self.variables_defined(message)
        else:
            await self.results_ready(message)

    def _fragment_path(self, message: ResultsReady) -> Path | None:
        if message.fragment is None:
            return None
        path = Path(message.fragment)
        allowed = Path(message.context_dir) / "extracted_data"
        if not path.is_absolute() or not _within(path, allowed):
            raise PermanentError(
                f"fragment {message.fragment} is not under {allowed}; refusing to read or delete it"
            )
        return path

    async def results_ready(self, message: ResultsReady) -> None:
        p, r = message.proposal, message.run
        fragment = self._fragment_path(message)
        target = self.files.run_file(message.context_dir, p, r)
        async with self.files.hold(str(target)):
            if await self.db.is_applied(message.result_id):
                await self._finish_duplicate(message, fragment)
                return
            results = {res.name: res for res in message.results}
            winners = await self._winners(message, list(results))
            values = {
                n: StoredValue.from_result(
                    res,
                    provenance=message.provenance,
                    context_hash=message.context_hash,
                    revision=message.revision,
                    result_id=message.result_id,
                )
                for n, res in results.items()
            }
            items = tuple(merge_item(results[n]) for n in results if n in winners)
            if items or message.start_time is not None:
                await self._merge(message, target, fragment, items, values)
            call_hook(self.hooks.after_merge, message)
            run = await self.db.apply_results(message, values, winners)
            call_hook(self.hooks.after_commit, message)
            if run is None:  # applied concurrently; nothing more to do than for a duplicate
                await self._finish_duplicate(message, fragment)
                return
            await self._announce(run)  # a new run's row first, then its values
            self._touch(p, [r])
            await self._publish_values(message, {n: values[n] for n in results if n in winners})
            if fragment is not None:
                await self.files.delete(fragment)

    async def _winners(self, message: ResultsReady, names: list[str]) -> set[str]:
        """The variables this revision may replace (no newer revision is stored)."""
        p, r = message.proposal, message.run
        revisions = await self.db.current_revisions(p, r, names)
        winners = {n for n in names if revisions.get(n, message.revision) <= message.revision}
        stale = sorted(set(names) - winners)
        if stale:
            log.info(
                "p%d r%d: revision %d is older than the stored values of %s; kept in history only",
                p, r, message.revision, stale,
            )  # fmt: skip
        return winners

    async def _merge(
        self,
        message: ResultsReady,
        target: Path,
        fragment: Path | None,
        items: tuple[MergeItem, ...],
        values: dict[str, StoredValue],
    ) -> None:
        """Merge the winners into the run file; what could not be written becomes an error."""
        wanted = any(i.action == "fragment" for i in items)
        if wanted:
            if fragment is None:
                raise PermanentError(
                    f"result {message.result_id} refers to fragment data but names no fragment"
                )
            if not await self.files.wait_for(fragment, self.fragment_wait_s):
                raise PermanentError(
                    f"fragment {fragment} of result {message.result_id} did not appear "
                    f"within {self.fragment_wait_s:g} s"
                )
        call_hook(self.hooks.before_merge, message)
        outcome = await self.files.merge(
            MergeRequest(
                target=target,
                fragment=fragment if wanted else None,
                items=items,
                provenance=message.provenance,
                start_time=message.start_time,
                compress_min_bytes=self.compress_min_bytes,
                copy_chunk_bytes=self.copy_chunk_bytes,
            )
        )
        for name, reason in outcome.failed.items():
            values[name] = values[name].as_error(reason, "StoreWriteError")
        for name, scalar in outcome.summaries.items():
            values[name] = values[name].with_summary(scalar)

    async def _publish_values(self, message: ResultsReady, stored: dict[str, StoredValue]) -> None:
        changed = {n: v.view() for n, v in stored.items()}
        if message.start_time is not None:
            changed.setdefault("start_time", _start_time_view(message.start_time, message))
        if changed:
            await self.feed.update(
                ValuesUpdated(
                    proposal=message.proposal,
                    run=message.run,
                    values=changed,
                    correlation_id=message.correlation_id,
                ),
                run_key(message.proposal, message.run),
            )

    async def _finish_duplicate(self, message: ResultsReady, fragment: Path | None) -> None:
        """A result applied before: re-publish what it set (idempotent) and drop the fragment."""
        p, r = message.proposal, message.run
        names = [res.name for res in message.results]
        current = await self.db.current_values(p, r, names)
        run = await self.db.get_run(p, r)
        if run is not None:
            await self._announce(run)
        mine = {n: v.view() for n, v in current.items() if v.result_id == message.result_id}
        if mine and message.start_time is not None:
            mine["start_time"] = _start_time_view(message.start_time, message)
        if mine:
            await self.feed.update(
                ValuesUpdated(
                    proposal=p, run=r, values=mine, correlation_id=message.correlation_id
                ),
                run_key(p, r),
            )
        if fragment is not None and await self.files.delete(fragment):
            log.info("deleted fragment %s of an already applied result", fragment)

    async def _announce(self, run: RunRow) -> None:
        if run.announced:
            return
        await self.feed.update(
            RunAdded(
                proposal=run.proposal, run=run.run, start_time=run.start_time, added_at=run.added_at
            ),
            run_key(run.proposal, run.run),
        )
        await self.db.mark_announced(run.proposal, run.run)

    async def variables_defined(self, message: VariablesDefined) -> None:
        applied = await self.db.define_variables(
            message.proposal, message.context_hash, message.revision, message.variables
        )
        if not applied:
            return
        self._touch(message.proposal, meta=True)
        names = {v.name for v in applied}
        rows = [row for row in await self.db.variables(message.proposal) if row.name in names]
        await self.feed.update(
            VariablesSet(
                proposal=message.proposal,
                variables=tuple(row.definition() for row in rows),
                correlation_id=message.correlation_id,
            ),
            proposal_key(message.proposal),
        )

    async def results_poisoned(
        self, message: ResultsReady | VariablesDefined | None, reason: str, hostname: str
    ) -> None:
        """A results record kept killing the store (it is dead-lettered): its pass is failed.

        Recorded and published as the processing state ``failed`` of the result's pass,
        as :meth:`on_processing` records states (a later state of the pass, so it wins over the
        executor's ``finished``). Variable definitions have no pass: only dead-lettered.
        """
        if not isinstance(message, ResultsReady):
            return
        state = ProcessingStateChanged(
            processing_id=message.processing_id,
            request_id=message.request_id,
            proposal=message.proposal,
            run=message.run,
            trigger=message.trigger,
            status=ProcessingStatus.FAILED,
            reason=reason,
            hostname=hostname,
            correlation_id=message.correlation_id,
        )
        await self._processing(state)

    # ------------------------------------------------------------------ registrations
    async def on_proposal(self, message: Any, delivery: Delivery) -> None:
        """A registration names the proposal's context folder: its DAMNIT database is
        created there at once (GUIs can open the folder before the first run)."""
        if isinstance(message, ProposalRegistered):
            await self.db.register_context_dir(message.proposal, message.context_dir)
            self._touch(message.proposal, meta=True, full=True)

    # ------------------------------------------------------------------ run catalog
    async def on_run_known(self, message: RunKnown, delivery: Delivery) -> None:
        """A run the catalog knows: record it; announce it (RunAdded) the first time."""
        run = await self.db.record_run_known(message, added_at=message.time.timestamp())
        await self._announce(run)
        self._touch(message.proposal, [message.run])

    # ------------------------------------------------------------------ processing and jobs
    async def on_processing(self, message: ProcessingStateChanged, delivery: Delivery) -> None:
        """Processing state of a run: keep the latest per pass and pass it on to GUIs."""
        await self._processing(message)

    async def _processing(self, message: ProcessingStateChanged) -> None:
        if await self.db.record_processing(message):
            await self.feed.update(
                ProcessingStateSet(state=message, correlation_id=message.correlation_id),
                run_key(message.proposal, message.run),
            )
            damnit = announce.processing(message, self.slurm_cluster)
            if damnit is not None:
                self._touch(message.proposal, [message.run], messages=[damnit])

    async def on_job_state(self, message: JobStateChanged, delivery: Delivery) -> None:
        """Slurm job state: keep the latest per job request and pass it on to GUIs."""
        if await self.db.record_job(message):
            await self.feed.update(
                JobStateSet(state=message, correlation_id=message.correlation_id),
                run_key(message.proposal, message.run),
            )
            damnit = announce.job(message, self.slurm_cluster)
            if damnit is not None:
                self._touch(message.proposal, [message.run], messages=[damnit])

    # ------------------------------------------------------------------ commands
    async def on_command(self, message: Any, delivery: Delivery) -> None:
        """A user command; a bad value is rejected on the feed (CommandRejected) and changes nothing."""
        try:
            if isinstance(message, SetComment):
                await self._set_comment(message)
            elif isinstance(message, SetUserVariable):
                await self._set_user_variable(message)
            elif isinstance(message, DefineUserVariable):
                await self._define_user_variable(message)
            elif isinstance(message, SetTags):
                await self._set_tags(message)
            elif isinstance(message, SetProposalSetting):
                await self._set_setting(message)
            elif isinstance(message, SyncDamnit):
                await self._sync_damnit(message)
            elif isinstance(message, ImportDamnit):
                await self._import_damnit(message)
            else:  # pragma: no cover - the parser admits only the types above
                raise InvalidCommand(f"unknown command {type(message).__name__}")
        except InvalidCommand as exc:
            log.info("rejected %s %s: %s", message.type, message.event_id, exc)
            await self.feed.update(
                CommandRejected(
                    proposal=message.proposal,
                    command_event_id=str(message.event_id),
                    command_type=message.type,
                    reason=str(exc),
                    correlation_id=_correlation(message),
                ),
                proposal_key(message.proposal),
            )

    def _touch(
        self,
        proposal: int,
        runs: Sequence[int] = (),
        *,
        meta: bool = False,
        full: bool = False,
        messages: Sequence[bytes] = (),
    ) -> None:
        """Tell the DAMNIT projection about a committed change (it never raises)."""
        if self.projection is not None:
            self.projection.touch(proposal, runs, meta=meta, full=full, messages=messages)

    async def _publish_value(self, command: Any, run: int, name: str, value: StoredValue) -> None:
        self._touch(command.proposal, [run])
        await self.feed.update(
            ValuesUpdated(
                proposal=command.proposal,
                run=run,
                values={name: value.view()},
                correlation_id=_correlation(command),
            ),
            run_key(command.proposal, run),
        )

    async def _write_manual(self, proposal: int, run: int, name: str, value: StoredValue) -> None:
        """A comment or user value into the run file too (after PostgreSQL, which decides).

        A file system that refuses is logged, not fatal: PostgreSQL has the value, and the
        next edit of the cell writes the file again.
        """
        context_dir = await self.db.context_dir(proposal)
        if context_dir is None:
            return
        target = self.files.run_file(context_dir, proposal, run)
        cleared = value.kind == "none"
        item = MergeItem(
            name=name,
            action="clear" if cleared else "inline",
            summary=None if cleared else value.inline_summary,
            units=value.units,
        )
        request = MergeRequest(
            target=target,
            fragment=None,
            items=(item,),
            provenance=value.provenance or PROVENANCE_MANUAL,
            compress_min_bytes=self.compress_min_bytes,
        )
        try:
            async with self.files.hold(str(target)):
                await self.files.merge(request)
        except Exception as exc:
            log.warning(
                "p%d r%d: %s is stored, but not in %s: %s", proposal, run, name, target, exc
            )

    async def _set_comment(self, cmd: SetComment) -> None:
        value = StoredValue.from_summary(
            cmd.text, provenance=PROVENANCE_COMMENT, result_id=f"cmd:{cmd.event_id}"
        )
        await self._apply_manual(cmd, cmd.run, COMMENT, value)

    async def _set_user_variable(self, cmd: SetUserVariable) -> None:
        var = await self.db.variable(cmd.proposal, cmd.name)
        if var is None:
            raise InvalidCommand(f"proposal {cmd.proposal} has no variable {cmd.name!r}")
        if var.user_type is None:
            raise InvalidCommand(
                f"{cmd.name!r} is computed by the context file and cannot be edited"
            )
        parsed = parse_user_value(var.user_type, cmd.value)  # type: ignore[arg-type]
        fields: dict[str, Any] = {
            "provenance": PROVENANCE_MANUAL,
            "result_id": f"cmd:{cmd.event_id}",
            "units": var.units,
        }
        if parsed is None:
            value = StoredValue(kind="none", cleared=True, **fields)
        else:
            value = StoredValue.from_summary(parsed, **fields)
        await self._apply_manual(cmd, cmd.run, cmd.name, value)

    async def _apply_manual(
        self, cmd: SetComment | SetUserVariable, run: int, name: str, value: StoredValue
    ) -> None:
        """Commit, then write the run file and publish; a command seen before only does the
        last two if its value is still the current one (a crash after the commit), never
        over a newer edit."""
        if not await self.db.set_manual_value(cmd.proposal, run, name, value):
            current = (await self.db.current_values(cmd.proposal, run, [name])).get(name)
            if current is None or current.result_id != value.result_id:
                log.info("%s of p%d r%d: command seen before and since replaced", name,
                         cmd.proposal, run)  # fmt: skip
                return
        await self._write_manual(cmd.proposal, run, name, value)
        await self._publish_value(cmd, run, name, value)

    async def _define_user_variable(self, cmd: DefineUserVariable) -> None:
        check_user_variable_name(cmd.name)
        title = (cmd.title or cmd.name).strip()
        if not title:
            raise InvalidCommand("a user variable needs a non-empty title")
        row = await self.db.define_user_variable(
            cmd.proposal, cmd.name, title, cmd.variable_type, cmd.description
        )
        self._touch(cmd.proposal, meta=True)
        await self._variables_set(cmd, [row])

    async def _set_tags(self, cmd: SetTags) -> None:
        bad = [t for t in (*cmd.add, *cmd.remove) if not t.strip()]
        if bad:
            raise InvalidCommand("tags must be non-empty")
        row = await self.db.set_tags(
            cmd.proposal,
            cmd.variable,
            [t.strip() for t in cmd.add],
            [t.strip() for t in cmd.remove],
        )
        self._touch(cmd.proposal, meta=True)
        await self._variables_set(cmd, [row])

    async def _variables_set(self, cmd: Any, rows: list[VariableRow]) -> None:
        await self.feed.update(
            VariablesSet(
                proposal=cmd.proposal,
                variables=tuple(r.definition() for r in rows),
                correlation_id=_correlation(cmd),
            ),
            proposal_key(cmd.proposal),
        )

    async def _set_setting(self, cmd: SetProposalSetting) -> None:
        key = cmd.key.strip()
        if cmd.value is None:
            current = await self.db.settings(cmd.proposal)
            if key not in current:
                if key not in PARSERS:
                    parse_setting(key, "")  # rejected with the list of known settings
                raise InvalidCommand(f"setting {key!r} is not set for proposal {cmd.proposal}")
            settings = await self.db.set_setting(cmd.proposal, key, None)
        else:
            settings = await self.db.set_setting(cmd.proposal, key, parse_setting(key, cmd.value))
        update = ProposalSettingsSet(
            proposal=cmd.proposal, settings=settings, correlation_id=_correlation(cmd)
        )
        await self.feed.settings(update)
        self._touch(cmd.proposal, meta=True, full=True)

    async def _sync_damnit(self, cmd: SyncDamnit) -> None:
        if self.projection is None:
            raise InvalidCommand(
                "this store keeps no DAMNIT databases (RUNSTREAM_STORE_DAMNIT__ENABLED)"
            )
        try:
            result = await self.projection.sync(cmd.proposal, rebuild=cmd.rebuild)
        except InvalidCommand:
            raise
        except Exception as exc:  # the file system said no: the answer says why
            raise InvalidCommand(f"{type(exc).__name__}: {exc}") from exc
        await self.feed.update(
            DamnitSynced(
                proposal=cmd.proposal,
                path=result.path,
                db_id=result.db_id,
                runs_written=result.runs_written,
                correlation_id=_correlation(cmd),
            ),
            proposal_key(cmd.proposal),
        )

    async def _import_damnit(self, cmd: ImportDamnit) -> None:
        if self.importer is None or self.projection is None:
            raise InvalidCommand(
                "this store keeps no DAMNIT databases (RUNSTREAM_STORE_DAMNIT__ENABLED)"
            )
        counts = await self.importer.import_folder(cmd)
        if counts.get("settings"):
            settings = await self.db.settings(cmd.proposal)
            await self.feed.settings(
                ProposalSettingsSet(
                    proposal=cmd.proposal, settings=settings, correlation_id=_correlation(cmd)
                )
            )
        try:
            result = await self.projection.sync(cmd.proposal)
        except Exception as exc:
            raise InvalidCommand(f"imported, but runs.sqlite is not written yet: {exc}") from exc
        await self.feed.update(
            DamnitSynced(
                proposal=cmd.proposal,
                path=result.path,
                db_id=result.db_id,
                runs_written=result.runs_written,
                imported=counts,
                correlation_id=_correlation(cmd),
            ),
            proposal_key(cmd.proposal),
        )


def _correlation(message: Any) -> str:
    return message.correlation_id or str(message.event_id)


def _start_time_view(start_time: float, message: ResultsReady) -> ValueView:
    return ValueView(
        summary=start_time, provenance=message.provenance, context_hash=message.context_hash
    )


def _within(path: Path, folder: Path) -> bool:
    """Inside ``folder``, symbolic links resolved, and no ``..`` in the path as given."""
    if ".." in path.parts:
        return False
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
    except ValueError:
        return False
    return True
