"""CLI input checks and the pieces behind ``reprocess --wait`` (no broker needed)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import typer
from runstream_common.messages import ProcessingStateChanged, ProcessingStatus, Trigger
from runstream_ingest.cli import register
from runstream_ingest.layout import Completeness, Layout, folder_state
from runstream_ingest.progress import RequestTracker
from runstream_ingest.starter import write_starter
from typer.testing import CliRunner

pytestmark = pytest.mark.unit


@pytest.fixture
def app() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def _root() -> None:
        """runstream (test root)."""

    register(root)
    return root


def test_reprocess_rejects_bad_run_numbers(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["reprocess", "2212", "1", "x2"])
    assert result.exit_code == 2
    assert "'x2'" in result.output


def test_reprocess_rejects_unknown_data_kind(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["reprocess", "2212", "all", "--data", "calibrated"])
    assert result.exit_code == 2


def test_proposal_add_rejects_missing_data_root(app: typer.Typer, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "proposal",
            "add",
            "2212",
            "--context-dir",
            str(tmp_path / "ctx"),
            "--data-root",
            str(tmp_path / "nope"),
        ],
    )
    assert result.exit_code == 2
    assert "is not a folder" in result.output


def test_starter_context_is_written_once(tmp_path: Path) -> None:
    created = write_starter(tmp_path / "ctx", 2212)
    assert created == tmp_path / "ctx" / "context.py"
    text = created.read_text()
    compile(text, str(created), "exec")
    assert "@Variable" in text
    created.write_text("# mine\n")
    assert write_starter(tmp_path / "ctx", 2212) is None
    assert created.read_text() == "# mine\n"


def _state(
    request_id: str, run: int, status: ProcessingStatus, **kw: object
) -> ProcessingStateChanged:
    return ProcessingStateChanged(
        processing_id="p",
        request_id=request_id,
        proposal=1,
        run=run,
        trigger=Trigger.ALL,
        status=status,
        **kw,
    )


def test_tracker_counts_ok_failed_skipped() -> None:
    tracker = RequestTracker({"a": 1, "b": 2, "c": 3}, skipped=[9])
    assert tracker.observe(_state("a", 1, ProcessingStatus.RUNNING)) is None
    assert tracker.observe(_state("zzz", 1, ProcessingStatus.FINISHED)) is None  # another request
    done = tracker.observe(_state("a", 1, ProcessingStatus.FINISHED, counts={"ok": 3, "failed": 1}))
    assert done is not None
    assert done.run == 1
    tracker.observe(_state("b", 2, ProcessingStatus.FAILED, reason="context does not load"))
    assert tracker.observe(_state("b", 2, ProcessingStatus.FINISHED)) is None  # already terminal
    assert not tracker.complete
    tracker.observe(_state("c", 3, ProcessingStatus.FINISHED, counts={"ok": 4}))
    assert tracker.complete
    summary = tracker.summary()
    assert (summary.ok, summary.failed, summary.skipped, summary.pending) == ([1, 3], [2], [9], [])
    assert summary.variables == {"ok": 7, "failed": 1}


def test_run_folder_regex_follows_the_format(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path), run_dir_format="run_{run:05d}.d")
    for name in ("run_00012.d", "run_00013.d", "r0014", "run_x.d"):
        (tmp_path / "raw" / name).mkdir(parents=True)
    assert sorted(layout.run_folders(tmp_path)) == [12, 13]


def test_folder_state_settles(tmp_path: Path) -> None:
    folder = tmp_path / "r0001"
    assert folder_state(folder, 5, 1000.0).state is Completeness.MISSING
    folder.mkdir()
    assert folder_state(folder, 5, 1e12).state is Completeness.EMPTY
    (folder / "sub").mkdir()
    (folder / "sub" / "a.h5").write_bytes(b"1")
    mtime = (folder / "sub" / "a.h5").stat().st_mtime
    assert folder_state(folder, 5, mtime + 1).state is Completeness.BUSY
    assert folder_state(folder, 5, mtime + 6).state is Completeness.COMPLETE


def test_a_dangling_link_does_not_keep_a_folder_incomplete(tmp_path: Path) -> None:
    folder = tmp_path / "r0001"
    folder.mkdir()
    (folder / "a.h5").write_bytes(b"1")
    (folder / "b.h5").symlink_to(tmp_path / "gone.h5")
    state = folder_state(folder, 5, time.time() + 6)
    assert state.state is Completeness.COMPLETE
    assert state.files == 2


def test_a_copy_with_old_mtimes_is_new(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.h5").write_bytes(b"1")
    month_ago = time.time() - 30 * 86400
    os.utime(source / "a.h5", (month_ago, month_ago))
    os.utime(source, (month_ago, month_ago))
    copied = tmp_path / "r0002"
    shutil.copytree(source, copied)  # copy2 keeps the month-old mtime
    assert (copied / "a.h5").stat().st_mtime == pytest.approx(month_ago)
    now = time.time()
    state = folder_state(copied, 5, now)
    assert state.state is Completeness.COMPLETE  # cp -a sets the old times once a file is done
    assert state.newest_mtime == pytest.approx(month_ago)
    assert state.newest_change >= now - 60  # but it got here now: new, not history


def test_report_prints_summary_and_sets_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    from runstream_ingest.cli import _report

    tracker = RequestTracker({"a": 1, "b": 2}, skipped=[7])
    tracker.observe(_state("a", 1, ProcessingStatus.FINISHED, counts={"ok": 2}))
    tracker.observe(_state("b", 2, ProcessingStatus.FAILED, reason="boom"))
    assert _report(tracker, "req", True, as_json=False) == 1
    text = capsys.readouterr().out
    assert "Reprocessing summary" in text
    assert "run 2 failed: boom" in text
    ok_only = RequestTracker({"a": 1})
    ok_only.observe(_state("a", 1, ProcessingStatus.FINISHED))
    assert _report(ok_only, "req", True, as_json=True) == 0
    assert _report(RequestTracker({"a": 1}), "req", False, as_json=True) == 1  # timed out


def test_raw_in_flight_entries_expire() -> None:
    from runstream_ingest.tables import RawInFlight

    now = [0.0]
    table = RawInFlight(ttl_s=10, clock=lambda: now[0])
    table.add(1, 2)
    assert (1, 2) in table
    now[0] = 11.0
    assert (1, 2) not in table
    table.add(1, 3)
    table.finish(1, 3)
    assert (1, 3) not in table


async def test_the_clis_one_shot_publisher_refuses_an_oversized_message_before_connecting() -> None:
    from runstream_common.errors import MessageTooLarge
    from runstream_common.messages import ReprocessRequested
    from runstream_common.settings import KafkaSettings
    from runstream_ingest.adapters.publisher import publish_once

    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1", max_message_bytes=10_000)
    request = ReprocessRequested(proposal=1, runs=tuple(range(5000)))
    with pytest.raises(MessageTooLarge, match=r"message for t\.reprocess"):
        await publish_once(kafka, [("t.reprocess", b"1", request)])
