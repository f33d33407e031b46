"""Partial fragments (``*.h5.writing``) left by attempts that died are removed by a later pass."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from runstream_executor.results import fragment_path, remove_stale_partials

pytestmark = pytest.mark.unit


def _touch(path: Path, age_s: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"partial")
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_old_partials_of_the_run_go_and_everything_else_stays(tmp_path: Path) -> None:
    new = fragment_path(str(tmp_path), "frags", 7, 12, "rid-new", "attempt-new")
    dead = Path(f"{fragment_path(str(tmp_path), 'frags', 7, 12, 'rid-old', 'attempt-1')}.writing")
    young = Path(f"{fragment_path(str(tmp_path), 'frags', 7, 12, 'rid-old', 'attempt-2')}.writing")
    other_run = Path(f"{fragment_path(str(tmp_path), 'frags', 7, 120, 'r', 'a')}.writing")
    committed_old = fragment_path(str(tmp_path), "frags", 7, 12, "rid-done", "attempt-0")
    _touch(dead, age_s=3 * 3600)
    _touch(young, age_s=60)  # a pass that may still be writing
    _touch(other_run, age_s=3 * 3600)  # p7_r120 is not p7_r12
    _touch(committed_old, age_s=3 * 3600)  # a fragment a results message may name
    _touch(new, age_s=0)

    removed = remove_stale_partials(str(new), older_than_s=3600)

    assert removed == [dead.name]
    assert not dead.exists()
    for kept in (young, other_run, committed_old, new):
        assert kept.exists(), kept.name


def test_a_missing_folder_removes_nothing(tmp_path: Path) -> None:
    gone = tmp_path / "nowhere" / "p1_r1.x.y.h5"
    assert remove_stale_partials(str(gone), older_than_s=0) == []
