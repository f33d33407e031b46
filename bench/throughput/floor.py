"""The pure computation floor: the context's variables called in a bare loop.

    python floor.py CONTEXT_FILE PROPOSAL_DIR RUN [RUN ...]

No service, no worker protocol, no summaries, no files written, no messages:
for each run it opens the run with EXtra-data (as any evaluation must) and
calls every variable function in dependency order, passing dependencies'
return values. It imports everything and evaluates its first run once
(untimed warm-up, as the services get), prints ``ready`` and waits for a
line on stdin, so several copies can start their loops together; then it prints
one JSON line: ``{"runs": {run: seconds}, "cpu": {run: CPU seconds}, "failed": [...],
"variables": {name: CPU seconds over all runs}}`` (``failed``: the variables that failed
in the last run).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

CTXSUPPORT = (
    Path(__file__).resolve().parents[2] / "services/executor/src/runstream_executor/ctxsupport"
)


def load(path: Path) -> list[Any]:
    """The context's variables, in an order where dependencies come first."""
    sys.path.insert(0, str(CTXSUPPORT))
    namespace: dict[str, Any] = {"__file__": str(path)}
    exec(compile(path.read_text(), str(path), "exec", dont_inherit=True), namespace)
    found = {
        v.name: v
        for v in namespace.values()
        if getattr(v, "func", None) is not None and isinstance(getattr(v, "name", None), str)
    }
    ordered: list[Any] = []
    while len(ordered) < len(found):
        for var in found.values():
            deps = {a.split("#", 1)[1] for a in var.annotations().values() if a.startswith("var#")}
            if var not in ordered and deps <= {v.name for v in ordered}:
                ordered.append(var)
    return ordered


def evaluate(
    variables: list[Any],
    run: Any,
    number: int,
    proposal: int,
    spent: dict[str, float] | None = None,
) -> list[str]:
    """Every variable in order; ``spent`` (if given) accumulates each one's CPU seconds."""
    values: dict[str, Any] = {}
    failed = []
    for var in variables:
        kwargs: dict[str, Any] = {}
        for param, ann in var.annotations().items():
            kind, _, field = ann.partition("#")
            if kind == "var":
                kwargs[param] = values[field]
            elif field == "run_number":
                kwargs[param] = number
            elif field == "proposal":
                kwargs[param] = proposal
        started = time.process_time()
        try:
            value = var.func(run, **kwargs)
        except Exception as exc:
            failed.append(f"{var.name} ({type(exc).__name__}: {exc})")
            continue
        finally:
            if spent is not None:
                spent[var.name] = spent.get(var.name, 0.0) + time.process_time() - started
        values[var.name] = value.data if type(value).__name__ == "Cell" else value
    return failed


def main() -> None:
    context, prop, *runs = sys.argv[1:]
    from extra_data import RunDirectory

    variables = load(Path(context))
    proposal = int(Path(prop).name.lstrip("p"))

    def open_run(number: int) -> Any:
        return RunDirectory(str(Path(prop) / "raw" / f"r{number:04d}"), parallelize=False)

    evaluate(variables, open_run(int(runs[0])), int(runs[0]), proposal)  # warm-up, untimed
    print("ready", flush=True)
    sys.stdin.readline()
    times: dict[int, float] = {}
    cpu: dict[int, float] = {}
    failed: list[str] = []
    spent: dict[str, float] = {}
    for number in map(int, runs):
        t, c = time.perf_counter(), time.process_time()
        failed = evaluate(variables, open_run(number), number, proposal, spent)
        times[number] = time.perf_counter() - t
        cpu[number] = time.process_time() - c
    print(json.dumps({"runs": times, "cpu": cpu, "failed": failed, "variables": spent}), flush=True)


if __name__ == "__main__":
    main()
