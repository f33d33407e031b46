"""User commands against real PostgreSQL: accepted ones change state, bad ones are rejected."""

from __future__ import annotations

from pathlib import Path

import pytest
from runstream_common.messages import (
    DefineUserVariable,
    JobStateChanged,
    ProcessingStateChanged,
    RunKnown,
    SetComment,
    SetProposalSetting,
    SetTags,
    SetUserVariable,
    VariableDefinition,
    VariablesDefined,
)
from runstream_store.adapters.postgres import Repository
from runstream_store.handlers import Handlers

from .fragments import Fragment
from .helpers import DELIVERY, RecordingFeed

pytestmark = pytest.mark.integration

P, R = 3001, 12


async def _known_run(handlers: Handlers, run: int = R) -> None:
    await handlers.on_run_known(RunKnown(proposal=P, run=run, raw_seen=True), DELIVERY)


async def test_comment_is_stored_published_and_idempotent(
    handlers: Handlers, repo: Repository, feed: RecordingFeed
) -> None:
    await _known_run(handlers)
    command = SetComment(proposal=P, run=R, text="sample A, good beam")
    await handlers.on_command(command, DELIVERY)
    await handlers.on_command(command, DELIVERY)  # redelivered
    current = await repo.current_values(P, R, ["comment"])
    assert current["comment"].value_text == "sample A, good beam"
    assert len(await repo.history(P, R, "comment")) == 1
    update = feed.of_type("values_updated")[-1]
    assert update.values["comment"].summary == "sample A, good beam"
    assert update.correlation_id == str(command.event_id)


async def test_comment_on_an_unknown_run_is_rejected(
    handlers: Handlers, repo: Repository, feed: RecordingFeed
) -> None:
    command = SetComment(proposal=P, run=999, text="x")
    await handlers.on_command(command, DELIVERY)
    (rejected,) = feed.of_type("command_rejected")
    assert rejected.command_event_id == str(command.event_id)
    assert "run 999" in rejected.reason
    assert await repo.get_run(P, 999) is None


async def test_user_variable_values_are_parsed_and_bad_ones_rejected(
    handlers: Handlers, repo: Repository, feed: RecordingFeed
) -> None:
    await _known_run(handlers)
    await handlers.on_command(
        DefineUserVariable(proposal=P, name="thickness", title="Thickness", variable_type="number"),
        DELIVERY,
    )
    await handlers.on_command(
        DefineUserVariable(proposal=P, name="good", title="Good?", variable_type="boolean"),
        DELIVERY,
    )
    (defined, _) = feed.of_type("variables_set")
    assert defined.variables[0].user_type == "number"

    await handlers.on_command(
        SetUserVariable(proposal=P, run=R, name="thickness", value="2.5"), DELIVERY
    )
    await handlers.on_command(
        SetUserVariable(proposal=P, run=R, name="good", value="yes"), DELIVERY
    )
    current = await repo.current_values(P, R)
    assert current["thickness"].value_float == 2.5
    assert current["thickness"].provenance == "manual-input"
    assert current["good"].value_bool is True

    feed.clear()
    bad = SetUserVariable(proposal=P, run=R, name="thickness", value="thick")
    await handlers.on_command(bad, DELIVERY)
    (rejected,) = feed.of_type("command_rejected")
    assert rejected.reason == "'thick' is not a valid number"
    assert rejected.command_type == "set_user_variable"
    assert feed.of_type("values_updated") == []
    assert (await repo.current_values(P, R, ["thickness"]))["thickness"].value_float == 2.5
    assert len(await repo.history(P, R, "thickness")) == 1

    await handlers.on_command(
        SetUserVariable(proposal=P, run=R, name="thickness", value=None), DELIVERY
    )
    assert (await repo.current_values(P, R, ["thickness"]))["thickness"].cleared


async def test_context_variables_cannot_be_edited_or_shadowed(
    handlers: Handlers, repo: Repository, feed: RecordingFeed, context_dir: Path
) -> None:
    await handlers.on_results(
        VariablesDefined(
            proposal=P,
            context_hash="h",
            revision=1,
            variables=(VariableDefinition(name="xgm", title="XGM", tags=("beam",)),),
        ),
        DELIVERY,
    )
    frag = Fragment(context_dir, P, R)
    frag.scalar("xgm", 1.0, in_fragment=False)
    await handlers.results_ready(frag.message(with_fragment=False))
    feed.clear()
    await handlers.on_command(SetUserVariable(proposal=P, run=R, name="xgm", value="2"), DELIVERY)
    await handlers.on_command(
        DefineUserVariable(proposal=P, name="xgm", variable_type="number"), DELIVERY
    )
    await handlers.on_command(
        DefineUserVariable(proposal=P, name="other", title="XGM", variable_type="number"), DELIVERY
    )
    await handlers.on_command(SetUserVariable(proposal=P, run=R, name="nope", value="2"), DELIVERY)
    reasons = [m.reason for m in feed.of_type("command_rejected")]
    assert reasons == [
        "'xgm' is computed by the context file and cannot be edited",
        "'xgm' is a variable of the context file, not a user variable",
        "the title 'XGM' is already used by 'xgm'",
        f"proposal {P} has no variable 'nope'",
    ]
    assert (await repo.current_values(P, R, ["xgm"]))["xgm"].value_float == 1.0


async def test_settings_are_validated_published_and_deletable(
    handlers: Handlers, repo: Repository, feed: RecordingFeed
) -> None:
    await handlers.on_command(
        SetProposalSetting(proposal=P, key="concurrent_jobs", value="20"), DELIVERY
    )
    await handlers.on_command(
        SetProposalSetting(proposal=P, key="slurm_time", value="04:00:00"), DELIVERY
    )
    assert await repo.settings(P) == {"concurrent_jobs": 20, "slurm_time": "04:00:00"}
    compacted = [m for topic, key, m in feed.sent if topic == "proposal-settings"]
    assert compacted[-1].settings == {"concurrent_jobs": 20, "slurm_time": "04:00:00"}
    assert [key for topic, key, _ in feed.sent if topic == "proposal-settings"] == [b"3001"] * 2

    feed.clear()
    await handlers.on_command(SetProposalSetting(proposal=P, key="colour", value="red"), DELIVERY)
    await handlers.on_command(
        SetProposalSetting(proposal=P, key="concurrent_jobs", value="lots"), DELIVERY
    )
    await handlers.on_command(
        SetProposalSetting(proposal=P, key="slurm_partition", value=None), DELIVERY
    )
    reasons = [m.reason for m in feed.of_type("command_rejected")]
    assert reasons[0].startswith("unknown setting 'colour'; known settings: concurrent_jobs")
    assert reasons[1] == "concurrent_jobs must be a whole number, got 'lots'"
    assert reasons[2] == f"setting 'slurm_partition' is not set for proposal {P}"
    assert [t for t, _, _ in feed.sent] == ["updates"] * 3  # nothing else was published
    assert await repo.settings(P) == {"concurrent_jobs": 20, "slurm_time": "04:00:00"}

    await handlers.on_command(
        SetProposalSetting(proposal=P, key="slurm_time", value=None), DELIVERY
    )
    assert await repo.settings(P) == {"concurrent_jobs": 20}
    assert feed.of_type("proposal_settings_set")[-1].settings == {"concurrent_jobs": 20}


async def test_tags_from_context_and_users(
    handlers: Handlers, repo: Repository, feed: RecordingFeed
) -> None:
    defined = VariablesDefined(
        proposal=P,
        context_hash="h",
        revision=5,
        variables=(VariableDefinition(name="xgm", title="XGM", tags=("beam", "xgm")),),
    )
    await handlers.on_results(defined, DELIVERY)
    await handlers.on_command(
        SetTags(proposal=P, variable="xgm", add=("mine",), remove=("xgm",)), DELIVERY
    )
    row = await repo.variable(P, "xgm")
    assert row is not None
    assert row.tags == ("beam", "mine")
    assert feed.of_type("variables_set")[-1].variables[0].tags == ("beam", "mine")

    # an older context revision does not redefine the variable
    older = defined.model_copy(
        update={
            "revision": 4,
            "variables": (VariableDefinition(name="xgm", title="Old title", tags=()),),
        }
    )
    feed.clear()
    await handlers.on_results(older, DELIVERY)
    row = await repo.variable(P, "xgm")
    assert row is not None
    assert row.title == "XGM"
    assert feed.sent == []

    await handlers.on_command(SetTags(proposal=P, variable="nope", add=("x",)), DELIVERY)
    await handlers.on_command(SetTags(proposal=P, variable="xgm", add=(" ",)), DELIVERY)
    reasons = [m.reason for m in feed.of_type("command_rejected")]
    assert reasons == [f"proposal {P} has no variable 'nope'", "tags must be non-empty"]


async def test_run_processing_and_job_state_are_kept_and_passed_on(
    handlers: Handlers, repo: Repository, feed: RecordingFeed
) -> None:
    await _known_run(handlers)
    await _known_run(handlers)  # the compacted catalog is read again after a restart
    added = feed.of_type("run_added")
    assert [(m.proposal, m.run) for m in added] == [(P, R)]

    running = ProcessingStateChanged(
        processing_id="p1", request_id="r1", proposal=P, run=R, trigger="raw", status="running"
    )
    finished = running.model_copy(
        update={"status": "finished", "time": running.time.replace(year=2100)}
    )
    await handlers.on_processing(finished, DELIVERY)
    await handlers.on_processing(running, DELIVERY)  # older, arrives late: ignored
    states = await repo.processing_states(P, R)
    assert [s["status"] for s in states] == ["finished"]
    assert [m.state.status for m in feed.of_type("processing_state_set")] == ["finished"]

    job = JobStateChanged(job_request_id="j1", proposal=P, run=R, state="running", job_id=77)
    await handlers.on_job_state(job, DELIVERY)
    await handlers.on_job_state(job, DELIVERY)  # redelivery re-publishes the same state
    jobs = await repo.jobs(P, R)
    assert [(j["state"], j["job_id"]) for j in jobs] == [("running", 77)]
    assert [m.state.job_id for m in feed.of_type("job_state_set")] == [77, 77]
