"""Paths come from the proposal registry: the path rules and the verdicts of the executor and the store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from runstream_common.errors import PathRefused, UnknownProposal
from runstream_common.messages import (
    ProposalRegistered,
    ProposalRemoved,
    ResultsReady,
    RunRequested,
    Trigger,
)
from runstream_common.registry import (
    Registration,
    RegistryTable,
    checked_path,
    same_folder,
    within,
)
from runstream_executor.registry import RunGuard, judge_run
from runstream_store.registry import judge_results, trusted

pytestmark = pytest.mark.unit

P = 900


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """Two proposals' context folders and data folders, and a link from one into the other."""
    mine, other = tmp_path / "usr" / "p900", tmp_path / "usr" / "p901"
    data_root = tmp_path / "data"
    for folder in (mine / "extracted_data", other / "extracted_data", data_root / "FXE" / "p900"):
        folder.mkdir(parents=True)
    (other / "extracted_data" / "p901_r1.h5").write_bytes(b"victim")
    (mine / "extracted_data" / "link").symlink_to(other / "extracted_data")
    (tmp_path / "alias").symlink_to(mine)
    return {"mine": mine, "other": other, "data": data_root, "alias": tmp_path / "alias"}


def run(context_dir: Path | str, proposal_dir: Path | str, proposal: int = P) -> RunRequested:
    return RunRequested(
        request_id="r",
        proposal=proposal,
        run=1,
        trigger=Trigger.RAW,
        context_dir=str(context_dir),
        proposal_dir=str(proposal_dir),
    )


def results(context_dir: Path | str, fragment: Path | str | None) -> ResultsReady:
    return ResultsReady(
        result_id="res",
        request_id="r",
        processing_id="p",
        proposal=P,
        run=1,
        trigger=Trigger.RAW,
        context_hash="h",
        revision=1,
        context_dir=str(context_dir),
        fragment=None if fragment is None else str(fragment),
        results=(),
    )


# ------------------------------------------------------------------ path rules
def test_paths_must_be_absolute_and_free_of_dot_dot(tmp_path: Path) -> None:
    assert checked_path(str(tmp_path), "x") == str(tmp_path)
    for bad in ("relative/dir", "", f"{tmp_path}/a/../b", "../etc"):
        with pytest.raises(PathRefused):
            checked_path(bad, "context_dir")


def test_links_are_resolved_on_both_sides(tree: dict[str, Path]) -> None:
    mine, other = tree["mine"], tree["other"]
    assert same_folder(str(tree["alias"]), str(mine))
    assert same_folder(f"{mine}/", str(mine))
    assert not same_folder(str(other), str(mine))
    allowed = str(mine / "extracted_data")
    assert within(str(mine / "extracted_data" / "fragments" / "f.h5"), allowed)  # not there yet
    assert within(str(tree["alias"] / "extracted_data" / "f.h5"), allowed)
    assert not within(str(mine / "extracted_data" / "link" / "p901_r1.h5"), allowed)
    assert not within(f"{mine}/extracted_data_evil/f.h5", allowed), "a prefix is not a folder"
    assert not within(str(other / "extracted_data" / "p901_r1.h5"), allowed)


def test_latest_registration_wins_and_removal_or_tombstone_forgets() -> None:
    table = RegistryTable()
    table.apply(ProposalRegistered(proposal=P, context_dir="/a", data_root="/d"))
    table.apply(ProposalRegistered(proposal=P, context_dir="/b"))
    assert table.get(P) == Registration(P, "/b", None)
    table.apply(ProposalRemoved(proposal=P))
    assert table.get(P) is None
    table.apply(ProposalRegistered(proposal=P, context_dir="/c"))
    table.forget(str(P).encode())
    table.forget(b"not a number")
    table.forget(None)
    assert table.get(P) is None
    assert len(table) == 0


# ------------------------------------------------------------------ the executor
def test_a_run_message_must_name_the_registered_folders(tree: dict[str, Path]) -> None:
    mine, other, data = tree["mine"], tree["other"], tree["data"]
    reg = Registration(P, str(mine), str(data))
    proposal_dir = data / "FXE" / "p900"
    assert judge_run(run(mine, proposal_dir), reg, None) is None
    assert judge_run(run(tree["alias"], proposal_dir), reg, None) is None  # the same folder
    assert judge_run(run(mine, data), reg, None) is None  # the data root is the proposal folder

    unknown = judge_run(run(mine, proposal_dir), None, None)
    assert isinstance(unknown, UnknownProposal)
    assert str(unknown).endswith("is not registered (runstream proposal add); nothing was run")

    forged = judge_run(run(other, proposal_dir), reg, None)
    assert isinstance(forged, PathRefused)
    assert f"context_dir {other} is not the registered context folder {mine}" in str(forged)

    outside = judge_run(run(mine, other), reg, None)
    assert isinstance(outside, PathRefused)
    assert f"proposal_dir {other} is not under the data root {data}" in str(outside)
    with pytest.raises(PathRefused, match=r"contains '\.\.'"):
        judge_run(run(mine, f"{data}/../usr/p901"), reg, None)
    with pytest.raises(PathRefused, match="not an absolute path"):
        judge_run(run("usr/p900", proposal_dir), reg, None)


def test_a_registration_without_data_root_uses_the_executors(tree: dict[str, Path]) -> None:
    mine, data = tree["mine"], tree["data"]
    reg = Registration(P, str(mine), None)
    proposal_dir = data / "FXE" / "p900"
    assert judge_run(run(mine, proposal_dir), reg, str(data)) is None
    assert isinstance(judge_run(run(mine, proposal_dir), reg, str(tree["other"])), PathRefused)
    nowhere = judge_run(run(mine, proposal_dir), reg, None)
    assert isinstance(nowhere, PathRefused)
    assert "registered without a data root and the executor has none" in str(nowhere)


# ------------------------------------------------------------------ the store
def test_a_results_message_must_name_the_registered_folder(tree: dict[str, Path]) -> None:
    mine, other = tree["mine"], tree["other"]
    reg = Registration(P, str(mine), None)
    fragment = mine / "extracted_data" / "fragments" / "p900_r1.abc.h5"
    assert judge_results(results(mine, fragment), reg) is None
    assert judge_results(results(mine, None), reg) is None
    assert isinstance(judge_results(results(mine, fragment), None), UnknownProposal)

    forged = judge_results(results(other, other / "extracted_data" / "p901_r1.h5"), reg)
    assert isinstance(forged, PathRefused)
    assert f"context_dir {other} is not the registered context folder {mine}" in str(forged)


@pytest.mark.parametrize(
    "where",
    [
        "other/extracted_data/p901_r1.h5",  # another proposal's run file
        "mine/context.py",  # the proposal's own folder, outside extracted_data
        "mine/extracted_data",  # the folder itself
        "mine/extracted_data/link/p901_r1.h5",  # a link out of extracted_data
    ],
)
def test_fragments_stay_inside_the_registered_extracted_data(
    tree: dict[str, Path], where: str
) -> None:
    owner, _, rest = where.partition("/")
    fragment = tree[owner] / rest
    refused = judge_results(
        results(tree["mine"], fragment), Registration(P, str(tree["mine"]), None)
    )
    assert isinstance(refused, PathRefused)
    assert "is not inside" in str(refused)
    assert "nothing was read, written or deleted" in str(refused)


def test_dot_dot_in_a_fragment_is_refused_even_if_it_lands_inside(tree: dict[str, Path]) -> None:
    mine = tree["mine"]
    sneaky = f"{mine}/extracted_data/fragments/../p900_r1.h5"
    with pytest.raises(PathRefused, match=r"contains '\.\.'"):
        judge_results(results(mine, sneaky), Registration(P, str(mine), None))


def test_an_accepted_message_goes_on_with_the_registered_folder(tree: dict[str, Path]) -> None:
    mine, alias = tree["mine"], tree["alias"]
    message = results(alias, alias / "extracted_data" / "f.h5")
    reg = Registration(P, str(mine), None)
    assert judge_results(message, reg) is None
    checked = trusted(message, reg)
    assert checked.context_dir == str(mine)
    assert checked.fragment == os.path.realpath(mine / "extracted_data" / "f.h5")
    assert checked.result_id == message.result_id


class OneRegistration:
    """A stand-in for ProposalRegistry.judge over a fixed registration (no Kafka)."""

    def __init__(self, registration: Registration | None) -> None:
        self.registration = registration

    async def judge(self, proposal: int, verdict: Any) -> Registration:
        problem = await verdict(self.registration)
        if problem is not None:
            raise problem
        assert self.registration is not None
        return self.registration


async def test_an_accepted_run_goes_on_with_the_registered_context_folder(
    tree: dict[str, Path],
) -> None:
    mine, data = tree["mine"], tree["data"]
    guard = RunGuard(OneRegistration(Registration(P, str(mine), str(data))), None)  # type: ignore[arg-type]
    via_link = await guard.checked(run(tree["alias"], data / "FXE" / "p900"))
    assert via_link.context_dir == str(mine)
    assert via_link.proposal_dir == str(data / "FXE" / "p900")
    with pytest.raises(PathRefused):
        await guard.checked(run(tree["other"], data))
    with pytest.raises(UnknownProposal):
        await RunGuard(OneRegistration(None), str(data)).checked(run(mine, data))  # type: ignore[arg-type]
