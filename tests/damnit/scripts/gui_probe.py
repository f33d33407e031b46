"""Run in DAMNIT's venv under an X server: DAMNIT's own Qt GUI on a folder.

    python gui_probe.py FOLDER NEW_RUN SCREENSHOT.png

Opens MainWindow on FOLDER (as ``damnit gui FOLDER`` does; the context-file watcher is
off so no child process runs), prints one JSON line ``{"ready": ...}`` with what its
table model holds once its Kafka listener has its partitions, then waits until run
NEW_RUN appears in the model (from DAMNIT's messages alone, no restart), saves a
screenshot and prints the final JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from damnit.gui.main_window import MainWindow
from PyQt6 import QtCore, QtWidgets

TIMEOUT_S = 240


def model_state(window: MainWindow) -> dict[str, object]:
    model = window.table
    runs: dict[str, dict[str, object]] = {}
    for row in range(model.rowCount()):
        _, run = model.row_to_proposal_run(row)
        if run is None:
            continue
        cells: dict[str, object] = {}
        for col, name in enumerate(model.column_ids):
            if name == "Status":
                continue
            value = model.get_value_at_rc(row, col)
            item = model.item(row, col)
            if (
                value is None
                and item is not None
                and item.data(QtCore.Qt.ItemDataRole.DecorationRole) is not None
            ):
                value = "<decoration>"
            if isinstance(value, (bytes, bytearray)):
                value = "<bytes>"
            elif not isinstance(value, (int, float, str, bool, type(None))):
                value = repr(value)
            cells[name] = value
        runs[str(int(run))] = cells
    return {"columns": list(model.column_ids), "titles": list(model.column_titles), "runs": runs}


def main() -> None:
    folder, new_run, shot = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    app = QtWidgets.QApplication(sys.argv)
    window = MainWindow(folder, background_activity=False)
    window.resize(1400, 700)
    window.show()
    started = time.monotonic()
    state = {"ready": False}

    def tick() -> None:
        agent = window.update_agent
        if not state["ready"]:
            consumer = getattr(agent, "kafka_cns", None)
            if consumer is not None and consumer.assignment():
                state["ready"] = True
                print(json.dumps({"ready": model_state(window)}), flush=True)
            elif time.monotonic() - started > 60:
                print(
                    json.dumps({"error": "the GUI's Kafka listener got no partitions"}), flush=True
                )
                app.exit(2)
            return
        snapshot = model_state(window)
        row = snapshot["runs"].get(str(new_run), {})
        if row.get("n_trains") is not None:
            window.grab().save(str(shot))
            print(json.dumps({"final": snapshot, "screenshot": str(shot)}), flush=True)
            app.exit(0)
        elif time.monotonic() - started > TIMEOUT_S:
            window.grab().save(str(shot))
            print(json.dumps({"error": "run did not appear", "final": snapshot}), flush=True)
            app.exit(3)

    timer = QtCore.QTimer()
    timer.timeout.connect(tick)
    timer.start(250)
    code = app.exec()
    window.stop_update_listener_thread()
    sys.exit(code)


if __name__ == "__main__":
    main()
