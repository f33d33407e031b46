"""Reading and writing one DAMNIT ``runs.sqlite`` (blocking: call through asyncio.to_thread).

:func:`write_batch` applies one batch of PostgreSQL state in **one** SQLite transaction
(``BEGIN IMMEDIATE`` ... ``COMMIT``) together with the change numbers it holds, so a
process killed at any point leaves the previous or the new state (SQLite's rollback
journal), never a mix. Rows DAMNIT's GUI writes itself (comments, user-variable values)
are not overwritten when the file's row is newer than PostgreSQL's and differs: those
are edits the store has not applied yet; they are reported back (``Written.pending``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..values import COMMENT
from . import sqlite_schema
from .rows import (
    META_SEQ_KEY,
    SEQ_KEY,
    MetaSnapshot,
    Row,
    RunSnapshot,
    VariableSnapshot,
    damnit_row,
    is_manual,
    settings_metameta,
)

DB_NAME = "runs.sqlite"
BUSY_TIMEOUT_S = 10.0
_ROW_COLUMNS = "value, max_diff, provenance, summary_type, summary_method, attributes, timestamp"


def new_db_id() -> str:
    """40 random hex characters, as DAMNIT makes them."""
    return secrets.token_hex(20)


@dataclass(frozen=True)
class Batch:
    proposal: int
    db_id: str
    runs: Sequence[RunSnapshot] = ()
    blobs: Mapping[tuple[int, str], bytes | None] = field(default_factory=dict)
    meta: MetaSnapshot | None = None
    rebuild: bool = False


@dataclass
class Written:
    db_id: str
    created: bool = False
    changed: dict[int, list[str]] = field(default_factory=dict)
    variables: list[VariableSnapshot] = field(default_factory=list)
    pending: dict[int, list[str]] = field(default_factory=dict)
    pending_variables: list[str] = field(default_factory=list)
    runs_written: int = 0


@dataclass(frozen=True)
class FileState:
    db_id: str | None
    proposal: int | None
    seqs: dict[int, int]
    meta_seq: int


@contextlib.contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        yield conn
    finally:
        conn.close()


def _metameta(conn: sqlite3.Connection, key: str) -> Any:
    row = conn.execute("SELECT value FROM metameta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def _set_metameta(conn: sqlite3.Connection, key: str, value: Any) -> None:
    conn.execute(
        "INSERT INTO metameta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def read_state(path: Path, proposal: int) -> FileState | None:
    """What the file holds of this proposal; None if there is no (readable) file."""
    if not path.is_file():
        return None
    with connect(path) as conn:
        try:
            have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError:
            return None
        if "metameta" not in have:
            return None
        seqs: dict[int, int] = {}
        if "runstream_projection" in have:
            seqs = dict(
                conn.execute(
                    "SELECT run, seq FROM runstream_projection WHERE proposal = ?", (proposal,)
                ).fetchall()
            )
        meta_seq = _metameta(conn, META_SEQ_KEY)
        file_proposal = _metameta(conn, "proposal")
        return FileState(
            db_id=_metameta(conn, "db_id"),
            proposal=int(file_proposal) if file_proposal is not None else None,
            seqs=seqs,
            meta_seq=int(meta_seq) if meta_seq is not None else -1,
        )


def move_aside(path: Path) -> Path:
    """Keep an unreadable file for inspection; the projection then starts a new one."""
    target = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
    os.replace(path, target)
    return target


def write_batch(
    path: Path, batch: Batch, *, before_commit: Callable[[], None] | None = None
) -> Written:
    """Apply ``batch`` to the file at ``path`` (created if missing) in one transaction."""
    created = not path.exists()
    with connect(path) as conn:
        sqlite_schema.ensure_schema(conn)
        if created:
            with contextlib.suppress(OSError):
                os.chmod(path, 0o666)  # DAMNIT's GUIs write comments into it too
        conn.execute("BEGIN IMMEDIATE")
        try:
            outcome = _apply(conn, batch, created)
            if before_commit is not None:
                before_commit()
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
    return outcome


def _apply(conn: sqlite3.Connection, batch: Batch, created: bool) -> Written:
    db_id = _metameta(conn, "db_id")
    if db_id is None:
        db_id = batch.db_id
        _set_metameta(conn, "db_id", db_id)
    outcome = Written(db_id=str(db_id), created=created)
    _set_metameta(conn, "proposal", batch.proposal)
    if batch.rebuild:
        _clear(conn, batch.proposal)
    user_vars = {r[0] for r in conn.execute("SELECT name FROM variables WHERE type IS NOT NULL")}
    if batch.meta is not None:
        outcome.variables = _write_meta(conn, batch.meta)
        pg_names = {v.name for v in batch.meta.variables}
        outcome.pending_variables = sorted(user_vars - pg_names)
        user_vars |= {v.name for v in batch.meta.variables if v.user_type is not None}
    seqs = dict(
        conn.execute(
            "SELECT run, seq FROM runstream_projection WHERE proposal = ?", (batch.proposal,)
        ).fetchall()
    )
    top = max(seqs.values(), default=-1)
    for snap in batch.runs:
        if not batch.rebuild and seqs.get(snap.run, -1) >= snap.seq:
            continue  # the file already holds this state of the run, or a newer one
        changed, pending = _write_run(conn, snap, batch.blobs, user_vars)
        if changed:
            outcome.changed[snap.run] = changed
        if pending:
            outcome.pending[snap.run] = pending
        conn.execute(
            "INSERT INTO runstream_projection (proposal, run, seq) VALUES (?, ?, ?) "
            "ON CONFLICT (proposal, run) DO UPDATE SET seq = excluded.seq",
            (snap.proposal, snap.run, snap.seq),
        )
        top = max(top, snap.seq)
        outcome.runs_written += 1
    if top >= 0:
        _set_metameta(conn, SEQ_KEY, top)
    sqlite_schema.refresh_views(conn)
    return outcome


def _clear(conn: sqlite3.Connection, proposal: int) -> None:
    conn.execute("DELETE FROM run_variables WHERE proposal = ?", (proposal,))
    conn.execute("DELETE FROM run_info WHERE proposal = ?", (proposal,))
    conn.execute("DELETE FROM runstream_projection WHERE proposal = ?", (proposal,))
    conn.execute("DELETE FROM variable_tags")
    conn.execute("DELETE FROM variables")
    conn.execute("DELETE FROM metameta WHERE key = ?", (META_SEQ_KEY,))


def _write_meta(conn: sqlite3.Connection, meta: MetaSnapshot) -> list[VariableSnapshot]:
    """Variables, their tags and the settings; returns the definitions that changed."""
    existing = {
        r[0]: (r[1], r[2], r[3])
        for r in conn.execute("SELECT name, type, title, description FROM variables")
    }
    tags_now: dict[str, set[str]] = {}
    for name, tag in conn.execute(
        "SELECT vt.variable_name, t.name FROM variable_tags vt JOIN tags t ON t.id = vt.tag_id"
    ):
        tags_now.setdefault(name, set()).add(tag)
    changed: list[VariableSnapshot] = []
    for var in meta.variables:
        row = (var.user_type, var.title, var.description)
        if existing.get(var.name) != row:
            conn.execute(
                "INSERT INTO variables (name, type, title, description, attributes) "
                "VALUES (?, ?, ?, ?, NULL) ON CONFLICT (name) DO UPDATE SET type = excluded.type, "
                "title = excluded.title, description = excluded.description",
                (var.name, *row),
            )
        old_tags, new_tags = tags_now.get(var.name, set()), set(var.tags)
        for tag in sorted(new_tags - old_tags):
            conn.execute("INSERT OR IGNORE INTO tags (name) VALUES (?)", (tag,))
            conn.execute(
                "INSERT OR IGNORE INTO variable_tags (variable_name, tag_id) "
                "SELECT ?, id FROM tags WHERE name = ?",
                (var.name, tag),
            )
        for tag in sorted(old_tags - new_tags):  # the trigger drops tags nobody uses
            conn.execute(
                "DELETE FROM variable_tags WHERE variable_name = ? "
                "AND tag_id = (SELECT id FROM tags WHERE name = ?)",
                (var.name, tag),
            )
        if existing.get(var.name) != row or old_tags != new_tags:
            changed.append(var)
    for key, value in settings_metameta(meta.settings).items():
        _set_metameta(conn, key, value if not isinstance(value, bool) else int(value))
    _set_metameta(conn, META_SEQ_KEY, meta.seq)
    return changed


def _write_run(
    conn: sqlite3.Connection,
    snap: RunSnapshot,
    blobs: Mapping[tuple[int, str], bytes | None],
    user_vars: set[str],
) -> tuple[list[str], list[str]]:
    p, r = snap.proposal, snap.run
    changed: list[str] = []
    pending: list[str] = []
    info = conn.execute(
        "SELECT start_time FROM run_info WHERE proposal = ? AND run = ?", (p, r)
    ).fetchone()
    if info is None:
        conn.execute(
            "INSERT INTO run_info (proposal, run, start_time, added_at) VALUES (?, ?, ?, ?)",
            (p, r, snap.start_time, snap.added_at),
        )
        if snap.start_time is not None:  # a run only announced (no data yet) stays quiet
            changed.append("start_time")
    elif snap.start_time is not None and info[0] != snap.start_time:
        conn.execute(
            "UPDATE run_info SET start_time = ? WHERE proposal = ? AND run = ?",
            (snap.start_time, p, r),
        )
        changed.append("start_time")
    old = {
        row[0]: tuple(row[1:])
        for row in conn.execute(
            f"SELECT name, {_ROW_COLUMNS} FROM run_variables "
            "WHERE proposal = ? AND run = ? AND version = 1",
            (p, r),
        )
    }
    upserts: list[tuple[Any, ...]] = []
    for pv in snap.values:
        if pv.name == "start_time":
            continue  # DAMNIT keeps it in run_info
        row = damnit_row(pv, blobs.get((r, pv.name)))
        before = old.get(pv.name)
        if row.same_content(before):
            continue
        if (
            is_manual(pv.value, pv.name)
            and before is not None
            and before[6] is not None
            and float(before[6]) > row.timestamp
        ):
            pending.append(pv.name)  # edited in the file after our last write: not ours to undo
            continue
        upserts.append(_params(p, r, pv.name, row))
        changed.append(pv.name)
    if upserts:
        conn.executemany(_UPSERT, upserts)
    in_pg = {pv.name for pv in snap.values}
    for name, before in old.items():
        if name not in in_pg and (name == COMMENT or name in user_vars) and before[0] is not None:
            pending.append(name)  # a GUI edit PostgreSQL has not seen yet
    return changed, pending


_UPSERT = (
    "INSERT INTO run_variables (proposal, run, name, version, value, timestamp, max_diff, "
    "provenance, summary_type, summary_method, attributes) "
    "VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (proposal, run, name, version) DO UPDATE SET value = excluded.value, "
    "timestamp = excluded.timestamp, max_diff = excluded.max_diff, "
    "provenance = excluded.provenance, summary_type = excluded.summary_type, "
    "summary_method = excluded.summary_method, attributes = excluded.attributes"
)


def _params(p: int, r: int, name: str, row: Row) -> tuple[Any, ...]:
    return (
        p, r, name, row.value, row.timestamp, row.max_diff, row.provenance, row.summary_type,
        row.summary_method, row.attributes,
    )  # fmt: skip


# ---------------------------------------------------------------------- edits made by GUIs
@dataclass(frozen=True)
class EditedValue:
    name: str
    value: Any
    timestamp: float | None
    provenance: str | None


@dataclass(frozen=True)
class EditedVariable:
    name: str
    title: str | None
    description: str | None
    type: str | None


def read_values(
    path: Path, proposal: int, run: int, names: Sequence[str]
) -> dict[str, EditedValue]:
    """Rows of ``names`` for one run, as a GUI left them (absent names: no row)."""
    with connect(path) as conn:
        marks = ", ".join("?" * len(names))
        rows = conn.execute(
            f"SELECT name, value, timestamp, provenance FROM run_variables "
            f"WHERE proposal = ? AND run = ? AND version = 1 AND name IN ({marks})",
            (proposal, run, *names),
        ).fetchall()
    return {r[0]: EditedValue(r[0], r[1], r[2], r[3]) for r in rows}


def manual_rows(path: Path, proposal: int) -> dict[tuple[int, str], float]:
    """Write times of the comments and user values in the file (rows a GUI may have edited)."""
    with connect(path) as conn:
        rows = conn.execute(
            "SELECT run, name, timestamp FROM run_variables WHERE proposal = ? AND value IS NOT NULL "
            "AND (name = 'comment' OR name IN (SELECT name FROM variables WHERE type IS NOT NULL))",
            (proposal,),
        ).fetchall()
    return {(r[0], r[1]): float(r[2] or 0.0) for r in rows}


def read_variables(path: Path) -> dict[str, EditedVariable]:
    with connect(path) as conn:
        rows = conn.execute("SELECT name, title, description, type FROM variables").fetchall()
    return {r[0]: EditedVariable(r[0], r[1], r[2], r[3]) for r in rows}
