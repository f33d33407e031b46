"""Run in DAMNIT's venv: the schema of a runs.sqlite as DAMNIT sees it, as JSON.

python schema_dump.py PATH            open PATH with DamnitDB (as the GUI and API do)
python schema_dump.py PATH --create   make a new database with DAMNIT's own code first
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

from damnit.backend.db import DamnitDB


def describe(path: Path) -> dict[str, object]:
    conn = sqlite3.connect(path)
    out: dict[str, object] = {"tables": {}, "indexes": {}, "triggers": [], "views": {}}
    for kind, name, table in conn.execute("SELECT type, name, tbl_name FROM sqlite_master"):
        if name.startswith("sqlite_") or name.startswith("runstream_"):
            continue
        if kind == "table":
            out["tables"][name] = {
                "columns": [list(r[1:]) for r in conn.execute(f"PRAGMA table_info({name})")],
                "foreign_keys": sorted(
                    list(r[2:]) for r in conn.execute(f"PRAGMA foreign_key_list({name})")
                ),
            }
        elif kind == "index":
            cols = [r[2] for r in conn.execute(f"PRAGMA index_info({name})")]
            unique = [r[2] for r in conn.execute(f"PRAGMA index_list({table})") if r[1] == name]
            out["indexes"][name] = [table, cols, unique]
        elif kind == "trigger":
            out["triggers"].append([name, table])
        elif kind == "view":
            out["views"][name] = [r[1] for r in conn.execute(f"PRAGMA table_info({name})")]
    out["metameta"] = dict(conn.execute("SELECT key, value FROM metameta"))
    conn.close()
    return out


def main() -> None:
    path = Path(sys.argv[1])
    before = None
    if "--create" in sys.argv:
        DamnitDB(path, create=True).close()
    else:
        before = describe(path)
    db = DamnitDB(path)  # opens (and would migrate) exactly as the GUI and API do
    db_id = db.metameta["db_id"]
    db.close()
    print(json.dumps({"before": before, "after": describe(path), "db_id": db_id}))


if __name__ == "__main__":
    main()
