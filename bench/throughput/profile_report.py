"""Where the CPU time of the services goes: py-spy samples sorted into categories.

    python bench/throughput/profile_report.py DIR [--rate 100] [--runs 20]

Reads the raw (collapsed) stacks that ``bench_throughput.py --profile DIR``
wrote (one file per process: ``<phase>-<service>-<pid>.txt``) and prints, per
service, the CPU seconds per run in each category. Samples are on-CPU only
(py-spy leaves idle threads out, and leaf frames that wait in select/read/lock
calls are dropped here), so waiting (for Kafka acks, for a worker) is
not in these figures; the bench's latencies show it.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

# (category, pattern searched in the whole stack); the first that matches wins.
RULES: tuple[tuple[str, str], ...] = (
    ("executor: summaries/thumbnails (prepare)", r"rs_ctxrunner/prepare\.py"),
    (
        "executor: reading data (user's h5py/EXtra-data calls)",
        r"context\.py:\d+\).*(h5py|extra_data)",
    ),
    ("executor: evaluation (user's computation)", r"context\.py:\d+\)"),
    ("executor: opening runs, start time", r"rs_ctxrunner/runs\.py"),
    ("executor: context load/parse", r"rs_ctxrunner/loader\.py|_context \(.*worker\.py"),
    ("executor: fragments (HDF5 write, fsync)", r"h5write\.py|write_atomically"),
    ("executor: worker protocol (pickle frames)", r"protocol\.py|read_frame|_pickle|pickle"),
    ("executor: memory watchdog (psutil)", r"psutil"),
    ("store: PostgreSQL (asyncpg)", r"asyncpg"),
    ("store: HDF5 merge", r"hdf5_merge|h5py"),
    ("messages (pydantic, JSON, Kafka client)", r"pydantic|faststream|aiokafka|json|kafka\.py"),
    (
        "executor: scheduling (engine, handlers, pool)",
        r"runstream_executor/(engine|handlers|pool|outcome)",
    ),
    ("event loop, logging, other", r""),
)


# Leaf frames that are waiting, not working (py-spy's idle detection misses some): a
# builtin's time shows as its Python caller's, so the worker's output copier, blocked
# in select.select, has ``_Copier._run`` as its leaf.
IDLE_LEAF = re.compile(
    r"(select|readinto|wait|acquire|_wait_for_tstate_lock|_Copier\._run) \(|zygote\.py:\d+\)$"
)


def categorise(stack: str) -> str:
    for name, pattern in RULES:
        if re.search(pattern, stack):
            return name
    return RULES[-1][0]


def read(directory: Path) -> dict[str, Counter[str]]:
    by_service: dict[str, Counter[str]] = defaultdict(Counter)
    for path in sorted(directory.glob("*.txt")):
        service = path.stem.split("-")[-2]
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit() and not IDLE_LEAF.search(stack.rsplit(";", 1)[-1]):
                by_service[service][categorise(stack)] += int(count)
    return by_service


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--rate", type=float, default=100.0, help="py-spy samples per second")
    parser.add_argument("--runs", type=int, default=20, help="runs processed while sampling")
    args = parser.parse_args()
    for service, counts in sorted(read(args.directory).items()):
        total = sum(counts.values())
        print(f"{service}: {total / args.rate / args.runs * 1000:.0f} ms CPU per run")
        for name, n in counts.most_common():
            share = 100 * n / total
            per_run = n / args.rate / args.runs * 1000
            print(f"  {name:55} {per_run:7.1f} ms/run {share:5.1f} %")


if __name__ == "__main__":
    main()
