"""DAMNIT projection benchmark: writing runs.sqlite from PostgreSQL snapshots.

    uv run python bench/store/bench_damnit.py [--runs 2000] [--variables 30]

No services needed (the SQLite side of the projection only). Three figures, each the
median of ``--repeat`` rounds in a fresh folder:

1. rebuild: ``--runs`` x ``--variables`` scalar values written by ``write_batch`` in
   chunks of 500 runs (one transaction each), as after a deleted file or an import;
2. live: one run per transaction (what a burst of results costs when every result is
   projected on its own; the store coalesces when it falls behind);
3. baseline: the same rows inserted with one ``executemany`` into a bare table, in one
   transaction: the floor for any SQLite writer on this disk.

Ratios are against the baseline measured in the same run; the load average is printed
with the figures.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from runstream_store.damnit import sqlite_file
from runstream_store.damnit.rows import MetaSnapshot, ProjectedValue, RunSnapshot, VariableSnapshot
from runstream_store.values import StoredValue

P = 4321


def snapshots(runs: int, variables: int, seq0: int = 1) -> list[RunSnapshot]:
    now = time.time()
    out = []
    for run in range(1, runs + 1):
        values = tuple(
            ProjectedValue(
                f"v{i:03d}",
                StoredValue.from_summary(run * 1.5 + i, units="mJ", provenance="context.py"),
                now,
            )
            for i in range(variables)
        )
        out.append(RunSnapshot(P, run, now, now, seq0 + run, values))
    return out


def meta(variables: int) -> MetaSnapshot:
    return MetaSnapshot(
        seq=1,
        variables=tuple(
            VariableSnapshot(f"v{i:03d}", f"Var {i}", None, None, ("bench",))
            for i in range(variables)
        ),
    )


def rebuild(folder: Path, snaps: list[RunSnapshot], variables: int) -> float:
    path = folder / "runs.sqlite"
    db_id = sqlite_file.new_db_id()
    started = time.perf_counter()
    for i in range(0, len(snaps), 500):
        batch = sqlite_file.Batch(
            P, db_id, snaps[i : i + 500], meta=meta(variables) if i == 0 else None
        )
        sqlite_file.write_batch(path, batch)
    return time.perf_counter() - started


def live(folder: Path, snaps: list[RunSnapshot], variables: int) -> float:
    path = folder / "runs.sqlite"
    db_id = sqlite_file.new_db_id()
    sqlite_file.write_batch(path, sqlite_file.Batch(P, db_id, [], meta=meta(variables)))
    started = time.perf_counter()
    for snap in snaps:
        sqlite_file.write_batch(path, sqlite_file.Batch(P, db_id, [snap]))
    return time.perf_counter() - started


def baseline(folder: Path, snaps: list[RunSnapshot]) -> float:
    conn = sqlite3.connect(folder / "plain.sqlite", isolation_level=None)
    conn.execute("CREATE TABLE t(proposal, run, name, value, timestamp)")
    rows = [
        (s.proposal, s.run, v.name, v.value.value_float, v.updated_at)
        for s in snaps
        for v in s.values
    ]
    started = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--variables", type=int, default=30)
    parser.add_argument("--live-runs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    snaps = snapshots(args.runs, args.variables)
    results: dict[str, list[float]] = {"rebuild": [], "live": [], "baseline": []}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "a").mkdir()
            (folder / "b").mkdir()
            (folder / "c").mkdir()
            results["rebuild"].append(rebuild(folder / "a", snaps, args.variables))
            results["live"].append(live(folder / "b", snaps[: args.live_runs], args.variables))
            results["baseline"].append(baseline(folder / "c", snaps))
    values = args.runs * args.variables
    base = statistics.median(results["baseline"])
    full = statistics.median(results["rebuild"])
    one = statistics.median(results["live"]) / args.live_runs
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    print(f"rebuild  {args.runs} runs x {args.variables} variables: {full:.2f} s "
          f"({values / full:,.0f} values/s, {args.runs / full:,.0f} runs/s); "
          f"{full / base:.1f}x the bare-insert baseline ({base:.3f} s)")  # fmt: skip
    print(f"live     one run ({args.variables} values) per transaction: {one * 1000:.1f} ms "
          f"({1 / one:,.0f} runs/s)")  # fmt: skip


if __name__ == "__main__":
    main()
