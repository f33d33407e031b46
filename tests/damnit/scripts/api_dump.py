"""Run in DAMNIT's venv: everything DAMNIT's Python API says about a folder, as JSON.

python api_dump.py FOLDER
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from damnit import Damnit
from describe import cell, describe


def main() -> None:
    db = Damnit(sys.argv[1])
    table = db.table()
    out = {
        "proposal": int(db.proposal),
        "runs": sorted(int(r) for r in db.runs()),
        "columns": list(table.columns),
        "table": {
            str(int(row["run"])): {str(k): cell(v) for k, v in row.items()}
            for _, row in table.iterrows()
        },
        "titles": {},
        "values": {},
    }
    titled = db.table(with_titles=True)
    out["titles"] = list(titled.columns)
    for run in out["runs"]:
        rv = db[run]
        per: dict[str, object] = {}
        for name in rv.keys():  # noqa: SIM118 (RunVariables has no __iter__)
            vd = rv[name]
            entry: dict[str, object] = {"title": vd.title, "units": vd.units}
            for what, call in (
                ("read", vd.read),
                ("summary", vd.summary),
                ("preview", vd.preview_data),
            ):
                try:
                    entry[what] = describe(call())
                except Exception as exc:  # recorded, the test decides
                    entry[what] = {"error": f"{type(exc).__name__}: {exc}"}
            per[name] = entry
        for name in table.columns:  # columns without data for this run (errors, None)
            if name not in per and name not in ("proposal", "run", "start_time", "comment"):
                try:
                    db[run, name]
                    per[name] = {"indexable": True}
                except Exception as exc:
                    per[name] = {"indexable": type(exc).__name__}
        out["values"][str(run)] = per
    print(json.dumps(out))


if __name__ == "__main__":
    main()
