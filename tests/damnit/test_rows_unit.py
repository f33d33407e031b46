"""The rows the projection writes (pure): each kind of stored value as DAMNIT's combiner
would write it, and the file adapter's guards (newer GUI edits kept, older snapshots
ignored, one transaction)."""

from __future__ import annotations

import io
import json
import sqlite3
import struct
from pathlib import Path

import numpy as np
import pytest
from runstream_store.damnit import sqlite_file
from runstream_store.damnit.announce import job, processing
from runstream_store.damnit.rows import (
    PNG_MAGIC,
    ProjectedValue,
    RunSnapshot,
    blob_value,
    damnit_row,
    npy_bytes,
)
from runstream_store.values import StoredValue

pytestmark = pytest.mark.unit

T = 1_700_000_000.0


def _pv(name: str, value: StoredValue, t: float = T) -> ProjectedValue:
    return ProjectedValue(name, value, t)


def test_scalars_strings_and_attributes() -> None:
    row = damnit_row(
        _pv("x", StoredValue.from_summary(2.5, units="mJ", max_diff=0.5, bold=True,
                                          background=(1, 2, 3), summary_method="mean",
                                          provenance="context.py"))
    )  # fmt: skip
    assert (row.value, row.max_diff, row.summary_method, row.summary_type) == (
        2.5,
        0.5,
        "mean",
        None,
    )
    assert json.loads(row.attributes or "") == {
        "bold": True,
        "background": [1, 2, 3],
        "units": "mJ",
    }
    assert row.provenance == "context.py"
    assert damnit_row(_pv("s", StoredValue.from_summary("hi"))).value == "hi"
    assert damnit_row(_pv("b", StoredValue.from_summary(True))).value == 1
    assert damnit_row(_pv("i", StoredValue.from_summary(2**70))).value == str(2**70)
    plain = damnit_row(_pv("n", StoredValue.from_summary(3)))
    assert (plain.summary_method, plain.attributes) == ("", None)


def test_complex_errors_cleared_and_manual_values() -> None:
    row = damnit_row(_pv("c", StoredValue.from_summary((1.0, -2.0))))
    assert row.summary_type == "complex"
    assert struct.unpack("<dd", row.value) == (1.0, -2.0)
    error = damnit_row(_pv("e", StoredValue(kind="none", error="boom", error_cls="ValueError")))
    assert error.value is None
    assert error.summary_method is None
    assert json.loads(error.attributes or "") == {"error": "boom", "error_cls": "ValueError"}
    cleared = damnit_row(_pv("n", StoredValue(kind="none", cleared=True, provenance="context.py")))
    assert (cleared.value, cleared.attributes) == (None, None)
    comment = damnit_row(_pv("comment", StoredValue.from_summary("hi", provenance="comment")))
    assert comment.provenance == ""
    manual = damnit_row(_pv("t", StoredValue.from_summary(1.5, provenance="manual-input")))
    assert manual.provenance == "manual-input"


def test_binary_summaries() -> None:
    png = np.frombuffer(PNG_MAGIC + b"rest-of-a-png", dtype=np.uint8)
    assert blob_value(png) == png.tobytes()
    trend = np.vstack([np.arange(5.0), np.arange(5.0) ** 2])
    blob = blob_value(trend)
    assert blob is not None
    assert np.array_equal(np.load(io.BytesIO(blob)), trend)
    thumb = damnit_row(
        _pv("img", StoredValue(kind="blob", summary_type="thumbnail")), png.tobytes()
    )
    assert thumb.summary_type is None  # DAMNIT marks no type on PNG thumbnails
    line = damnit_row(
        _pv("l", StoredValue(kind="blob", summary_type="trendline")), npy_bytes(trend)
    )
    assert line.summary_type == "trendline"
    missing = damnit_row(_pv("l", StoredValue(kind="blob", summary_type="trendline")), None)
    assert missing.value is None


def _snap(run: int, seq: int, *values: ProjectedValue) -> RunSnapshot:
    return RunSnapshot(7, run, T, T, seq, tuple(values))


def _value(path: Path, run: int, name: str) -> object:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute(
            "SELECT value FROM run_variables WHERE run = ? AND name = ?", (run, name)
        ).fetchone()
        return None if row is None else row[0]
    finally:
        conn.close()


def test_file_guards(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    db_id = sqlite_file.new_db_id()
    first = sqlite_file.write_batch(
        path, sqlite_file.Batch(7, db_id, [_snap(1, 10, _pv("x", StoredValue.from_summary(1)))])
    )
    assert first.created
    assert first.changed == {1: ["start_time", "x"]}
    # an older snapshot of the run never overwrites a newer one
    old = sqlite_file.write_batch(
        path, sqlite_file.Batch(7, db_id, [_snap(1, 9, _pv("x", StoredValue.from_summary(0)))])
    )
    assert old.runs_written == 0
    assert _value(path, 1, "x") == 1
    # a comment the GUI wrote after our last write is kept and reported as pending
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO run_variables (proposal, run, name, version, value, timestamp, "
            "provenance) VALUES (7, 1, 'comment', 1, 'from the GUI', ?, 'manual-input')",
            (T + 100,),
        )
    conn.close()
    stale = _pv("comment", StoredValue.from_summary("older", provenance="comment"), T + 50)
    out = sqlite_file.write_batch(path, sqlite_file.Batch(7, db_id, [_snap(1, 11, stale)]))
    assert out.pending == {1: ["comment"]}
    assert _value(path, 1, "comment") == "from the GUI"
    assert sqlite_file.manual_rows(path, 7) == {(1, "comment"): T + 100}

    # a failure inside the transaction leaves the previous state
    def boom() -> None:
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        sqlite_file.write_batch(
            path,
            sqlite_file.Batch(7, db_id, [_snap(2, 12, _pv("x", StoredValue.from_summary(5)))]),
            before_commit=boom,
        )
    assert _value(path, 2, "x") is None
    state = sqlite_file.read_state(path, 7)
    assert state is not None
    assert state.db_id == db_id
    assert state.seqs == {1: 11}


def test_processing_announcements() -> None:
    from runstream_common.messages import JobStateChanged, ProcessingStateChanged

    base = dict(processing_id="p1", request_id="r", proposal=7, run=3, trigger="raw")
    running = json.loads(
        processing(ProcessingStateChanged(status="running", hostname="h", **base)) or b""
    )
    assert running["msg_kind"] == "processing_state_set"
    assert running["data"]["status"] == "RUNNING"
    assert running["data"]["hostname"] == "h"
    assert processing(ProcessingStateChanged(status="variable_done", **base)) is None
    done = json.loads(processing(ProcessingStateChanged(status="failed", **base)) or b"")
    assert done == {"msg_kind": "processing_finished", "data": {"processing_id": "p1"}}
    pending = json.loads(
        job(JobStateChanged(job_request_id="j", proposal=7, run=3, state="pending", job_id=42),
            "maxwell") or b""
    )  # fmt: skip
    assert pending["data"]["status"] == "PENDING"
    assert (pending["data"]["slurm_job_id"], pending["data"]["slurm_cluster"]) == ("42", "maxwell")
