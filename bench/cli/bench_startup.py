"""CLI start-up: wall time of ``runstream --help`` and ``runstream table P`` beside ``python -c pass``.

    uv run python bench/cli/bench_startup.py [--repeat 15] [--dsn DSN] [--json]
        [--before /path/to/other/venv/bin/runstream]

Needs the local PostgreSQL (deploy/local/stack.sh up) for ``table``: a scratch
database gets the store's schema and a small proposal (20 runs x 12 variables of
every kind, loaded as bench/store does), and is dropped afterwards. Each command
runs as a fresh process ``--repeat`` times after one warm-up (page cache, bytecode
caches written as an installed package has them: PYTHONDONTWRITEBYTECODE is unset); the
report gives the median and the best wall time and the ratio of the median to
``python -c pass`` measured in the same run, with the load average (the machine is
shared: compare ratios, not absolute figures, between runs). ``--before`` times
another installation's ``runstream`` (e.g. an older commit's venv) in the same
run, interleaved with this one, for before/after figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

DEFAULT_DSN = "postgresql://runstream:runstream@127.0.0.1:25432/runstream"
PROPOSAL = 4711
RUNSTREAM = str(Path(sys.executable).with_name("runstream"))
STORE_BENCH = str(Path(__file__).resolve().parents[1] / "store")


async def make_proposal(dsn: str, runs: int = 20, variables: int = 12) -> None:
    """The store's schema and a small proposal (the store benchmark's loader)."""
    import asyncpg
    from runstream_store.schema import upgrade

    sys.path.insert(0, STORE_BENCH)
    from bench_store import fill_table

    conn = await asyncpg.connect(dsn)
    try:
        await upgrade(conn)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        await fill_table(pool, PROPOSAL, runs, variables)
    finally:
        await pool.close()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], env: dict[str, str], repeat: int) -> dict[str, Any]:
    """Wall time, and the CPU time of the process (what wall time is on an idle machine:
    the command is single-threaded and waits little; on a loaded one it waits for a core)."""

    def once() -> tuple[float, float]:
        cpu, started = _children_cpu(), time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True, check=False)
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr.decode()[-2000:]}")
        return elapsed, _children_cpu() - cpu

    once()  # warm-up: page cache, and .pyc files written
    runs = [once() for _ in range(repeat)]
    wall = [w for w, _ in runs]
    return {
        "median_s": statistics.median(wall),
        "best_s": min(wall),
        "cpu_median_s": statistics.median(c for _, c in runs),
        "runs": repeat,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    import asyncpg

    name = f"bench_cli_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = args.dsn.rsplit("/", 1)[0] + f"/{name}"
    try:
        await make_proposal(dsn)
        # Bytecode caches as an installed package has them (the warm-up run writes them).
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("RUNSTREAM_") and k != "PYTHONDONTWRITEBYTECODE"
        }
        env.update({"RUNSTREAM_POSTGRES_DSN": dsn, "COLUMNS": "200"})
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "runstream --help": ["--help"],
            f"runstream table {PROPOSAL}": ["table", str(PROPOSAL)],
            f"runstream table {PROPOSAL} --json": ["table", str(PROPOSAL), "--json"],
            "runstream context --help": ["context", "--help"],
            "runstream reprocess --help": ["reprocess", "--help"],
        }
        figures = {}
        for label, argv in commands.items():
            if argv[0] == sys.executable:
                figures[label] = timed(argv, env, args.repeat)
                continue
            if args.before:
                figures[f"before: {label}"] = timed([args.before, *argv], env, args.repeat)
            figures[label] = timed([RUNSTREAM, *argv], env, args.repeat)
    finally:
        admin = await asyncpg.connect(args.dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    baseline = figures["python -c pass"]["median_s"]
    for fig in figures.values():
        fig["ratio_to_python"] = fig["median_s"] / baseline
    return {"load_average": os.getloadavg(), "commands": figures}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--dsn", default=os.environ.get("RUNSTREAM_POSTGRES_DSN", DEFAULT_DSN))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--before", help="another runstream executable to time alongside")
    args = parser.parse_args()
    report = asyncio.run(main(args))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        load = ", ".join(f"{x:.2f}" for x in report["load_average"])
        print(f"CLI start-up ({args.repeat} runs each after a warm-up; load average {load})")
        print(f"{'command':42} {'median':>9} {'best':>9} {'x python':>9} {'cpu':>9}")
        for label, fig in report["commands"].items():
            print(
                f"{label:42} {fig['median_s'] * 1000:7.0f}ms {fig['best_s'] * 1000:7.0f}ms "
                f"{fig['ratio_to_python']:9.1f} {fig['cpu_median_s'] * 1000:7.0f}ms"
            )
