"""Kill -9 every service in turn, and restart Kafka and PostgreSQL, in the middle of a burst.

Afterwards every run has all its values exactly once (one history entry per
run and variable), the HDF5 files are whole, and no dead-letter topic holds a
record (nothing was given up on).
"""

from __future__ import annotations

import asyncio

import h5py
import pytest

from .conftest import ALL_NAMES, E2E, RAW_NAMES
from .helpers import dead_letters, wait_until
from .test_pipeline import check_values

# Stops and restarts the shared Kafka and PostgreSQL: alone, after the parallel tests.
pytestmark = [pytest.mark.e2e, pytest.mark.serial]


@pytest.mark.timeout(900)
async def test_kill_every_service_and_restart_kafka_and_postgres_mid_burst(e2e: E2E) -> None:
    first, second = range(1, 16), range(16, 31)
    runs = range(1, 31)
    e2e.make_runs(runs)
    await e2e.system.start()

    async def stored_runs() -> int:
        values = await e2e.values()
        return len({run for (run, name) in values if name == "doubled"})

    async def at_least(n: int) -> bool:
        return await stored_runs() >= n

    e2e.send_events(first)
    await wait_until(
        lambda: at_least(2), timeout=180, what="the first values", logs=e2e.system.logs
    )
    e2e.system.kill("executor")  # mid-run: its current run message is not committed
    await e2e.system.restart("executor")
    await wait_until(lambda: at_least(5), timeout=180, what="values after the executor restart")
    e2e.system.kill("store")
    await e2e.system.restart("store")
    e2e.send_events(second)
    await asyncio.sleep(0.3)
    e2e.system.kill("ingest")  # mid-burst of facility events
    await e2e.system.restart("ingest")
    e2e.system.kill("slurm-gateway")  # cluster jobs in flight
    await e2e.system.restart("slurm-gateway")

    e2e.stack("postgres.sh", "stop")
    await asyncio.sleep(2)
    e2e.stack("postgres.sh", "start")
    e2e.stack("kafka.sh", "stop")
    await asyncio.sleep(2)
    e2e.stack("kafka.sh", "start")

    async def raw_missing() -> list[str]:
        values = await e2e.values()
        return [f"{r}:{n}" for r in runs for n in RAW_NAMES if (r, n) not in values]

    await wait_until(
        raw_missing, timeout=420, what="raw values after the failures", logs=e2e.system.logs
    )
    e2e.send_events(runs, event="run_corrections_complete")

    async def proc_missing() -> list[str]:
        values = await e2e.values()
        return [str(r) for r in runs if (r, "proc_sum") not in values]

    await wait_until(
        proc_missing, timeout=300, what="proc values after the failures", logs=e2e.system.logs
    )

    values = await e2e.values()
    check_values(values, runs, ALL_NAMES)
    history = await e2e.history_counts()
    duplicated = {key: n for key, n in history.items() if key[1] in ALL_NAMES and n != 1}
    assert duplicated == {}, f"values written more than once: {duplicated}"
    for run in runs:
        with h5py.File(e2e.context_dir / "extracted_data" / f"p4242_r{run}.h5", "r") as f:
            assert f[".reduced/doubled"][()] == 2 * 400 + run
    dead = await dead_letters(e2e.kafka)
    assert all(n == 0 for n in dead.values()), dead
    # Every service was restarted once and is still running.
    for key in ("executor", "store", "ingest", "slurm-gateway"):
        assert e2e.system.procs[key].alive, e2e.system.logs()
        assert e2e.system.procs[key].starts == 2
