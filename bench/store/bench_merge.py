"""A new run's merge: the fragment's bytes adopted as the run file vs each object copied.

    uv run python bench/store/bench_merge.py [--data-dir DIR] [--merges 30] [--rounds 3]

Builds the throughput workload's fragment as the executor writes it (the 11 variables
evaluated on run 1 of the mock data, summaries prepared, scalars inline, arrays and
thumbnails in the fragment, start time, the failing variable as an error; mock data is
made in a scratch folder unless ``--data-dir`` already holds ``bench/throughput``'s runs),
then merges it into new run files with the store's ``hdf5_merge.merge``, as the store
would for the ``results_ready`` the executor sends, alternating in rounds:

- copy: each object copied out of the fragment (the store's path before adopting, and
  still its path for existing run files; forced here by a ``compress_min_bytes`` no array
  reaches, which compresses nothing, exactly as 0 does);
- adopt: the store's default (``compress_min_bytes`` 0) for a new run: a byte copy of
  the fragment checked, pruned and completed;
- refused: the same data in a fragment without persistent free-space tracking (as
  executors before it wrote them): the byte copy is refused after the check, and the
  objects are copied (what a refused fragment costs, e.g. one holding NetCDF groups).

Prints the median CPU and wall time per merge (fsyncs included) of each path and the
ratios to the copy path measured in the same run, with the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "throughput"))

import floor  # noqa: E402
import workload  # noqa: E402

NEVER = 2**62  # a compress_min_bytes no array reaches: the copy path, nothing compressed


def _run_dir(data_dir: Path | None, scratch: Path) -> Path:
    """Run 1 of the workload's mock data (made in ``scratch`` if ``data_dir`` has none)."""
    if data_dir is not None:
        run = data_dir / f"p{workload.PROPOSAL:06d}" / "raw" / "r0001"
        if run.is_dir():
            return run
    (scratch / "data").mkdir()
    prop: Path = workload.make_runs(scratch / "data", 1)
    return prop / "raw" / "r0001"


def _evaluate(run_dir: Path, work: Path) -> dict[str, Any]:
    """name -> the worker's prepared result, or an (error, class) tuple."""
    from extra_data import RunDirectory
    from rs_ctxrunner.api import Cell
    from rs_ctxrunner.prepare import prepare

    context = work / "context.py"
    context.write_text(workload.ELEVEN_VARIABLES)
    variables = floor.load(context)
    run = RunDirectory(str(run_dir), parallelize=False)
    meta = {"run_number": 1, "proposal": workload.PROPOSAL}
    values: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for var in variables:
        kwargs = {
            param: values[ann.split("#", 1)[1]] if ann.startswith("var#") else meta[ann[5:]]
            for param, ann in var.annotations().items()
        }
        try:
            values[var.name] = var.func(run, **kwargs)
        except Exception as exc:  # the workload's one failing variable
            out[var.name] = (str(exc), type(exc).__name__)
            continue
        value = values[var.name]
        out[var.name] = prepare(var, value if isinstance(value, Cell) else Cell(value))
    return out


def _fragment_and_items(prepared: dict[str, Any], work: Path) -> tuple[Path, tuple[Any, ...]]:
    """The fragment the executor writes and the store's merge items for its message."""
    from rs_ctxrunner import h5write
    from runstream_executor.outcome import Outcome
    from runstream_executor.results import variable_result
    from runstream_store.handlers import merge_item

    stored = {
        n: p
        for n, p in prepared.items()
        if isinstance(p, dict) and h5write.needs_fragment(p, 16384)
    }
    fragment = work / "extracted_data" / "fragments" / "p1234_r1.bench.h5"
    fragment.parent.mkdir(parents=True)
    h5write.write_atomically(str(fragment), stored, {}, start_time=1_700_000_000.0)
    results = []
    for name, p in prepared.items():
        if isinstance(p, tuple):
            outcome = Outcome(name, "error", p[0], p[1])
        else:
            outcome = Outcome(name, "ok", prepared=p)
        results.append(variable_result(outcome, in_fragment=name in stored))
    return fragment, tuple(merge_item(r) for r in results)


def _old_fragment(fragment: Path) -> Path:
    """The same objects in a file with HDF5's default free-space settings."""
    import h5py

    old = fragment.with_name("old-" + fragment.name)
    with h5py.File(fragment, "r") as src, h5py.File(old, "w") as dst:
        for name in src:
            src.copy(src[name], dst, name)
        dst.attrs.update(src.attrs)
    return old


def _time_merges(
    fragment: Path, items: tuple[Any, ...], folder: Path, compress: int, count: int
) -> tuple[list[float], list[float], bool]:
    from runstream_store.adapters.hdf5_merge import MergeRequest, merge

    cpu, wall, adopted = [], [], set()
    for i in range(count):
        target = folder / f"p1234_r{i}.h5"
        request = MergeRequest(
            target=target, fragment=fragment, items=items, provenance="context.py",
            start_time=1_700_000_000.0, compress_min_bytes=compress,
        )  # fmt: skip
        c, w = time.process_time(), time.perf_counter()
        outcome = merge(request)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
        adopted.add(outcome.adopted)
        target.unlink()
    if len(adopted) != 1:
        raise SystemExit("some merges were adopted and others not")
    return cpu, wall, adopted.pop()


def _report(round_: int, figures: dict[str, tuple[float, float]]) -> None:
    (cc, cw), (ac, aw), (rc, rw) = figures["copy"], figures["adopt"], figures["refused"]
    print(
        f"round {round_}: CPU / wall ms per merge: copy {cc:.2f} / {cw:.2f}, adopt "
        f"{ac:.2f} / {aw:.2f}, refused {rc:.2f} / {rw:.2f}; copy/adopt {cc / ac:.2f}x CPU, "
        f"{cw / aw:.2f}x wall; refused/copy {rc / cc:.2f}x CPU, {rw / cw:.2f}x wall"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, help="bench/throughput's --data-dir, if any")
    parser.add_argument("--merges", type=int, default=30, help="merges per path and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(floor.CTXSUPPORT))
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        scratch = Path(tmp)
        prepared = _evaluate(_run_dir(args.data_dir, scratch), scratch)
        fragment, items = _fragment_and_items(prepared, scratch)
        kinds = sorted({i.action for i in items})
        print(
            f"fragment {fragment.stat().st_size / 1e6:.2f} MB, {len(items)} results "
            f"({', '.join(f'{sum(i.action == k for i in items)} {k}' for k in kinds)}); "
            f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
        folder = scratch / "extracted_data"
        old = _old_fragment(fragment)
        paths = (("copy", fragment, NEVER), ("adopt", fragment, 0), ("refused", old, 0))
        for r in range(args.rounds):
            figures = {}
            for label, source, compress in paths:
                cpu, wall, adopted = _time_merges(source, items, folder, compress, args.merges)
                if adopted != (label == "adopt"):
                    raise SystemExit(f"the {label} path was not taken")
                figures[label] = (statistics.median(cpu) * 1e3, statistics.median(wall) * 1e3)
            _report(r + 1, figures)
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
