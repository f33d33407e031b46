"""What a worker spends per run beyond the user's code: summaries and the fragment.

    uv run python bench/throughput/worker_costs.py DATA_DIR [CTXSUPPORT_DIR]

Evaluates the workload's 11 variables once on run 1 of ``DATA_DIR`` (as made by
``bench_throughput.py --data-dir``), then times, in this process, ``prepare`` of
every result (summaries, thumbnails) and the HDF5 fragment of them (median CPU of
15). ``CTXSUPPORT_DIR``: another checkout's
``services/executor/src/runstream_executor/ctxsupport``, for before/after.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CTXSUPPORT = HERE.parents[1] / "services/executor/src/runstream_executor/ctxsupport"


def main() -> None:
    data = Path(sys.argv[1])
    support = sys.argv[2] if len(sys.argv) > 2 else str(CTXSUPPORT)
    sys.path.insert(0, support)
    import floor
    import workload
    from extra_data import RunDirectory
    from rs_ctxrunner import h5write
    from rs_ctxrunner.api import Cell
    from rs_ctxrunner.prepare import prepare

    work = Path(tempfile.mkdtemp(prefix="worker-costs-"))
    context = work / "context.py"
    context.write_text(workload.ELEVEN_VARIABLES)
    variables = floor.load(context)
    run = RunDirectory(str(data / f"p{workload.PROPOSAL:06d}" / "raw" / "r0001"), parallelize=False)
    values: dict[str, Any] = {}
    for var in variables:
        kwargs = {
            p: values.get(a.split("#", 1)[1]) if a.startswith("var#") else 1
            for p, a in var.annotations().items()
        }
        try:
            values[var.name] = var.func(run, **kwargs)
        except Exception:  # the workload's one failing variable
            continue
    by_name = {v.name: v for v in variables}
    prepare_s, write_s = [], []
    for i in range(15):
        started = time.process_time()
        prepared = {
            n: prepare(by_name[n], v if isinstance(v, Cell) else Cell(v)) for n, v in values.items()
        }
        prepare_s.append(time.process_time() - started)
        started = time.process_time()
        h5write.write_file(
            str(work / f"f{i}.h5"), prepared, {"broken": ("1/0", "ZeroDivisionError")}
        )
        write_s.append(time.process_time() - started)
    size = os.path.getsize(work / "f0.h5")
    print(
        f"{support}: prepare {statistics.median(prepare_s) * 1000:.1f} ms, fragment "
        f"{statistics.median(write_s) * 1000:.1f} ms ({size / 1e6:.2f} MB) CPU per run"
    )


if __name__ == "__main__":
    main()
