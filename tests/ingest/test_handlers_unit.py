"""Pure decisions of ingest: event -> trigger, validation, de-duplication, proc waiting, reprocess."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from runstream_common.messages import (
    ProcessingStatus,
    ReprocessRequested,
    RunKnown,
    Selection,
    Trigger,
)
from runstream_ingest.effects import DeadLetter, EmitRun, Ignore, Verdict, Wait
from runstream_ingest.handlers import handle_facility, handle_reprocess, handle_watched
from runstream_ingest.ids import facility_request_id, reprocess_request_id
from runstream_ingest.settings import Settings
from runstream_ingest.tables import RunCatalog

from .helpers import disk_for, facility_event, make_run_folder, registered

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_root=str(tmp_path / "exp"), settle_s=5.0, proc_retry_delay_s=7.0, proc_max_attempts=3
    )


def _facility(
    value: bytes | None, settings: Settings, tmp_path: Path, catalog: RunCatalog, attempt: int = 1
):
    proposals, _ = registered(tmp_path, 2212)
    txn = catalog.begin()
    effects = handle_facility(
        value,
        settings=settings,
        proposals=proposals,
        catalog=txn,
        disk=disk_for(settings),
        now=time.time(),
        attempt=attempt,
    )
    catalog.commit(txn)
    return effects


@pytest.mark.parametrize(
    ("event", "trigger"),
    [
        ("migration_complete", Trigger.RAW),
        ("daq_run_complete", Trigger.RAW),
        ("run_corrections_complete", Trigger.PROC),
        ("online_correction_complete", Trigger.PROC),
    ],
)
def test_damnit_event_names_map_to_their_trigger(
    tmp_path: Path, settings: Settings, event: str, trigger: Trigger
) -> None:
    catalog = RunCatalog()
    catalog.merge(RunKnown(proposal=2212, run=42, raw_seen=trigger is Trigger.PROC))
    _, dirs = registered(tmp_path, 2212)
    make_run_folder(dirs[2212], 42, "proc")
    [effect] = _facility(
        facility_event(event, 2212, 42, path="/x", instrument="HED", cycle="202601"),
        settings,
        tmp_path,
        catalog,
    )
    assert isinstance(effect, EmitRun)
    msg = effect.run
    assert (msg.proposal, msg.run, msg.trigger, msg.reason) == (2212, 42, trigger, "facility")
    assert msg.request_id == facility_request_id(2212, 42, trigger)
    assert msg.proposal_dir == str(dirs[2212])
    assert msg.context_dir == str(tmp_path / "ctx2212")
    assert msg.selection.is_all
    assert effect.catalog is not None
    assert effect.catalog.source["instrument"] == "HED"
    assert effect.catalog.source[f"{trigger.value}_event"] == event


def test_numeric_strings_are_accepted(tmp_path: Path, settings: Settings) -> None:
    [effect] = _facility(
        facility_event("migration_complete", "2212", "7"), settings, tmp_path, RunCatalog()
    )
    assert isinstance(effect, EmitRun)
    assert (effect.run.proposal, effect.run.run) == (2212, 7)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (b"not json{", "facility event"),
        (facility_event("migration_complete", 2212, "forty-two"), "run"),
        (b'{"event": "migration_complete", "proposal": 2212}', "run"),
        (b'{"proposal": 2212, "run": 1}', "event"),
        (facility_event("migration_complete", 2212, -1), "run"),
        (None, "tombstone"),
        # beyond PostgreSQL's integer columns
        (facility_event("migration_complete", 2212, 2**31), "run: Input should be less than"),
        (facility_event("migration_complete", 10**20, 1), "proposal: Input should be less than"),
        (facility_event("migration_complete", 2212, "99999999999"), "run"),
        # wrong types
        (b'{"event": "migration_complete", "proposal": 2212, "run": true}', "true/false"),
        (b'{"event": "migration_complete", "proposal": 2212, "run": 1.5}', "run"),
        (b'{"event": "migration_complete", "proposal": [2212], "run": 1}', "proposal"),
        (b'{"event": 7, "proposal": 2212, "run": 1}', "event"),
        (b'["migration_complete", 2212, 1]', "facility event"),
        (b"\xff\xfe\x00", "facility event"),
    ],
)
def test_malformed_events_are_dead_lettered_with_reason(
    tmp_path: Path, settings: Settings, value: bytes | None, fragment: str
) -> None:
    [effect] = _facility(value, settings, tmp_path, RunCatalog())
    assert isinstance(effect, DeadLetter)
    assert fragment in effect.reason
    assert effect.error_class == "MessageFormatError"


def test_an_event_over_the_size_cap_is_dead_lettered_unread(
    tmp_path: Path, settings: Settings
) -> None:
    big = json.dumps(
        {"event": "migration_complete", "proposal": 2212, "run": 1, "note": "x" * 70_000}
    ).encode()
    [effect] = _facility(big, settings, tmp_path, RunCatalog())
    assert isinstance(effect, DeadLetter)
    assert effect.error_class == "MessageTooLarge"
    assert f"{len(big)} bytes, more than the limit of 65536 bytes" in effect.reason
    smaller = settings.model_copy(update={"max_event_bytes": 1000})
    [effect] = _facility(
        facility_event("migration_complete", 2212, 1, note="y" * 1000),
        smaller,
        tmp_path,
        RunCatalog(),
    )
    assert isinstance(effect, DeadLetter)
    assert effect.error_class == "MessageTooLarge"


def test_unknown_event_name_is_dead_lettered_with_the_known_names(
    tmp_path: Path, settings: Settings
) -> None:
    [effect] = _facility(facility_event("run_started", 2212, 1), settings, tmp_path, RunCatalog())
    assert isinstance(effect, DeadLetter)
    assert effect.error_class == "UnknownEvent"
    assert "'run_started'" in effect.reason
    assert "migration_complete" in effect.reason


def test_ignored_event_names_are_skipped_quietly(tmp_path: Path, settings: Settings) -> None:
    quiet = settings.model_copy(update={"ignored_events": ["run_started"]})
    [effect] = _facility(facility_event("run_started", 2212, 1), quiet, tmp_path, RunCatalog())
    assert effect == Ignore(Verdict.UNKNOWN_EVENT, "run_started")


def test_unregistered_proposal_is_ignored_not_dead_lettered(
    tmp_path: Path, settings: Settings
) -> None:
    [effect] = _facility(
        facility_event("migration_complete", 9999, 1), settings, tmp_path, RunCatalog()
    )
    assert isinstance(effect, Ignore)
    assert effect.outcome is Verdict.UNREGISTERED


def test_duplicate_event_emits_once_per_trigger(tmp_path: Path, settings: Settings) -> None:
    catalog = RunCatalog()
    first = _facility(facility_event("migration_complete", 2212, 5), settings, tmp_path, catalog)
    again = _facility(facility_event("daq_run_complete", 2212, 5), settings, tmp_path, catalog)
    assert isinstance(first[0], EmitRun)
    assert again == [Ignore(Verdict.DUPLICATE, "p2212 r5 raw")]
    entry = catalog.get(2212, 5)
    assert entry is not None
    assert entry.raw_seen
    assert not entry.proc_seen


def test_duplicates_inside_one_transaction_are_caught(tmp_path: Path, settings: Settings) -> None:
    proposals, _ = registered(tmp_path, 2212)
    catalog = RunCatalog()
    txn = catalog.begin()
    outs = [
        handle_facility(
            facility_event("migration_complete", 2212, 5),
            settings=settings,
            proposals=proposals,
            catalog=txn,
            disk=disk_for(settings),
            now=time.time(),
        )[0]
        for _ in range(3)
    ]
    assert [type(o) for o in outs] == [EmitRun, Ignore, Ignore]
    assert catalog.get(2212, 5) is None  # not visible before the transaction commits
    catalog.commit(txn)
    assert catalog.get(2212, 5) is not None


def test_proc_waits_for_raw_then_for_a_settled_folder(tmp_path: Path, settings: Settings) -> None:
    catalog = RunCatalog()
    _, dirs = registered(tmp_path, 2212)
    proc_event = facility_event("run_corrections_complete", 2212, 8)

    [wait] = _facility(proc_event, settings, tmp_path, catalog)
    assert isinstance(wait, Wait)
    assert wait.state.status is ProcessingStatus.WAITING
    assert "no raw run message" in (wait.state.reason or "")
    assert wait.attempt == 2
    assert wait.state.request_id == facility_request_id(2212, 8, Trigger.PROC)

    _facility(facility_event("migration_complete", 2212, 8), settings, tmp_path, catalog)
    make_run_folder(dirs[2212], 8, "proc", age_s=0.0)  # just written
    [wait] = _facility(proc_event, settings, tmp_path, catalog, attempt=2)
    assert isinstance(wait, Wait)
    assert "still being written" in (wait.state.reason or "")
    entry = catalog.get(2212, 8)
    assert entry is not None
    assert not entry.proc_seen

    make_run_folder(dirs[2212], 8, "proc", age_s=60.0)
    [emit] = _facility(proc_event, settings, tmp_path, catalog, attempt=2)
    assert isinstance(emit, EmitRun)
    assert emit.run.trigger is Trigger.PROC
    assert emit.run.attempt == 2


def test_proc_goes_out_anyway_after_the_last_look(tmp_path: Path, settings: Settings) -> None:
    catalog = RunCatalog()
    catalog.merge(RunKnown(proposal=2212, run=9, raw_seen=True))
    [emit] = _facility(
        facility_event("run_corrections_complete", 2212, 9), settings, tmp_path, catalog, attempt=3
    )
    assert isinstance(emit, EmitRun)
    assert emit.note is not None
    assert "does not exist" in emit.note


def test_missing_proposal_directory_is_dead_lettered(tmp_path: Path, settings: Settings) -> None:
    from runstream_common.messages import ProposalRegistered
    from runstream_ingest.tables import ProposalTable

    proposals = ProposalTable()
    proposals.apply(ProposalRegistered(proposal=1, context_dir=str(tmp_path)))
    [effect] = handle_facility(
        facility_event("migration_complete", 1, 1),
        settings=settings,
        proposals=proposals,
        catalog=RunCatalog().begin(),
        disk=disk_for(settings),
        now=time.time(),
    )
    assert isinstance(effect, DeadLetter)
    assert "proposal directory of p1 not found" in effect.reason


def test_damnit_layout_glob_finds_the_proposal_folder(tmp_path: Path) -> None:
    settings = Settings(data_root=str(tmp_path / "exp"))
    pdir = tmp_path / "exp" / "SPB" / "202601" / "p003000"
    (pdir / "raw").mkdir(parents=True)
    assert settings.layout().proposal_dir(3000) == pdir
    assert settings.layout().proposal_dir(3001) is None
    assert settings.layout().proposal_dir(3000, str(pdir)) == pdir


def test_watcher_folder_becomes_one_raw_message(tmp_path: Path, settings: Settings) -> None:
    proposals, dirs = registered(tmp_path, 2212)
    folder = make_run_folder(dirs[2212], 3)
    catalog = RunCatalog()
    kw = dict(settings=settings, proposals=proposals, disk=disk_for(settings))
    txn = catalog.begin()
    [emit] = handle_watched(2212, 3, folder, catalog=txn, **kw)
    catalog.commit(txn)
    assert isinstance(emit, EmitRun)
    assert emit.run.reason == "watcher"
    assert emit.run.request_id == facility_request_id(2212, 3, Trigger.RAW)
    [dup] = handle_watched(2212, 3, folder, catalog=catalog.begin(), **kw)
    assert isinstance(dup, Ignore)
    # the facility's own event for the same run is now a duplicate as well
    [dup2] = _facility(facility_event("migration_complete", 2212, 3), settings, tmp_path, catalog)
    assert isinstance(dup2, Ignore)


def test_reprocess_all_with_match_expands_to_catalog_runs_on_disk(
    tmp_path: Path, settings: Settings
) -> None:
    proposals, dirs = registered(tmp_path, 2212, 3000)
    catalog = RunCatalog()
    for run in (1, 2, 5):
        catalog.merge(RunKnown(proposal=2212, run=run, raw_seen=True))
        make_run_folder(dirs[2212], run)
    catalog.merge(RunKnown(proposal=2212, run=6, raw_seen=True))  # not on disk
    catalog.merge(RunKnown(proposal=3000, run=1, raw_seen=True))  # another proposal
    make_run_folder(dirs[3000], 1)
    selection = Selection(match=("xgm",), names=("energy",))
    request = ReprocessRequested(proposal=2212, runs="all", selection=selection)
    effects = handle_reprocess(
        request,
        settings=settings,
        proposals=proposals,
        catalog=catalog.begin(),
        disk=disk_for(settings),
    )
    emitted = [e.run for e in effects if isinstance(e, EmitRun)]
    assert [m.run for m in emitted] == [1, 2, 5]
    assert all(
        m.selection == selection and m.trigger is Trigger.ALL and m.reason == "reprocess"
        for m in emitted
    )
    assert [m.request_id for m in emitted] == [
        reprocess_request_id(request.event_id, 2212, r, Trigger.ALL) for r in (1, 2, 5)
    ]
    [missing] = [e for e in effects if isinstance(e, Ignore)]
    assert missing.outcome is Verdict.MISSING_RUN
    assert "r6" in missing.detail


def test_reprocess_always_gets_fresh_ids_and_adds_unknown_runs(
    tmp_path: Path, settings: Settings
) -> None:
    proposals, dirs = registered(tmp_path, 2212)
    make_run_folder(dirs[2212], 11)
    catalog = RunCatalog()
    kw = dict(settings=settings, proposals=proposals, disk=disk_for(settings))
    a = handle_reprocess(
        ReprocessRequested(proposal=2212, runs=(11, 11)), catalog=catalog.begin(), **kw
    )
    b = handle_reprocess(
        ReprocessRequested(proposal=2212, runs=(11,)), catalog=catalog.begin(), **kw
    )
    assert len(a) == 1
    assert isinstance(a[0], EmitRun)
    assert isinstance(b[0], EmitRun)
    assert a[0].run.request_id != b[0].run.request_id
    assert a[0].catalog is not None
    assert not a[0].catalog.raw_seen  # a reprocess does not count as the facility's raw event


def test_reprocess_of_unregistered_proposal_is_dead_lettered(
    tmp_path: Path, settings: Settings
) -> None:
    proposals, _ = registered(tmp_path, 2212)
    [effect] = handle_reprocess(
        ReprocessRequested(proposal=1, runs=(1,)),
        settings=settings,
        proposals=proposals,
        catalog=RunCatalog().begin(),
        disk=disk_for(settings),
    )
    assert isinstance(effect, DeadLetter)


def test_request_ids() -> None:
    assert facility_request_id(1, 2, Trigger.RAW) == facility_request_id(1, 2, Trigger.RAW)
    assert facility_request_id(1, 2, Trigger.RAW) != facility_request_id(1, 2, Trigger.PROC)
    rid = uuid.uuid4()
    assert reprocess_request_id(rid, 1, 2, Trigger.ALL) != reprocess_request_id(
        uuid.uuid4(), 1, 2, Trigger.ALL
    )


def test_event_trigger_mapping_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "RUNSTREAM_INGEST_EVENT_TRIGGERS", '{"run_done": "raw", "calib_done": "proc"}'
    )
    monkeypatch.setenv("RUNSTREAM_INGEST_FACILITY_TOPICS", '["facility.events"]')
    s = Settings()
    assert s.event_triggers == {"run_done": Trigger.RAW, "calib_done": Trigger.PROC}
    assert s.facility_topics == ["facility.events"]
    with pytest.raises(ValueError, match="not all"):
        Settings(event_triggers={"x": Trigger.ALL})


def test_proc_waits_while_the_raw_pass_is_running(tmp_path: Path, settings: Settings) -> None:
    proposals, dirs = registered(tmp_path, 2212)
    make_run_folder(dirs[2212], 8, "proc")
    catalog = RunCatalog()
    catalog.merge(RunKnown(proposal=2212, run=8, raw_seen=True))
    kw = dict(settings=settings, proposals=proposals, disk=disk_for(settings), now=time.time())
    value = facility_event("run_corrections_complete", 2212, 8)
    [wait] = handle_facility(value, catalog=catalog.begin(), raw_in_flight={(2212, 8)}, **kw)
    assert isinstance(wait, Wait)
    assert "raw processing of this run has not finished" in (wait.state.reason or "")
    [emit] = handle_facility(value, catalog=catalog.begin(), raw_in_flight={(2212, 9)}, **kw)
    assert isinstance(emit, EmitRun)
