"""The store's handlers through their ports, in memory (tests/store/fakes.py).

The same behaviour as the integration tests over PostgreSQL and HDF5
(test_store_results.py, test_store_commands.py), checked at the ports: what the
handler asks the database to commit, which merges it requests, what it publishes
and in which order, and what it tells the DAMNIT projection.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from runstream_common.errors import PermanentError
from runstream_common.messages import (
    CommandRejected,
    DamnitSynced,
    DefineUserVariable,
    ImportDamnit,
    JobState,
    JobStateChanged,
    JobStateSet,
    ProcessingStateChanged,
    ProcessingStateSet,
    ProposalRegistered,
    ProposalSettingsSet,
    ResultsReady,
    RunAdded,
    RunKnown,
    SetComment,
    SetProposalSetting,
    SetTags,
    SetUserVariable,
    SyncDamnit,
    Trigger,
    ValuesUpdated,
    VariableDefinition,
    VariableResult,
    VariablesDefined,
    VariablesSet,
)
from runstream_common.messages.processing import ProcessingStatus
from runstream_common.topics import proposal_key, run_key
from runstream_store.handlers import Database, Feed, Files, Handlers, Importer, Projection

from .fakes import (
    MemoryDatabase,
    MemoryFiles,
    RecordingFeed,
    RecordingImporter,
    RecordingProjection,
    Touch,
)
from .helpers import DELIVERY

pytestmark = pytest.mark.unit

P, R = 2212, 7
START = 1_700_000_000.0
WAIT_S = 0.25


# ---------------------------------------------------------------------- fixtures
@pytest.fixture
def journal() -> list[str]:
    return []


@pytest.fixture
def db(journal: list[str]) -> MemoryDatabase:
    return MemoryDatabase(journal)


@pytest.fixture
def files(journal: list[str]) -> MemoryFiles:
    return MemoryFiles(journal)


@pytest.fixture
def feed(journal: list[str]) -> RecordingFeed:
    return RecordingFeed(journal)


@pytest.fixture
def projection(journal: list[str]) -> RecordingProjection:
    return RecordingProjection(journal)


@pytest.fixture
def handlers(
    db: MemoryDatabase, files: MemoryFiles, feed: RecordingFeed, projection: RecordingProjection
) -> Handlers:
    # annotated so mypy checks that each fake satisfies its port
    database: Database = db
    run_files: Files = files
    change_feed: Feed = feed
    damnit: Projection = projection
    return Handlers(
        database,
        run_files,
        change_feed,
        fragment_wait_s=WAIT_S,
        compress_min_bytes=64,
        projection=damnit,
        slurm_cluster="maxwell",
    )


@pytest.fixture
def context_dir(tmp_path: Path) -> Path:
    return tmp_path / "usr" / "Shared" / "runstream"


def fragment_in(context_dir: Path, files: MemoryFiles) -> Path:
    """A fragment path under the context folder that the fake file system holds."""
    path = context_dir / "extracted_data" / "fragments" / f"p{P}_r{R}.{uuid.uuid4().hex[:8]}.h5"
    files.fragments.add(path)
    return path


def results(
    context_dir: Path,
    *items: VariableResult,
    revision: int = 1,
    context_hash: str = "hash-1",
    fragment: Path | None = None,
    start_time: float | None = START,
    result_id: str | None = None,
) -> ResultsReady:
    return ResultsReady(
        result_id=result_id or uuid.uuid4().hex,
        request_id="req-1",
        processing_id="proc-1",
        proposal=P,
        run=R,
        trigger=Trigger.RAW,
        context_hash=context_hash,
        revision=revision,
        context_dir=str(context_dir),
        fragment=str(fragment) if fragment is not None else None,
        start_time=start_time,
        results=items,
    )


def scalar(name: str, value: float | int | str, **fields: object) -> VariableResult:
    return VariableResult.model_validate({"name": name, "summary": value, **fields})


async def register_proposal(handlers: Handlers, context_dir: Path) -> None:
    await handlers.on_proposal(
        ProposalRegistered(proposal=P, context_dir=str(context_dir)), DELIVERY
    )


async def known_run(handlers: Handlers, run: int = R) -> None:
    await handlers.on_run_known(RunKnown(proposal=P, run=run, raw_seen=True), DELIVERY)


def rejections(feed: RecordingFeed) -> list[str]:
    return [m.reason for m in feed.of_type(CommandRejected)]


# ---------------------------------------------------------------------- results
async def test_a_new_run_is_merged_committed_announced_then_updated_and_its_fragment_dropped(
    handlers: Handlers,
    db: MemoryDatabase,
    files: MemoryFiles,
    feed: RecordingFeed,
    projection: RecordingProjection,
    journal: list[str],
    context_dir: Path,
) -> None:
    fragment = fragment_in(context_dir, files)
    message = results(
        context_dir,
        scalar("energy", 9.3, units="keV"),
        VariableResult(name="trace", summary_type="trendline", in_fragment=True, max_diff=2.0),
        fragment=fragment,
    )
    await handlers.results_ready(message)

    assert journal == [
        "files.merge",
        "db.apply_results",
        "feed.run_added",
        "db.mark_announced",
        "projection.touch",
        "feed.values_updated",
        "files.delete",
    ]
    (request,) = files.merges
    assert request.target == context_dir / "extracted_data" / f"p{P}_r{R}.h5"
    assert request.fragment == fragment
    assert [(i.name, i.action) for i in request.items] == [
        ("energy", "inline"),
        ("trace", "fragment"),
    ]
    assert request.items[0].summary == 9.3
    assert request.start_time == START
    assert request.compress_min_bytes == 64
    assert files.waited == [(fragment, WAIT_S)]
    assert files.merged_unlocked == []  # merged under the run file's lock
    assert files.deleted == [fragment]
    assert fragment not in files.fragments

    current = await db.current_values(P, R)
    assert current["energy"].value_float == 9.3
    assert current["energy"].units == "keV"
    assert (current["trace"].kind, current["trace"].summary_type) == ("blob", "trendline")
    assert {v.result_id for v in current.values()} == {message.result_id}
    assert await db.is_applied(message.result_id)

    (added,) = feed.of_type(RunAdded)
    assert (added.proposal, added.run, added.start_time) == (P, R, START)
    (updated,) = feed.of_type(ValuesUpdated)
    assert set(updated.values) == {"energy", "trace", "start_time"}
    assert updated.values["energy"].summary == 9.3
    assert updated.values["trace"].summary_type == "trendline"
    assert updated.values["trace"].max_diff == 2.0
    assert updated.values["start_time"].summary == START
    assert updated.correlation_id == message.correlation_id
    assert {key for _, key, _ in feed.sent} == {run_key(P, R)}
    assert projection.touches == [Touch(P, (R,), False, False, ())]
    assert db.runs[(P, R)].announced


async def test_a_redelivered_result_is_applied_once_and_its_values_re_published(
    handlers: Handlers,
    db: MemoryDatabase,
    files: MemoryFiles,
    feed: RecordingFeed,
    journal: list[str],
    context_dir: Path,
) -> None:
    fragment = fragment_in(context_dir, files)
    message = results(
        context_dir,
        scalar("energy", 1.5),
        VariableResult(name="trace", summary_type="trendline", in_fragment=True),
        fragment=fragment,
        revision=5,
    )
    await handlers.results_ready(message)
    await handlers.results_ready(message)  # redelivered
    await handlers.results_ready(message.model_copy())  # a duplicate publish

    assert journal.count("db.apply_results") == 1
    assert len(files.merges) == 1
    for name in ("energy", "trace"):
        (entry,) = await db.history(P, R, name)
        assert entry[0].result_id == message.result_id
    updates = feed.of_type(ValuesUpdated)
    assert len(updates) == 3
    assert all(u.values == updates[0].values for u in updates)
    assert set(updates[0].values) == {"energy", "trace", "start_time"}
    assert len(feed.of_type(RunAdded)) == 1
    assert files.deleted == [fragment] * 3  # every delivery drops the fragment (if still there)
    assert files.fragments == set()


async def test_a_crash_between_commit_and_publish_converges_on_redelivery(
    handlers: Handlers,
    db: MemoryDatabase,
    files: MemoryFiles,
    feed: RecordingFeed,
    context_dir: Path,
) -> None:
    fragment = fragment_in(context_dir, files)
    message = results(context_dir, scalar("energy", 4.0), fragment=fragment)
    feed.fail_once = ConnectionError("Kafka is down")
    with pytest.raises(ConnectionError):
        await handlers.results_ready(message)
    assert await db.is_applied(message.result_id)
    assert not db.runs[(P, R)].announced
    assert fragment in files.fragments  # kept until the values are published
    assert feed.sent == []

    await handlers.results_ready(message)
    assert [type(m).__name__ for _, _, m in feed.sent] == ["RunAdded", "ValuesUpdated"]
    (updated,) = feed.of_type(ValuesUpdated)
    assert updated.values["energy"].summary == 4.0
    assert updated.values["start_time"].summary == START
    assert db.runs[(P, R)].announced
    assert len(files.merges) == 1
    assert fragment not in files.fragments


async def test_two_replicas_applying_one_result_at_once_commit_it_once(
    db: MemoryDatabase, feed: RecordingFeed, journal: list[str], context_dir: Path
) -> None:
    # two store instances over one database: each has its own run-file locks
    first_files, second_files = MemoryFiles(journal), MemoryFiles(journal)
    first = Handlers(db, first_files, feed)
    second = Handlers(db, second_files, feed)
    message = results(context_dir, scalar("energy", 6.5))
    await asyncio.gather(first.results_ready(message), second.results_ready(message))

    assert len(first_files.merges) + len(second_files.merges) == 2  # both got past is_applied
    assert journal.count("db.apply_results") == 2
    assert len(await db.history(P, R, "energy")) == 1  # but it was committed once
    assert len(feed.of_type(RunAdded)) == 1
    updates = feed.of_type(ValuesUpdated)
    assert len(updates) == 2
    assert updates[0].values == updates[1].values
    assert updates[0].values["energy"].summary == 6.5


async def test_an_older_revision_does_not_replace_newer_values(
    handlers: Handlers,
    db: MemoryDatabase,
    files: MemoryFiles,
    feed: RecordingFeed,
    context_dir: Path,
) -> None:
    await handlers.results_ready(
        results(context_dir, scalar("energy", 2.0), revision=200, context_hash="new")
    )
    feed.clear()
    old_fragment = fragment_in(context_dir, files)
    old = results(
        context_dir,
        scalar("energy", 1.0),
        scalar("only_old", 9),
        revision=100,
        context_hash="old",
        fragment=old_fragment,
    )
    await handlers.results_ready(old)

    current = await db.current_values(P, R)
    assert (current["energy"].value_float, current["energy"].context_hash) == (2.0, "new")
    assert current["only_old"].value_int == 9  # nothing newer existed for it
    assert [(v.value_float, superseded) for v, superseded in await db.history(P, R, "energy")] == [
        (2.0, False),
        (1.0, True),
    ]
    assert [i.name for i in files.merges[-1].items] == ["only_old"]  # the run file keeps 2.0
    (update,) = feed.of_type(ValuesUpdated)
    assert set(update.values) == {"only_old", "start_time"}
    assert old_fragment not in files.fragments

    # the same revision (e.g. the proc pass of the same context) does replace
    await handlers.results_ready(
        results(context_dir, scalar("energy", 3.0), revision=200, context_hash="new")
    )
    assert (await db.current_values(P, R, ["energy"]))["energy"].value_float == 3.0


async def test_each_variable_is_judged_against_its_own_stored_revision(
    handlers: Handlers, db: MemoryDatabase, files: MemoryFiles, context_dir: Path
) -> None:
    await handlers.results_ready(results(context_dir, scalar("a", 1), revision=100))
    await handlers.results_ready(results(context_dir, scalar("b", 1), revision=200))
    await handlers.results_ready(
        results(context_dir, scalar("a", 2), scalar("b", 2), scalar("c", 2), revision=150)
    )
    assert [i.name for i in files.merges[-1].items] == ["a", "c"]
    current = await db.current_values(P, R)
    assert {n: (v.value_int, v.revision) for n, v in current.items()} == {
        "a": (2, 150),
        "b": (1, 200),
        "c": (2, 150),
    }
    assert [s for _, s in await db.history(P, R, "b")] == [False, True]


async def test_a_result_entirely_out_of_date_only_reaches_the_history(
    handlers: Handlers,
    db: MemoryDatabase,
    files: MemoryFiles,
    feed: RecordingFeed,
    context_dir: Path,
) -> None:
    await handlers.results_ready(results(context_dir, scalar("energy", 2.0), revision=9))
    feed.clear()
    fragment = fragment_in(context_dir, files)
    stale = results(
        context_dir,
        VariableResult(name="energy", summary_type="trendline", in_fragment=True),
        revision=3,
        fragment=fragment,
        start_time=None,
    )
    await handlers.results_ready(stale)
    assert len(files.merges) == 1  # nothing to write into the run file
    assert files.waited == []  # its fragment data is not wanted
    assert feed.of_type(ValuesUpdated) == []
    assert await db.is_applied(stale.result_id)
    assert [s for _, s in await db.history(P, R, "energy")] == [False, True]
    assert fragment not in files.fragments


async def test_errors_and_none_results_replace_values_without_fragment_data(
    handlers: Handlers,
    db: MemoryDatabase,
    files: MemoryFiles,
    feed: RecordingFeed,
    context_dir: Path,
) -> None:
    await handlers.results_ready(
        results(context_dir, scalar("trace", 5.0), scalar("count", 5), revision=1)
    )
    feed.clear()
    await handlers.results_ready(
        results(
            context_dir,
            VariableResult(name="trace", error="no data", error_cls="SourceNameError"),
            VariableResult(name="count", returned_none=True),
            # an error never waits for fragment data, whatever the message claims
            VariableResult(
                name="flagged", error="boom", error_cls="RuntimeError", in_fragment=True
            ),
            revision=2,
        )
    )
    request = files.merges[-1]
    assert request.fragment is None
    assert files.waited == []
    items = {i.name: i for i in request.items}
    assert (items["trace"].action, items["trace"].error, items["trace"].error_cls) == (
        "error",
        "no data",
        "SourceNameError",
    )
    assert items["count"].action == "clear"
    assert items["flagged"].action == "error"

    current = await db.current_values(P, R)
    assert (current["trace"].kind, current["trace"].error) == ("none", "no data")
    assert current["trace"].value_float is None
    assert current["count"].cleared
    assert current["count"].value_int is None
    (update,) = feed.of_type(ValuesUpdated)
    assert update.values["trace"].error_cls == "SourceNameError"
    assert update.values["trace"].summary is None
    assert update.values["count"].cleared is True


async def test_variables_the_merge_could_not_write_are_stored_as_errors(
    handlers: Handlers,
    db: MemoryDatabase,
    files: MemoryFiles,
    feed: RecordingFeed,
    context_dir: Path,
) -> None:
    files.fail["ghost"] = "fragment has no objects for 'ghost'"
    message = results(
        context_dir,
        scalar("good", 1),
        VariableResult(name="ghost", summary_type="thumbnail", in_fragment=True),
        fragment=fragment_in(context_dir, files),
    )
    await handlers.results_ready(message)
    current = await db.current_values(P, R)
    assert current["good"].value_int == 1
    assert current["ghost"].error_cls == "StoreWriteError"
    assert current["ghost"].error == "fragment has no objects for 'ghost'"
    assert current["ghost"].result_id == message.result_id
    (update,) = feed.of_type(ValuesUpdated)
    assert update.values["ghost"].error_cls == "StoreWriteError"
    assert update.values["ghost"].summary_type is None


async def test_non_finite_summaries_come_from_the_merge_and_stay_out_of_the_feed(
    handlers: Handlers,
    db: MemoryDatabase,
    files: MemoryFiles,
    feed: RecordingFeed,
    context_dir: Path,
) -> None:
    files.summaries = {"nan_value": math.nan, "inf_complex": complex(math.inf, 1.0)}
    await handlers.results_ready(
        results(
            context_dir,
            VariableResult(name="nan_value", in_fragment=True),
            VariableResult(name="inf_complex", summary_type="complex", in_fragment=True),
            fragment=fragment_in(context_dir, files),
        )
    )
    current = await db.current_values(P, R)
    assert current["nan_value"].kind == "float"
    assert math.isnan(current["nan_value"].value_float or 0.0)
    assert current["inf_complex"].kind == "complex"
    assert current["inf_complex"].value_float == math.inf
    (update,) = feed.of_type(ValuesUpdated)
    assert update.values["nan_value"].summary is None
    assert update.values["inf_complex"].summary is None
    json.loads(update.model_dump_json())  # the feed stays valid JSON


async def test_fragment_problems_are_permanent_and_change_nothing(
    handlers: Handlers,
    db: MemoryDatabase,
    files: MemoryFiles,
    feed: RecordingFeed,
    projection: RecordingProjection,
    context_dir: Path,
    tmp_path: Path,
) -> None:
    wants_data = VariableResult(name="trace", summary_type="trendline", in_fragment=True)
    missing = context_dir / "extracted_data" / "fragments" / "never-written.h5"
    with pytest.raises(PermanentError, match=r"did not appear within 0\.25 s"):
        await handlers.results_ready(results(context_dir, wants_data, fragment=missing))
    with pytest.raises(PermanentError, match="names no fragment"):
        await handlers.results_ready(results(context_dir, wants_data))
    outside = tmp_path / "elsewhere.h5"
    files.fragments.add(outside)
    with pytest.raises(PermanentError, match="is not under"):
        await handlers.results_ready(results(context_dir, wants_data, fragment=outside))
    sneaky = context_dir / "extracted_data" / ".." / ".." / "elsewhere.h5"
    with pytest.raises(PermanentError, match="is not under"):
        await handlers.results_ready(results(context_dir, wants_data, fragment=sneaky))

    assert db.applied == set()
    assert db.values == {}
    assert files.merges == []
    assert files.deleted == []
    assert outside in files.fragments
    assert feed.sent == []
    assert projection.touches == []


# ---------------------------------------------------------------------- variables, proposals, runs
async def test_variable_definitions_are_published_unless_a_newer_revision_defined_them(
    handlers: Handlers,
    db: MemoryDatabase,
    feed: RecordingFeed,
    projection: RecordingProjection,
) -> None:
    defined = VariablesDefined(
        proposal=P,
        context_hash="h",
        revision=5,
        variables=(VariableDefinition(name="xgm", title="XGM", units="uJ", tags=("beam",)),),
    )
    await handlers.on_results(defined, DELIVERY)
    (published,) = feed.of_type(VariablesSet)
    assert [(v.name, v.title, v.units, v.tags) for v in published.variables] == [
        ("xgm", "XGM", "uJ", ("beam",))
    ]
    assert feed.sent[0][1] == proposal_key(P)
    assert projection.touches == [Touch(P, (), True, False, ())]

    older = defined.model_copy(
        update={"revision": 4, "variables": (VariableDefinition(name="xgm", title="Old"),)}
    )
    await handlers.on_results(older, DELIVERY)
    row = await db.variable(P, "xgm")
    assert row is not None
    assert row.title == "XGM"
    assert len(feed.sent) == 1
    assert len(projection.touches) == 1


async def test_a_registered_proposal_keeps_its_folder_and_gets_its_damnit_database(
    handlers: Handlers, db: MemoryDatabase, projection: RecordingProjection, context_dir: Path
) -> None:
    registered = ProposalRegistered(proposal=P, context_dir=str(context_dir))
    await handlers.on_proposal(registered, DELIVERY)
    assert await db.context_dir(P) == str(context_dir)
    assert projection.touches == [Touch(P, (), True, True, ())]


async def test_a_known_run_is_announced_once(
    handlers: Handlers, db: MemoryDatabase, feed: RecordingFeed, projection: RecordingProjection
) -> None:
    known = RunKnown(proposal=P, run=R, raw_seen=True)
    await handlers.on_run_known(known, DELIVERY)
    await handlers.on_run_known(known.model_copy(), DELIVERY)  # the catalog read again
    (added,) = feed.of_type(RunAdded)
    assert (added.proposal, added.run) == (P, R)
    assert added.added_at == known.time.timestamp()
    assert [t.runs for t in projection.touches] == [(R,), (R,)]


# ---------------------------------------------------------------------- processing and jobs
async def test_processing_state_is_kept_and_forwarded_only_when_newer(
    handlers: Handlers,
    db: MemoryDatabase,
    feed: RecordingFeed,
    projection: RecordingProjection,
) -> None:
    running = ProcessingStateChanged(
        processing_id="p1",
        request_id="r1",
        proposal=P,
        run=R,
        trigger=Trigger.RAW,
        status=ProcessingStatus.RUNNING,
    )
    finished = running.model_copy(
        update={"status": ProcessingStatus.FINISHED, "time": running.time + timedelta(seconds=5)}
    )
    await handlers.on_processing(finished, DELIVERY)
    await handlers.on_processing(running, DELIVERY)  # older, arrives late: ignored
    assert db.processing["p1"].status == ProcessingStatus.FINISHED
    assert [m.state.status for m in feed.of_type(ProcessingStateSet)] == ["finished"]
    assert feed.sent[0][1] == run_key(P, R)
    (touch,) = projection.touches
    assert touch.runs == (R,)
    (damnit,) = touch.messages
    assert json.loads(damnit) == {
        "msg_kind": "processing_finished",
        "data": {"processing_id": "p1"},
    }

    variable_done = running.model_copy(
        update={
            "processing_id": "p2",
            "status": ProcessingStatus.VARIABLE_DONE,
            "variable": "xgm",
        }
    )
    await handlers.on_processing(variable_done, DELIVERY)
    assert [m.state.status for m in feed.of_type(ProcessingStateSet)] == [
        "finished",
        "variable_done",
    ]
    assert len(projection.touches) == 1  # DAMNIT has no message for one variable's step


async def test_a_poison_result_fails_its_pass_over_the_executors_finished_state(
    handlers: Handlers, db: MemoryDatabase, feed: RecordingFeed, context_dir: Path
) -> None:
    """A results record that kept killing the store: its pass is recorded and published failed."""
    poison = results(context_dir, scalar("energy", 1.5))
    finished = ProcessingStateChanged(
        processing_id=poison.processing_id, request_id=poison.request_id, proposal=P, run=R,
        trigger=Trigger.RAW, status=ProcessingStatus.FINISHED,
    )  # fmt: skip
    await handlers.on_processing(finished, DELIVERY)
    reason = "results[0]@7 crashed the store process 3 times"
    await handlers.results_poisoned(poison, reason, "store-host")
    state = db.processing[poison.processing_id]
    assert (state.status, state.reason, state.hostname) == ("failed", reason, "store-host")
    published = [m.state for m in feed.of_type(ProcessingStateSet)]
    assert [(s.status, s.run) for s in published] == [("finished", R), ("failed", R)]
    assert not db.applied  # nothing of the record itself is applied

    # variable definitions (no pass) and unreadable records are only dead-lettered
    feed.clear()
    await handlers.results_poisoned(None, reason, "store-host")
    defined = VariablesDefined(proposal=P, context_hash="h", revision=1, variables=())
    await handlers.results_poisoned(defined, reason, "store-host")
    assert feed.sent == []


async def test_job_state_is_kept_and_forwarded_only_when_not_older(
    handlers: Handlers,
    db: MemoryDatabase,
    feed: RecordingFeed,
    projection: RecordingProjection,
) -> None:
    running = JobStateChanged(
        job_request_id="j1", proposal=P, run=R, state=JobState.RUNNING, job_id=77
    )
    await handlers.on_job_state(running, DELIVERY)
    await handlers.on_job_state(running, DELIVERY)  # redelivery re-publishes the same state
    pending = running.model_copy(
        update={"state": JobState.PENDING, "time": running.time - timedelta(seconds=1)}
    )
    await handlers.on_job_state(pending, DELIVERY)  # older: ignored
    assert db.jobs["j1"].state == JobState.RUNNING
    assert [(m.state.state, m.state.job_id) for m in feed.of_type(JobStateSet)] == [
        ("running", 77),
        ("running", 77),
    ]
    assert len(projection.touches) == 2
    data = json.loads(projection.touches[0].messages[0])["data"]
    assert (data["processing_id"], data["status"]) == ("j1", "RUNNING")
    assert (data["slurm_cluster"], data["slurm_job_id"]) == ("maxwell", "77")


# ---------------------------------------------------------------------- commands
async def test_a_comment_is_stored_written_published_and_projected(
    handlers: Handlers,
    db: MemoryDatabase,
    files: MemoryFiles,
    feed: RecordingFeed,
    projection: RecordingProjection,
    journal: list[str],
    context_dir: Path,
) -> None:
    await register_proposal(handlers, context_dir)
    await known_run(handlers)
    feed.clear()
    journal.clear()
    projection.touches.clear()
    command = SetComment(proposal=P, run=R, text="sample A, good beam")
    await handlers.on_command(command, DELIVERY)

    assert journal == [
        "db.set_manual_value",
        "files.merge",
        "projection.touch",
        "feed.values_updated",
    ]
    stored = (await db.current_values(P, R))["comment"]
    assert (stored.value_text, stored.provenance) == ("sample A, good beam", "comment")
    assert stored.result_id == f"cmd:{command.event_id}"
    (request,) = files.merges
    assert request.target == context_dir / "extracted_data" / f"p{P}_r{R}.h5"
    assert request.provenance == "comment"
    assert [(i.name, i.action, i.summary) for i in request.items] == [
        ("comment", "inline", "sample A, good beam")
    ]
    assert files.merged_unlocked == []
    (update,) = feed.of_type(ValuesUpdated)
    assert update.values["comment"].summary == "sample A, good beam"
    assert update.correlation_id == str(command.event_id)
    assert projection.touches == [Touch(P, (R,), False, False, ())]

    await handlers.on_command(command, DELIVERY)  # redelivered: stored once
    assert len(await db.history(P, R, "comment")) == 1


async def test_a_comment_on_an_unknown_run_is_rejected(
    handlers: Handlers,
    db: MemoryDatabase,
    files: MemoryFiles,
    feed: RecordingFeed,
    projection: RecordingProjection,
) -> None:
    command = SetComment(proposal=P, run=999, text="x", correlation_id="gui-42")
    await handlers.on_command(command, DELIVERY)
    (rejected,) = feed.of_type(CommandRejected)
    assert rejected.command_event_id == str(command.event_id)
    assert rejected.command_type == "set_comment"
    assert rejected.reason == f"run 999 of proposal {P} is not known"
    assert rejected.correlation_id == "gui-42"
    assert feed.sent[0][1] == proposal_key(P)
    assert await db.get_run(P, 999) is None
    assert db.values == {}
    assert files.merges == []
    assert projection.touches == []


async def test_a_comment_survives_a_run_file_that_cannot_be_written(
    handlers: Handlers,
    db: MemoryDatabase,
    files: MemoryFiles,
    feed: RecordingFeed,
    context_dir: Path,
) -> None:
    await register_proposal(handlers, context_dir)
    await known_run(handlers)
    files.broken = PermissionError("read-only file system")
    await handlers.on_command(SetComment(proposal=P, run=R, text="kept"), DELIVERY)
    assert (await db.current_values(P, R))["comment"].value_text == "kept"
    assert feed.of_type(ValuesUpdated)[-1].values["comment"].summary == "kept"
    assert feed.of_type(CommandRejected) == []


async def test_a_comment_without_a_context_folder_skips_the_run_file(
    handlers: Handlers, db: MemoryDatabase, files: MemoryFiles, feed: RecordingFeed
) -> None:
    await known_run(handlers)  # the catalog knows the run; no proposal was registered
    await handlers.on_command(SetComment(proposal=P, run=R, text="no folder"), DELIVERY)
    assert files.merges == []
    assert (await db.current_values(P, R))["comment"].value_text == "no folder"
    assert feed.of_type(ValuesUpdated)[-1].values["comment"].summary == "no folder"


@pytest.mark.parametrize("name", ["comment", "sample"])
async def test_a_redelivered_older_edit_does_not_replace_a_newer_one(
    handlers: Handlers,
    db: MemoryDatabase,
    files: MemoryFiles,
    feed: RecordingFeed,
    context_dir: Path,
    name: str,
) -> None:
    await register_proposal(handlers, context_dir)
    await known_run(handlers)
    await handlers.on_command(
        DefineUserVariable(proposal=P, name="sample", variable_type="string"), DELIVERY
    )

    def edit(text: str) -> SetComment | SetUserVariable:
        if name == "comment":
            return SetComment(proposal=P, run=R, text=text)
        return SetUserVariable(proposal=P, run=R, name=name, value=text)

    first = edit("first")
    await handlers.on_command(first, DELIVERY)
    await handlers.on_command(edit("second"), DELIVERY)
    await handlers.on_command(first, DELIVERY)  # a duplicate publish of the older command
    assert (await db.current_values(P, R))[name].value_text == "second"  # the database holds
    assert files.merges[-1].items[0].summary == "second"
    assert feed.of_type(ValuesUpdated)[-1].values[name].summary == "second"


async def test_user_variable_values_are_parsed_and_a_bad_one_changes_nothing(
    handlers: Handlers,
    db: MemoryDatabase,
    files: MemoryFiles,
    feed: RecordingFeed,
    projection: RecordingProjection,
    context_dir: Path,
) -> None:
    await register_proposal(handlers, context_dir)
    await known_run(handlers)
    for name, kind in (("thickness", "number"), ("good", "boolean"), ("shots", "integer")):
        await handlers.on_command(
            DefineUserVariable(proposal=P, name=name, variable_type=kind), DELIVERY
        )
    await handlers.on_command(
        SetUserVariable(proposal=P, run=R, name="thickness", value=" 2.5 "), DELIVERY
    )
    await handlers.on_command(
        SetUserVariable(proposal=P, run=R, name="good", value="YES"), DELIVERY
    )
    await handlers.on_command(
        SetUserVariable(proposal=P, run=R, name="shots", value="12"), DELIVERY
    )
    current = await db.current_values(P, R)
    assert (current["thickness"].kind, current["thickness"].value_float) == ("float", 2.5)
    assert current["thickness"].provenance == "manual-input"
    assert (current["good"].kind, current["good"].value_bool) == ("bool", True)
    assert (current["shots"].kind, current["shots"].value_int) == ("int", 12)
    assert files.merges[-1].provenance == "manual-input"

    feed.clear()
    merges, touches = len(files.merges), len(projection.touches)
    bad = SetUserVariable(proposal=P, run=R, name="thickness", value="thick")
    await handlers.on_command(bad, DELIVERY)
    (rejected,) = feed.of_type(CommandRejected)
    assert rejected.reason == "'thick' is not a valid number"
    assert rejected.command_type == "set_user_variable"
    assert rejected.command_event_id == str(bad.event_id)
    assert len(feed.sent) == 1
    assert (await db.current_values(P, R, ["thickness"]))["thickness"].value_float == 2.5
    assert len(await db.history(P, R, "thickness")) == 1
    assert (len(files.merges), len(projection.touches)) == (merges, touches)

    await handlers.on_command(
        SetUserVariable(proposal=P, run=R, name="thickness", value=None), DELIVERY
    )
    cleared = (await db.current_values(P, R, ["thickness"]))["thickness"]
    assert (cleared.kind, cleared.cleared) == ("none", True)
    assert [(i.name, i.action) for i in files.merges[-1].items] == [("thickness", "clear")]
    assert feed.of_type(ValuesUpdated)[-1].values["thickness"].cleared is True
    assert projection.touches[-1] == Touch(P, (R,), False, False, ())


async def test_only_user_variables_of_the_proposal_can_be_set(
    handlers: Handlers, db: MemoryDatabase, feed: RecordingFeed, context_dir: Path
) -> None:
    await handlers.on_results(
        VariablesDefined(
            proposal=P,
            context_hash="h",
            revision=1,
            variables=(VariableDefinition(name="xgm", title="XGM"),),
        ),
        DELIVERY,
    )
    await handlers.results_ready(results(context_dir, scalar("xgm", 1.0)))
    feed.clear()
    await handlers.on_command(SetUserVariable(proposal=P, run=R, name="xgm", value="2"), DELIVERY)
    await handlers.on_command(SetUserVariable(proposal=P, run=R, name="nope", value="2"), DELIVERY)
    assert rejections(feed) == [
        "'xgm' is computed by the context file and cannot be edited",
        f"proposal {P} has no variable 'nope'",
    ]
    assert (await db.current_values(P, R, ["xgm"]))["xgm"].value_float == 1.0


async def test_defining_a_user_variable_publishes_it_and_bad_definitions_are_rejected(
    handlers: Handlers,
    db: MemoryDatabase,
    feed: RecordingFeed,
    projection: RecordingProjection,
) -> None:
    await handlers.on_results(
        VariablesDefined(
            proposal=P,
            context_hash="h",
            revision=1,
            variables=(VariableDefinition(name="xgm", title="XGM"),),
        ),
        DELIVERY,
    )
    feed.clear()
    projection.touches.clear()
    command = DefineUserVariable(
        proposal=P, name="sample", title="  Sample  ", variable_type="string", description="id"
    )
    await handlers.on_command(command, DELIVERY)
    (published,) = feed.of_type(VariablesSet)
    (definition,) = published.variables
    assert (definition.name, definition.title, definition.user_type) == (
        "sample",
        "Sample",
        "string",
    )
    assert definition.description == "id"
    assert published.correlation_id == str(command.event_id)
    assert projection.touches == [Touch(P, (), True, False, ())]

    feed.clear()
    for bad in (
        DefineUserVariable(proposal=P, name="1st", variable_type="number"),
        DefineUserVariable(proposal=P, name="comment", variable_type="string"),
        DefineUserVariable(proposal=P, name="blank", title="   ", variable_type="number"),
        DefineUserVariable(proposal=P, name="xgm", variable_type="number"),
        DefineUserVariable(proposal=P, name="other", title="XGM", variable_type="number"),
    ):
        await handlers.on_command(bad, DELIVERY)
    reasons = rejections(feed)
    assert reasons[0].startswith("'1st' is not a valid variable name")
    assert reasons[1:] == [
        "'comment' is reserved and cannot be a user variable",
        "a user variable needs a non-empty title",
        "'xgm' is a variable of the context file, not a user variable",
        "the title 'XGM' is already used by 'xgm'",
    ]
    assert feed.of_type(VariablesSet) == []
    assert sorted(r.name for r in await db.variables(P)) == ["sample", "xgm"]
    assert len(projection.touches) == 1


async def test_tags_from_the_context_and_from_users(
    handlers: Handlers,
    db: MemoryDatabase,
    feed: RecordingFeed,
    projection: RecordingProjection,
) -> None:
    await handlers.on_results(
        VariablesDefined(
            proposal=P,
            context_hash="h",
            revision=5,
            variables=(VariableDefinition(name="xgm", title="XGM", tags=("beam", "xgm")),),
        ),
        DELIVERY,
    )
    projection.touches.clear()
    await handlers.on_command(
        SetTags(proposal=P, variable="xgm", add=(" mine ",), remove=("xgm",)), DELIVERY
    )
    row = await db.variable(P, "xgm")
    assert row is not None
    assert row.tags == ("beam", "mine")
    assert feed.of_type(VariablesSet)[-1].variables[0].tags == ("beam", "mine")
    assert projection.touches == [Touch(P, (), True, False, ())]

    feed.clear()
    await handlers.on_command(SetTags(proposal=P, variable="nope", add=("x",)), DELIVERY)
    await handlers.on_command(SetTags(proposal=P, variable="xgm", add=(" ",)), DELIVERY)
    await handlers.on_command(SetTags(proposal=P, variable="xgm", remove=("",)), DELIVERY)
    assert rejections(feed) == [
        f"proposal {P} has no variable 'nope'",
        "tags must be non-empty",
        "tags must be non-empty",
    ]
    assert len(feed.sent) == 3
    row = await db.variable(P, "xgm")
    assert row is not None
    assert row.tags == ("beam", "mine")
    assert len(projection.touches) == 1


async def test_settings_are_validated_published_on_both_topics_and_deletable(
    handlers: Handlers,
    db: MemoryDatabase,
    feed: RecordingFeed,
    projection: RecordingProjection,
) -> None:
    await handlers.on_command(
        SetProposalSetting(proposal=P, key="concurrent_jobs", value="20"), DELIVERY
    )
    await handlers.on_command(
        SetProposalSetting(proposal=P, key=" slurm_time ", value="04:00:00"), DELIVERY
    )
    assert await db.settings(P) == {"concurrent_jobs": 20, "slurm_time": "04:00:00"}
    assert [(topic, key) for topic, key, _ in feed.sent] == [
        ("proposal-settings", proposal_key(P)),
        ("updates", proposal_key(P)),
    ] * 2
    last = feed.of_type(ProposalSettingsSet)[-1]
    assert last.settings == {"concurrent_jobs": 20, "slurm_time": "04:00:00"}
    assert projection.touches == [Touch(P, (), True, True, ())] * 2

    feed.clear()
    await handlers.on_command(SetProposalSetting(proposal=P, key="colour", value="red"), DELIVERY)
    await handlers.on_command(
        SetProposalSetting(proposal=P, key="concurrent_jobs", value="lots"), DELIVERY
    )
    await handlers.on_command(
        SetProposalSetting(proposal=P, key="slurm_partition", value=None), DELIVERY
    )
    await handlers.on_command(SetProposalSetting(proposal=P, key="colour", value=None), DELIVERY)
    reasons = rejections(feed)
    assert reasons[0].startswith("unknown setting 'colour'; known settings: concurrent_jobs")
    assert reasons[1] == "concurrent_jobs must be a whole number, got 'lots'"
    assert reasons[2] == f"setting 'slurm_partition' is not set for proposal {P}"
    assert reasons[3].startswith("unknown setting 'colour'")
    assert [topic for topic, _, _ in feed.sent] == ["updates"] * 4  # nothing else published
    assert await db.settings(P) == {"concurrent_jobs": 20, "slurm_time": "04:00:00"}
    assert len(projection.touches) == 2

    await handlers.on_command(
        SetProposalSetting(proposal=P, key="slurm_time", value=None), DELIVERY
    )
    assert await db.settings(P) == {"concurrent_jobs": 20}
    assert feed.of_type(ProposalSettingsSet)[-1].settings == {"concurrent_jobs": 20}
    assert len(projection.touches) == 3


async def test_sync_damnit_answers_with_the_projection_or_says_why_not(
    handlers: Handlers,
    db: MemoryDatabase,
    files: MemoryFiles,
    feed: RecordingFeed,
    projection: RecordingProjection,
) -> None:
    command = SyncDamnit(proposal=P, rebuild=True)
    await handlers.on_command(command, DELIVERY)
    assert projection.syncs == [(P, True)]
    (synced,) = feed.of_type(DamnitSynced)
    assert (synced.path, synced.db_id, synced.runs_written) == (
        f"/ctx/p{P}/runs.sqlite",
        f"db-{P}",
        3,
    )
    assert synced.correlation_id == str(command.event_id)

    projection.sync_error = PermissionError("runs.sqlite is read-only")
    await handlers.on_command(SyncDamnit(proposal=P), DELIVERY)
    assert rejections(feed) == ["PermissionError: runs.sqlite is read-only"]

    without = Handlers(db, files, feed)
    await without.on_command(SyncDamnit(proposal=P), DELIVERY)
    assert rejections(feed)[-1].startswith("this store keeps no DAMNIT databases")
    assert len(projection.syncs) == 2


async def test_import_damnit_publishes_imported_settings_and_the_synced_database(
    db: MemoryDatabase,
    files: MemoryFiles,
    feed: RecordingFeed,
    projection: RecordingProjection,
) -> None:
    fake_importer = RecordingImporter({"runs": 4, "settings": 1})
    importer: Importer = fake_importer
    handlers = Handlers(db, files, feed, projection=projection, importer=importer)
    await db.set_setting(P, "slurm_partition", "upex")  # what the import wrote
    command = ImportDamnit(proposal=P, folder="/gpfs/exfel/p2212/usr/Shared/amore")
    await handlers.on_command(command, DELIVERY)
    assert fake_importer.imported == [command]
    (settings,) = feed.of_type(ProposalSettingsSet)
    assert settings.settings == {"slurm_partition": "upex"}
    (synced,) = feed.of_type(DamnitSynced)
    assert synced.imported == {"runs": 4, "settings": 1}
    assert projection.syncs == [(P, False)]
    assert [topic for topic, _, _ in feed.sent] == ["proposal-settings", "updates", "updates"]
