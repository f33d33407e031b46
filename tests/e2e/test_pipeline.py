"""Facility events for many runs in; the right table, HDF5 files and GUI feed out."""

from __future__ import annotations

import os

import h5py
import pytest

from .conftest import ALL_NAMES, E2E, RAW_NAMES
from .helpers import Gui, dead_letters, scalar, wait_until

pytestmark = pytest.mark.e2e

N_TRAINS = 400  # EXtra-data's mock FXE file
RUNS = int(os.environ.get("RUNSTREAM_E2E_RUNS", "50"))


def check_values(values: dict, runs: range, names: tuple[str, ...]) -> None:
    for run in runs:
        assert scalar(values[(run, "n_trains")]) == N_TRAINS
        assert scalar(values[(run, "doubled")]) == 2 * N_TRAINS + run
        assert scalar(values[(run, "label")]) == f"run {run}"
        assert values[(run, "image")]["summary_type"] == "thumbnail"
        assert isinstance(scalar(values[(run, "beam_x")]), float)
        assert values[(run, "broken")]["error"] == "always fails"
        assert values[(run, "broken")]["error_cls"] == "ValueError"
        assert scalar(values[(run, "heavy")]) == 10 * (2 * N_TRAINS + run)
        if "proc_sum" in names:
            assert scalar(values[(run, "proc_sum")]) == 2 * N_TRAINS + run + 1


@pytest.mark.timeout(900)
async def test_fifty_runs_in_the_table_files_and_feed_out(e2e: E2E) -> None:
    runs = range(1, RUNS + 1)
    e2e.make_runs(runs)
    gui = Gui(e2e.kafka)
    await gui.start()
    await e2e.system.start()
    try:
        e2e.send_events(runs, twice=True)  # the facility repeats itself; nothing is done twice

        async def raw_done() -> list[str]:
            values = await e2e.values()
            return [f"{r}:{n}" for r in runs for n in RAW_NAMES if (r, n) not in values]

        await wait_until(raw_done, timeout=400, what="raw values of 50 runs", logs=e2e.system.logs)
        e2e.send_events(runs, event="run_corrections_complete")

        async def proc_done() -> list[str]:
            values = await e2e.values()
            return [f"{r}" for r in runs if (r, "proc_sum") not in values]

        await wait_until(
            proc_done, timeout=300, what="proc values of 50 runs", logs=e2e.system.logs
        )

        values = await e2e.values()
        check_values(values, runs, ALL_NAMES)
        # Every value was written once: the repeated events made no second pass.
        history = await e2e.history_counts()
        assert {history[(r, n)] for r in runs for n in ALL_NAMES} == {1}

        # The per-run HDF5 files in DAMNIT's layout.
        for run in runs:
            path = e2e.context_dir / "extracted_data" / f"p4242_r{run}.h5"
            with h5py.File(path, "r") as f:
                assert f[".reduced/doubled"][()] == 2 * N_TRAINS + run
                assert f["image/data"].shape == (64, 48)
                assert f[".reduced/image"].dtype == "uint8"  # PNG thumbnail
                assert f[".errors/broken"][()].decode() == "always fails"
                assert f[".errors/broken"].attrs["type"] == "ValueError"
                assert f[".reduced/proc_sum"][()] == 2 * N_TRAINS + run + 1
        leftovers = list((e2e.context_dir / "extracted_data" / "fragments").glob("*.h5"))
        assert leftovers == []

        # A GUI that only follows the feed has every value, equal to the database.
        async def gui_done() -> list[str]:
            return [f"{r}:{n}" for r in runs for n in ALL_NAMES if (r, n) not in gui.latest]

        await wait_until(gui_done, timeout=60, what="the GUI feed")
        for (run, name), row in values.items():
            if name not in ALL_NAMES:
                continue
            view = gui.latest[(run, name)]
            assert view.error == row["error"]
            if row["kind"] in ("int", "bigint", "float", "str"):
                assert view.summary == scalar(row), (run, name)
            assert view.summary_type == row["summary_type"]
        assert await dead_letters(e2e.kafka) == {t: 0 for t in await dead_letters(e2e.kafka)}
    finally:
        await gui.stop()
