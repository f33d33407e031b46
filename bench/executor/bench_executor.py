"""Executor benchmark: per-run latency of whole processing passes over mock runs.

    uv run python bench/executor/bench_executor.py [--runs 20] [--workers 2] [--parallel 2]

Two contexts are timed over the same mock runs (EXtra-data's FXE mock DA
file, 400 trains): a 10-variable context (arrays, thumbnails, trendlines,
xarray, dependencies, a Skip) and a one-trivial-variable context, whose
latency is the fixed per-run overhead (read + hash the context, select, one
worker round trip, start time, fragment written and fsynced, messages built).
Each pass is what the service does for one run message, minus Kafka: the
messages go to an in-memory publisher. Workers are warm (started and used
once before timing). Prints p50/p95 latency and runs per second.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel
from runstream_common.messages import ResultsReady, RunRequested, Trigger
from runstream_common.topics import Topics
from runstream_executor.handlers import RunProcessor
from runstream_executor.pool_set import PoolSet
from runstream_executor.settings import Settings

TEN_VARIABLES = """
from damnit_ctx import Variable, Cell, Skip
import numpy as np
import xarray as xr

XGM = "SA1_XTD2_XGM/DOOCS/MAIN"

@Variable(title="Trains")
def n_trains(run):
    return len(run.train_ids)

@Variable(title="XGM mean", summary="mean", units="uJ")
def xgm(run):
    return run[XGM + ":output", "data.intensityTD"].ndarray()[:, 0]

@Variable(title="XGM trend")
def xgm_trend(run):
    return run[XGM + ":output", "data.intensityTD"].ndarray()[:, :4].ravel()

@Variable(title="XGM xarray", summary="max")
def xgm_da(run):
    return run[XGM + ":output", "data.intensityTD"].xarray()[:, 0]

@Variable(title="Camera frame")
def camera(run):
    return run["FXE_XAD_GEC/CAM/CAMERA:daqOutput", "data.image.pixels"][0].ndarray()[0]

@Variable(title="Beam x", summary="mean")
def beam_x(run):
    return run[XGM, "beamPosition.ixPos"].ndarray()

@Variable(title="Run label")
def label(run, number: "meta#run_number", proposal: "meta#proposal"):
    return f"p{proposal} r{number}"

@Variable(title="Energy per train")
def per_train(run, e: "var#xgm", n: "var#n_trains"):
    return Cell(float(np.sum(e)) / n, bold=True)

@Variable(title="Random image")
def noise(run, n: "var#n_trains"):
    return np.random.default_rng(int(n)).random((128, 128))

@Variable(title="Detector")
def detector(run):
    raise Skip("no detector in this run")
"""

ONE_TRIVIAL = """
from damnit_ctx import Variable

@Variable(title="One")
def one(run):
    return 1
"""


class NullPublisher:
    def __init__(self) -> None:
        self.results: list[ResultsReady] = []

    async def publish(self, topic: str, message: BaseModel, key: bytes) -> None:
        if isinstance(message, ResultsReady):
            self.results.append(message)


def make_runs(root: Path, runs: int) -> Path:
    from extra_data.tests.make_examples import make_fxe_da_file

    prop = root / "p001234"
    first = prop / "raw" / "r0001" / "RAW-R0001-DA01-S00000.h5"
    first.parent.mkdir(parents=True)
    make_fxe_da_file(str(first))
    for run in range(2, runs + 1):
        dest = prop / "raw" / f"r{run:04d}" / f"RAW-R{run:04d}-DA01-S00000.h5"
        dest.parent.mkdir(parents=True)
        shutil.copyfile(first, dest)
    return prop


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def time_context(
    name: str, code: str, root: Path, prop: Path, runs: int, settings: Settings
) -> dict[str, float]:
    ctx_dir = root / name
    ctx_dir.mkdir()
    (ctx_dir / "context.py").write_text(code)
    pools = PoolSet(settings)
    publisher = NullPublisher()
    processor = RunProcessor(settings, pools, publisher, Topics("bench"))

    def request(run: int, i: int) -> RunRequested:
        return RunRequested(
            request_id=f"{name}-{run}-{i}",
            proposal=1234,
            run=run,
            trigger=Trigger.RAW,
            context_dir=str(ctx_dir),
            proposal_dir=str(prop),
        )

    try:
        t0 = time.perf_counter()
        await pools.get()
        startup = time.perf_counter() - t0
        for run in range(1, runs + 1):  # warm-up: every run opened once per worker
            await processor.process(request(run, 0))
        latencies = []
        t_all = time.perf_counter()
        for run in range(1, runs + 1):
            t = time.perf_counter()
            await processor.process(request(run, 1))
            latencies.append(time.perf_counter() - t)
        total = time.perf_counter() - t_all
    finally:
        await pools.close()
    last = publisher.results[-1]
    errors = [r.name for r in last.results if r.error and r.error_cls != "Skip"]
    if errors:
        print(f"warning: {name}: variables failed: {errors}", file=sys.stderr)
    return {
        "variables": len(last.results),
        "startup_s": startup,
        "p50_ms": statistics.median(latencies) * 1000,
        "p95_ms": pct(latencies, 0.95) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "runs_per_s": runs / total,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument(
        "--no-fork", action="store_true", help="one interpreter per worker instead of a zygote"
    )
    parser.add_argument(
        "--only-overhead", action="store_true", help="time the trivial context only"
    )
    args = parser.parse_args()
    settings = Settings(
        workers=args.workers, parallel_variables=args.parallel, fork_workers=not args.no_fork
    )
    with tempfile.TemporaryDirectory(prefix="rs-bench-") as tmp:
        root = Path(tmp)
        prop = make_runs(root, args.runs)
        rows = {}
        if not args.only_overhead:
            rows["10 variables"] = await time_context(
                "ten", TEN_VARIABLES, root, prop, args.runs, settings
            )
        rows["1 trivial variable (fixed overhead)"] = await time_context(
            "one", ONE_TRIVIAL, root, prop, args.runs, settings
        )
    print(
        f"executor benchmark: {args.runs} mock runs, {args.workers} warm workers, "
        f"{args.parallel} variables in parallel per run"
    )
    print(
        f"{'context':<38}{'vars':>5}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}{'runs/s':>8}{'start s':>9}"
    )
    for label, r in rows.items():
        print(
            f"{label:<38}{int(r['variables']):>5}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}"
            f"{r['mean_ms']:>9.1f}{r['runs_per_s']:>8.1f}{r['startup_s']:>9.1f}"
        )
    overhead = rows["1 trivial variable (fixed overhead)"]["p50_ms"]
    verdict = "meets" if overhead < 50 else "MISSES"
    print(f"fixed per-run overhead p50 {overhead:.1f} ms: {verdict} the 50 ms target")


if __name__ == "__main__":
    asyncio.run(main())
