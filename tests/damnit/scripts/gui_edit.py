"""Run in DAMNIT's venv: edit a folder the way DAMNIT's GUI does, with DAMNIT's own code.

    python gui_edit.py FOLDER JSON

JSON is a list of steps: {"define": [name, title, type]}, {"set": [run, name, text]}
(the text is parsed by DAMNIT's value types, as the table does), {"raw": [run, name,
value]} (stored as given, unparsed), {"comment": [run, text]} or {"quiet_comment": [run,
text]} (written, never announced: DAMNIT offline). Every other change is written with
DamnitDB and announced with the GUI's UpdateAgent, as MainWindow.save_value and
MainWindow.add_variable do.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from damnit.backend.db import DamnitDB, ReducedData
from damnit.backend.user_variables import UserEditableVariable, value_types_by_name
from damnit.gui.kafka import UpdateAgent


def main() -> None:
    folder, steps = Path(sys.argv[1]), json.loads(sys.argv[2])
    db = DamnitDB.from_dir(folder)
    proposal = int(db.metameta["proposal"])
    agent = UpdateAgent(db.metameta["db_id"])
    types = {v.name: v.variable_type for v in db.get_user_variables().values()}
    for step in steps:
        if "define" in step:
            name, title, vtype = step["define"]
            db.add_user_variable(UserEditableVariable(name, title=title, variable_type=vtype))
            types[name] = vtype
            agent.variable_set(name, title, "", vtype)
        elif "set" in step:
            run, name, text = step["set"]
            value = value_types_by_name[types[name]].parse(text) if text != "" else None
            db.set_variable(proposal, run, name, ReducedData(value), provenance="manual-input")
            agent.run_values_updated(proposal, run, name)
        elif "raw" in step:
            run, name, value = step["raw"]
            db.set_variable(proposal, run, name, ReducedData(value), provenance="manual-input")
            agent.run_values_updated(proposal, run, name)
        elif "quiet_comment" in step:
            run, text = step["quiet_comment"]
            db.set_variable(proposal, run, "comment", ReducedData(text), provenance="manual-input")
        elif "comment" in step:
            run, text = step["comment"]
            db.set_variable(proposal, run, "comment", ReducedData(text), provenance="manual-input")
            agent.run_values_updated(proposal, run, "comment")
    agent.stop()  # flushes the producer
    db.close()
    print(json.dumps({"done": len(steps)}))


if __name__ == "__main__":
    main()
