"""DAMNIT's ``runs.sqlite``, format version 4, written from its documented layout.

Tables, index names, the orphan-tag trigger and the two pivot views are those DAMNIT
0.4 creates and reads (``metameta.data_format_version = 4``), so its GUI and API open
the file without migrating it. Older files (versions 1-3, which DAMNIT itself still
opens by upgrading them) are brought to version 4 step by step, each step in its own
transaction, as DAMNIT does.

One table is ours: ``runstream_projection`` records, per run, the PostgreSQL change
number the file holds (DAMNIT never reads it). Blocking sqlite3 code: run in a thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable

FORMAT_VERSION = 4

_V1 = """
CREATE TABLE IF NOT EXISTS run_info(proposal, run, start_time, added_at);
CREATE UNIQUE INDEX IF NOT EXISTS proposal_run ON run_info (proposal, run);
CREATE TABLE IF NOT EXISTS run_variables(proposal, run, name, version, value, timestamp,
                                         max_diff, provenance, summary_type, summary_method);
CREATE UNIQUE INDEX IF NOT EXISTS variable_version ON run_variables (proposal, run, name, version);
CREATE VIEW IF NOT EXISTS runs AS SELECT * FROM run_info;
CREATE VIEW IF NOT EXISTS max_diffs AS SELECT proposal, run FROM run_info;
CREATE TABLE IF NOT EXISTS metameta(key PRIMARY KEY NOT NULL, value);
CREATE TABLE IF NOT EXISTS variables(name TEXT PRIMARY KEY NOT NULL, type TEXT, title TEXT,
                                     description TEXT, attributes TEXT);
CREATE TABLE IF NOT EXISTS time_comments(timestamp, comment);
"""
_V2 = "ALTER TABLE run_variables ADD COLUMN attributes"
_V3 = """
CREATE TABLE IF NOT EXISTS tags(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS variable_tags(
    variable_name TEXT NOT NULL,
    tag_id INTEGER NOT NULL,
    FOREIGN KEY (variable_name) REFERENCES variables(name) ON DELETE CASCADE,
    FOREIGN KEY (tag_id) REFERENCES tags(id) ON DELETE CASCADE,
    PRIMARY KEY (variable_name, tag_id)
);
"""
_V4 = """
CREATE TRIGGER IF NOT EXISTS delete_orphan_tags_after_variable_tag_delete
AFTER DELETE ON variable_tags FOR EACH ROW
BEGIN
    DELETE FROM tags WHERE id = OLD.tag_id
        AND NOT EXISTS (SELECT 1 FROM variable_tags WHERE tag_id = OLD.tag_id);
END;
"""
STEPS: dict[int, str] = {1: _V1, 2: _V2, 3: _V3, 4: _V4}

OURS = """
CREATE TABLE IF NOT EXISTS runstream_projection(
    proposal INTEGER NOT NULL,
    run INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (proposal, run)
);
"""

RESERVED_COLUMNS = ("proposal", "run", "start_time", "added_at")


class NotADamnitDatabase(Exception):
    """The file is not a DAMNIT database this code can open (e.g. format v0)."""


def _version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'metameta'"
    ).fetchone()
    if not exists:
        return -1
    row = conn.execute("SELECT value FROM metameta WHERE key = 'data_format_version'").fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


def ensure_schema(conn: sqlite3.Connection) -> int:
    """Create a new database or upgrade one of version 1-3. Returns the version found (-1: new).

    ``conn`` must be in autocommit mode (``isolation_level=None``).
    """
    found = _version(conn)
    if found == 0:
        raise NotADamnitDatabase(
            "runs.sqlite is in DAMNIT's legacy format v0, which DAMNIT 0.4 cannot open either"
        )
    if found > FORMAT_VERSION:
        raise NotADamnitDatabase(
            f"runs.sqlite has data format v{found}, newer than v{FORMAT_VERSION} known here"
        )
    for version in range(max(found, 0) + 1, FORMAT_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        _run_script(conn, STEPS[version])
        conn.execute(
            "INSERT INTO metameta (key, value) VALUES ('data_format_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (version,),
        )
        conn.execute("COMMIT")
    _run_script(conn, OURS)
    return found


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Execute ``script`` statement by statement (executescript would COMMIT first)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            conn.execute(buffer)
            buffer = ""
    if buffer.strip():
        conn.execute(buffer)


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(name: str) -> str:
    return "'" + name.replace("'", "''") + "'"


def views_sql(names: Iterable[str]) -> list[str]:
    """DROP + CREATE of the ``runs`` and ``max_diffs`` pivot views for these variables."""
    names = sorted(set(names))
    value_cols = "".join(
        f", max(CASE WHEN name = {_quote_literal(n)} THEN value END) AS {quote_identifier(n)}"
        for n in names
        if n not in RESERVED_COLUMNS
    )
    diff_cols = "".join(
        f", max(CASE WHEN name = {_quote_literal(n)} THEN max_diff END) AS {quote_identifier(n)}"
        for n in names
        if n not in ("proposal", "run")
    )
    return [
        "DROP VIEW IF EXISTS runs",
        "CREATE VIEW runs AS SELECT run_info.proposal, run_info.run, start_time, added_at"
        f"{value_cols} FROM run_variables INNER JOIN run_info"
        " ON run_variables.proposal = run_info.proposal AND run_variables.run = run_info.run"
        " GROUP BY run_info.run",
        "DROP VIEW IF EXISTS max_diffs",
        f"CREATE VIEW max_diffs AS SELECT proposal, run{diff_cols} FROM run_variables GROUP BY run",
    ]


def view_columns(conn: sqlite3.Connection) -> set[str]:
    """Variable columns the ``runs`` view has now."""
    rows = conn.execute("PRAGMA table_info(runs)").fetchall()
    return {r[1] for r in rows} - set(RESERVED_COLUMNS)


def variable_names(conn: sqlite3.Connection) -> set[str]:
    """Every name DAMNIT makes a column of: values and defined variables."""
    names = {r[0] for r in conn.execute("SELECT DISTINCT name FROM run_variables")}
    names |= {r[0] for r in conn.execute("SELECT name FROM variables")}
    return names


def refresh_views(conn: sqlite3.Connection, execute: Callable[[str], object] | None = None) -> bool:
    """Recreate the views if a variable has no column yet. True if they were recreated."""
    names = variable_names(conn)
    if names <= view_columns(conn) | set(RESERVED_COLUMNS):
        return False
    for statement in views_sql(names):
        (execute or conn.execute)(statement)
    return True
