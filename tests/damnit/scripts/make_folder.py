"""Run in DAMNIT's venv: a DAMNIT folder made by DAMNIT 0.4 itself.

    python make_folder.py FOLDER PROPOSAL CONTEXT_FILE RUN...

``initialize_proposal`` (as ``damnit init``), then ``damnit reprocess --direct`` on the
runs (XFEL_DATA_ROOT / EXTRA_DATA_DATA_ROOT must point at the mock data), then
``damnit combiner now`` to merge the fragments, then a comment, a user variable and a
value edited through DamnitDB as the GUI does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from damnit.backend.db import DamnitDB, ReducedData, initialize_proposal
from damnit.backend.user_variables import UserEditableVariable


def damnit(*args: str, cwd: Path) -> None:
    env = {**os.environ, "AMORE_BROKER": "none"}
    done = subprocess.run(
        [sys.executable, "-m", "damnit.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"damnit {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def main() -> None:
    folder, proposal, context = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    runs = [int(r) for r in sys.argv[4:]]
    initialize_proposal(folder, proposal, context_file_src=context)
    with DamnitDB.from_dir(folder) as db:
        db.metameta["context_python"] = sys.executable  # this venv runs the context file
        db.metameta["concurrent_jobs"] = 7
    damnit("reprocess", "--direct", *map(str, runs), cwd=folder)
    damnit("combiner", "now", str(folder), cwd=folder)
    with DamnitDB.from_dir(folder) as db:
        db.add_user_variable(UserEditableVariable("sample", title="Sample", variable_type="string"))
        db.set_variable(
            proposal, runs[0], "sample", ReducedData("Au foil"), provenance="manual-input"
        )
        db.change_run_comment(proposal, runs[0], "first light")
        db_id = db.metameta["db_id"]
    print(json.dumps({"db_id": db_id, "runs": runs}))


if __name__ == "__main__":
    main()
