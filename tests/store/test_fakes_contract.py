"""The in-memory database of the handler unit tests keeps the rules of the real one.

Every test runs twice: against ``fakes.MemoryDatabase`` (unit) and against the
PostgreSQL ``Repository`` (integration), with the same assertions, so the fake
cannot drift from the adapter it stands for.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol

import pytest
from runstream_common.errors import InvalidCommand
from runstream_common.messages import (
    JobState,
    JobStateChanged,
    ProcessingStateChanged,
    ResultsReady,
    RunKnown,
    Trigger,
    VariableDefinition,
    VariableResult,
)
from runstream_common.messages.processing import ProcessingStatus
from runstream_store.handlers import Database
from runstream_store.values import StoredValue

from .fakes import MemoryDatabase

P, R = 5150, 3
START = 1_700_000_000.0


class Recorded(Database, Protocol):
    """The Database port plus the history both implementations can show."""

    async def history(
        self, proposal: int, run: int, name: str
    ) -> list[tuple[StoredValue, bool]]: ...


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("postgres", marks=pytest.mark.integration),
    ]
)
def database(request: pytest.FixtureRequest) -> Recorded:
    if request.param == "memory":
        return MemoryDatabase()
    repo: Recorded = request.getfixturevalue("repo")
    return repo


def _message(result_id: str, revision: int, start_time: float | None = START) -> ResultsReady:
    return ResultsReady(
        result_id=result_id,
        request_id="req",
        processing_id="proc",
        proposal=P,
        run=R,
        trigger=Trigger.RAW,
        context_hash=f"hash-{revision}",
        revision=revision,
        context_dir="/ctx",
        start_time=start_time,
        results=(),
    )


def _values(message: ResultsReady, **ints: int) -> dict[str, StoredValue]:
    return {
        name: StoredValue.from_result(
            VariableResult(name=name, summary=value),
            provenance=message.provenance,
            context_hash=message.context_hash,
            revision=message.revision,
            result_id=message.result_id,
        )
        for name, value in ints.items()
    }


async def _apply(
    database: Recorded, message: ResultsReady, winners: set[str] | None = None, **ints: int
) -> bool:
    values = _values(message, **ints)
    chosen = set(values) if winners is None else winners
    return await database.apply_results(message, values, chosen) is not None


async def test_results_are_applied_once_and_never_replace_a_newer_revision(
    database: Recorded,
) -> None:
    first = _message("r1", revision=5)
    assert await _apply(database, first, a=1, b=2)
    assert not await _apply(database, first, a=1, b=2)  # the same result_id again
    assert await database.is_applied("r1")
    assert not await database.is_applied("r2")
    assert await database.current_revisions(P, R, ["a", "b", "zz"]) == {"a": 5, "b": 5}

    # an older revision the handler judged stale: history only, marked superseded
    assert await _apply(database, _message("r2", revision=3, start_time=None), set(), a=10)
    # an older revision passed as a winner all the same: the database still keeps the newer
    assert await _apply(database, _message("r3", revision=3, start_time=None), {"a"}, a=20)
    current = await database.current_values(P, R)
    assert {n: (v.value_int, v.revision, v.result_id) for n, v in current.items()} == {
        "a": (1, 5, "r1"),
        "b": (2, 5, "r1"),
    }
    assert set(await database.current_values(P, R, ["b"])) == {"b"}
    history = await database.history(P, R, "a")
    assert [(v.value_int, superseded) for v, superseded in history] == [
        (1, False),
        (10, True),
        (20, False),
    ]
    run = await database.get_run(P, R)
    assert run is not None
    assert (run.start_time, run.announced) == (START, False)  # no start time keeps the old one
    assert await database.context_dir(P) == "/ctx"

    # the same or a newer revision replaces
    assert await _apply(database, _message("r4", revision=5), a=30)
    assert (await database.current_values(P, R, ["a"]))["a"].value_int == 30


async def test_runs_are_recorded_once_and_announced(database: Recorded) -> None:
    assert await database.get_run(P, R) is None
    row = await database.record_run_known(RunKnown(proposal=P, run=R), added_at=123.0)
    assert (row.proposal, row.run, row.start_time, row.added_at, row.announced) == (
        P,
        R,
        None,
        123.0,
        False,
    )
    again = await database.record_run_known(RunKnown(proposal=P, run=R), added_at=999.0)
    assert again.added_at == 123.0
    await database.mark_announced(P, R)
    announced = await database.get_run(P, R)
    assert announced is not None
    assert announced.announced

    assert await database.context_dir(P) is None
    await database.register_context_dir(P, "/ctx/a")
    await database.record_run_known(RunKnown(proposal=P, run=R + 1), added_at=1.0)
    assert await database.context_dir(P) == "/ctx/a"  # a run without a folder keeps it
    await database.register_context_dir(P, "/ctx/b")
    assert await database.context_dir(P) == "/ctx/b"


async def test_manual_values_need_a_known_run_win_over_revisions_and_apply_once(
    database: Recorded,
) -> None:
    comment = StoredValue.from_summary("hello", provenance="comment", result_id="cmd:1")
    with pytest.raises(InvalidCommand, match=rf"^run {R} of proposal {P} is not known$"):
        await database.set_manual_value(P, R, "comment", comment)

    assert await _apply(database, _message("r1", revision=9), x=1)
    manual = StoredValue.from_summary(2, provenance="manual-input", result_id="cmd:2")
    assert await database.set_manual_value(P, R, "x", manual)
    assert not await database.set_manual_value(P, R, "x", manual)  # the same command again
    current = (await database.current_values(P, R, ["x"]))["x"]
    assert (current.value_int, current.provenance) == (2, "manual-input")
    assert [v.result_id for v, _ in await database.history(P, R, "x")] == ["r1", "cmd:2"]


async def test_variables_revisions_tags_and_user_variables(database: Recorded) -> None:
    xgm = VariableDefinition(name="xgm", title="XGM", tags=("beam", "xgm"))
    assert await database.define_variables(P, "h5", 5, [xgm]) == [xgm]
    assert (
        await database.define_variables(P, "h4", 4, [xgm.model_copy(update={"title": "Old"})]) == []
    )
    row = await database.set_tags(P, "xgm", ["mine"], ["xgm"])
    assert (row.title, row.tags) == ("XGM", ("beam", "mine"))
    # a new context revision replaces the context's tags and keeps the users'
    await database.define_variables(P, "h6", 6, [xgm.model_copy(update={"tags": ()})])
    row_after = await database.variable(P, "xgm")
    assert row_after is not None
    assert row_after.tags == ("mine",)
    with pytest.raises(InvalidCommand, match=rf"^proposal {P} has no variable 'nope'$"):
        await database.set_tags(P, "nope", ["x"], [])

    with pytest.raises(InvalidCommand, match=r"^'xgm' is a variable of the context file"):
        await database.define_user_variable(P, "xgm", "X", "number", None)
    with pytest.raises(InvalidCommand, match=r"^the title 'XGM' is already used by 'xgm'$"):
        await database.define_user_variable(P, "other", "XGM", "number", None)
    user = await database.define_user_variable(P, "sample", "Sample", "string", "id")
    assert (user.name, user.title, user.user_type, user.description) == (
        "sample",
        "Sample",
        "string",
        "id",
    )
    assert (user.data, user.cluster, user.units, user.tags) == ("raw", False, None, ())
    renamed = await database.define_user_variable(P, "sample", "Sample id", "string", None)
    assert (renamed.title, renamed.description) == ("Sample id", None)
    assert [v.name for v in await database.variables(P)] == ["sample", "xgm"]

    # the context file may take a user variable's name over
    taken = VariableDefinition(name="sample", title="Sample (context)")
    assert await database.define_variables(P, "h7", 7, [taken]) == [taken]
    context_row = await database.variable(P, "sample")
    assert context_row is not None
    assert context_row.user_type is None


async def test_settings_are_set_deleted_and_listed(database: Recorded) -> None:
    assert await database.settings(P) == {}
    assert await database.set_setting(P, "slurm_time", "04:00:00") == {"slurm_time": "04:00:00"}
    assert await database.set_setting(P, "concurrent_jobs", 20) == {
        "concurrent_jobs": 20,
        "slurm_time": "04:00:00",
    }
    assert await database.set_setting(P, "slurm_time", None) == {"concurrent_jobs": 20}
    assert await database.settings(P) == {"concurrent_jobs": 20}


async def test_processing_and_job_states_keep_the_latest(database: Recorded) -> None:
    running = ProcessingStateChanged(
        processing_id="p1",
        request_id="r1",
        proposal=P,
        run=R,
        trigger=Trigger.RAW,
        status=ProcessingStatus.RUNNING,
    )
    later = running.model_copy(
        update={"status": ProcessingStatus.FINISHED, "time": running.time + timedelta(seconds=1)}
    )
    assert await database.record_processing(later)
    assert not await database.record_processing(running)  # older
    assert await database.record_processing(later)  # the same again

    job = JobStateChanged(job_request_id="j1", proposal=P, run=R, state=JobState.RUNNING)
    earlier = job.model_copy(
        update={"state": JobState.PENDING, "time": job.time - timedelta(seconds=1)}
    )
    assert await database.record_job(job)
    assert not await database.record_job(earlier)
    assert await database.record_job(job)
