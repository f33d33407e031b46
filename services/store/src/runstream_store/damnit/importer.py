"""Importing an existing DAMNIT folder into PostgreSQL (the ImportDamnit command).

The folder's ``runs.sqlite`` (any format DAMNIT 0.4 still opens: v1-v4; read, never
changed here) gives the runs, the values with their provenance and attributes,
comments, user-editable variables, variable titles/descriptions/tags and the settings
kept in ``metameta``. The HDF5 files in ``extracted_data/`` stay where they are: the
folder becomes the proposal's context folder, so they are runstream's run files from
now on, and binary summaries are read from them as for any run.

Everything goes into PostgreSQL in one transaction. Imported values get revision 0
(any result runstream computes later wins) and a result id derived from the row, so
importing the same folder again changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runstream_common.errors import InvalidCommand
from runstream_common.messages import ImportDamnit, summary_type_of

from ..adapters.damnit_source import import_damnit
from ..adapters.postgres import Repository
from ..proposal_settings import PARSERS, parse_setting
from ..values import COMMENT, PROVENANCE_COMMENT, StoredValue
from .rows import PNG_MAGIC

log = logging.getLogger("runstream.store.damnit")

IMPORT_HASH = "damnit-import"
USER_TYPES = ("boolean", "integer", "number", "string")


@dataclass
class Folder:
    """What a DAMNIT database holds for one proposal."""

    db_id: str
    runs: list[tuple[int, float | None, float | None]] = field(default_factory=list)
    values: list[tuple[int, str, StoredValue]] = field(default_factory=list)
    variables: list[tuple[str, str, str | None, str | None, tuple[str, ...]]] = field(
        default_factory=list
    )
    settings: dict[str, Any] = field(default_factory=dict)


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def _stored(row: sqlite3.Row, has_attrs: bool, result_id: str) -> StoredValue:
    attrs: dict[str, Any] = {}
    if has_attrs and row["attributes"]:
        try:
            attrs = json.loads(row["attributes"])
        except ValueError:
            attrs = {}
    name, value, stype = row["name"], row["value"], row["summary_type"] or None
    provenance = row["provenance"]
    if name == COMMENT:
        provenance = PROVENANCE_COMMENT
    background = attrs.get("background")
    common: dict[str, Any] = {
        "provenance": provenance,
        "context_hash": IMPORT_HASH,
        "revision": 0,
        "result_id": result_id,
    }
    if value is None:
        if "error" in attrs:
            return StoredValue(
                kind="none", error=str(attrs["error"]), error_cls=attrs.get("error_cls"), **common
            )
        return StoredValue(kind="none", cleared=True, **common)
    common.update(
        summary_method=row["summary_method"] or None,
        units=attrs.get("units"),
        max_diff=row["max_diff"],
        bold=attrs.get("bold"),
        background=tuple(int(x) for x in background[:3]) if background else None,
    )
    if isinstance(value, bytes):
        if stype == "complex" and len(value) == 16:
            re_, im = struct.unpack("<dd", value)
            return StoredValue(kind="complex", value_float=re_, value_imag=im,
                               **{**common, "summary_type": "complex"})  # fmt: skip
        kind = "thumbnail" if value.startswith(PNG_MAGIC) else summary_type_of(stype) or "numpy"
        return StoredValue(kind="blob", summary_type=kind, **common)
    return StoredValue.from_summary(value, summary_type=None, **common)


def read_folder(folder: Path, proposal: int) -> Folder:
    """Read a DAMNIT database (blocking; opened read-only)."""
    path = folder / "runs.sqlite"
    if not path.is_file():
        raise InvalidCommand(f"{folder} has no runs.sqlite: not a DAMNIT folder")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        meta = dict(conn.execute("SELECT key, value FROM metameta").fetchall())
        version = int(meta.get("data_format_version") or 0)
        if version < 1:
            raise InvalidCommand(
                f"{path} is in DAMNIT's legacy format v0, which DAMNIT 0.4 refuses"
            )
        owner = meta.get("proposal")
        if owner is not None and int(owner) != proposal:
            raise InvalidCommand(f"{path} belongs to proposal {owner}, not {proposal}")
        out = Folder(db_id=str(meta.get("db_id") or ""))
        out.runs = [
            (r["run"], r["start_time"], r["added_at"])
            for r in conn.execute(
                "SELECT run, start_time, added_at FROM run_info WHERE proposal = ? ORDER BY run",
                (proposal,),
            )
        ]
        has_attrs = "attributes" in _columns(conn, "run_variables")
        for row in conn.execute(
            "SELECT * FROM run_variables WHERE proposal = ? ORDER BY run, name, version",
            (proposal,),
        ):
            rid = f"{IMPORT_HASH}:{out.db_id}:{row['run']}:{row['name']}:{row['timestamp']}"
            out.values.append((row["run"], row["name"], _stored(row, has_attrs, rid)))
        tags: dict[str, list[str]] = {}
        if "variable_tags" in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}:
            for name, tag in conn.execute(
                "SELECT vt.variable_name, t.name FROM variable_tags vt "
                "JOIN tags t ON t.id = vt.tag_id"
            ):
                tags.setdefault(name, []).append(tag)
        for r in conn.execute("SELECT name, type, title, description FROM variables"):
            vtype = r["type"] if r["type"] in USER_TYPES else None
            out.variables.append(
                (r["name"], r["title"] or r["name"], r["description"], vtype,
                 tuple(sorted(tags.get(r["name"], []))))
            )  # fmt: skip
        for key in PARSERS:
            if key in meta and meta[key] is not None:
                if key == "context_python" and not os.path.exists(str(meta[key])):
                    log.info("not importing context_python %s: not on this machine", meta[key])
                    continue
                try:
                    out.settings[key] = parse_setting(key, str(meta[key]))
                except InvalidCommand as exc:
                    log.warning("not importing setting %s: %s", key, exc)
        return out
    except sqlite3.DatabaseError as exc:
        raise InvalidCommand(f"cannot read {path}: {exc}") from exc
    finally:
        conn.close()


class Importer:
    def __init__(self, repo: Repository, files: Any) -> None:
        self.repo = repo
        self.files = files

    async def import_folder(self, command: ImportDamnit) -> dict[str, int]:
        folder = Path(command.folder)
        if not folder.is_absolute():
            raise InvalidCommand(f"{folder} is not an absolute path")
        data = await asyncio.to_thread(read_folder, folder, command.proposal)
        counts = await import_damnit(self.repo, command.proposal, str(folder), data)
        log.info("imported DAMNIT folder %s into proposal %d: %s", folder, command.proposal, counts)
        return counts
