"""runstream's runs.sqlite has DAMNIT 0.4's schema v4: DAMNIT opens it without migrating
it, and its tables, columns, indexes, trigger and views equal those DAMNIT creates."""

from __future__ import annotations

from pathlib import Path

import pytest
from runstream_store.damnit import sqlite_file
from runstream_store.damnit.rows import MetaSnapshot, ProjectedValue, RunSnapshot, VariableSnapshot
from runstream_store.values import StoredValue

from .conftest import SCRIPTS, run_damnit

pytestmark = pytest.mark.integration


def _write(path: Path) -> str:
    batch = sqlite_file.Batch(
        proposal=1234,
        db_id=sqlite_file.new_db_id(),
        runs=[
            RunSnapshot(
                1234, 1, 1.7e9, 1.7e9, 5,
                (ProjectedValue("x", StoredValue.from_summary(2.5, units="mJ"), 1.7e9),),
            )
        ],
        meta=MetaSnapshot(
            seq=3,
            variables=(VariableSnapshot("x", "X", "an x", None, ("a", "b")),),
            settings={"concurrent_jobs": 4},
        ),
    )  # fmt: skip
    return sqlite_file.write_batch(path, batch).db_id


def test_schema_is_damnits_own(damnit_python: Path, tmp_path: Path) -> None:
    ours = tmp_path / "ours" / "runs.sqlite"
    ours.parent.mkdir()
    db_id = _write(ours)
    theirs = tmp_path / "theirs" / "runs.sqlite"
    theirs.parent.mkdir()
    opened = run_damnit(damnit_python, "schema_dump.py", str(ours))
    made = run_damnit(damnit_python, "schema_dump.py", str(theirs), "--create")
    # DAMNIT changed nothing when it opened our file (no migration, our db_id kept).
    assert opened["before"] == opened["after"]
    assert opened["db_id"] == db_id
    assert opened["after"]["metameta"]["data_format_version"] == 4
    assert opened["after"]["metameta"]["proposal"] == 1234
    assert opened["after"]["metameta"]["concurrent_jobs"] == 4
    for part in ("tables", "indexes", "triggers"):
        assert opened["after"][part] == made["after"][part], part
    assert set(opened["after"]["views"]) == set(made["after"]["views"]) == {"runs", "max_diffs"}
    assert opened["after"]["views"]["runs"] == ["proposal", "run", "start_time", "added_at", "x"]
    assert opened["after"]["views"]["max_diffs"] == ["proposal", "run", "x"]


def test_scripts_are_plain(tmp_path: Path) -> None:
    """The helper scripts import nothing of runstream's (they run in DAMNIT's venv)."""
    for script in SCRIPTS.glob("*.py"):
        imports = [
            line.split()[1]
            for line in script.read_text().splitlines()
            if line.startswith(("import ", "from "))
        ]
        assert not [m for m in imports if m.startswith("runstream")], script
