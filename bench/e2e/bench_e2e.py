"""End-to-end benchmark: facility events in, values committed and published out.

    uv run python bench/e2e/bench_e2e.py [--runs 30]      (needs ./task infra:up)

Starts the four services as real processes (as in production: `runstream
serve`) on the local Kafka and PostgreSQL, with a fresh topic prefix and
database per phase, registers a proposal whose context is the executor
benchmark's standard 10-variable context, and sends one `migration_complete`
event per mock run (EXtra-data's FXE mock file, 400 trains). Latency per run
is from the moment its event was produced to the broker timestamp of the
store's `values_updated` for it (published after the database commit).

Phases: runs sent one at a time (each waits for the previous one to be
published: latency without queueing), then a burst with one executor and a
burst with two executors in one group. Prints p50/p95 latency, runs per second
(first event to last run published), the throughput ratio two/one, and each
service's peak memory (RSS of its process tree).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from runstream_common import parsers  # noqa: E402
from runstream_common.admin import ensure_topics  # noqa: E402
from runstream_common.kafka import make_broker, publish  # noqa: E402
from runstream_common.messages import ProposalRegistered, ValuesUpdated  # noqa: E402
from runstream_common.settings import KafkaSettings, PostgresSettings  # noqa: E402
from runstream_common.topics import proposal_key  # noqa: E402
from support.services import System  # noqa: E402

PROPOSAL = 1234  # the proposal folder bench_executor.make_runs writes


def _executor_bench() -> Any:
    """The executor benchmark's module: its 10-variable context and mock runs are ours too."""
    spec = importlib.util.spec_from_file_location(
        "bench_executor", REPO / "bench/executor/bench_executor.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def sample_memory(system: System, peaks: dict[str, float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for key, proc in system.procs.items():
            if proc.process is None or not proc.alive:
                continue
            try:
                root = psutil.Process(proc.process.pid)
                rss = root.memory_info().rss + sum(
                    c.memory_info().rss for c in root.children(recursive=True)
                )
            except psutil.Error:
                continue
            peaks[key] = max(peaks.get(key, 0.0), rss / 2**20)
        await asyncio.sleep(0.25)


async def collect(
    feed: AIOKafkaConsumer, published: dict[int, float], wanted: set[int], deadline: float
) -> None:
    """Read the updates feed until every wanted run has its values published."""
    while not wanted <= published.keys() and time.monotonic() < deadline:
        batch = await feed.getmany(timeout_ms=1000)
        for records in batch.values():
            for record in records:
                update = parsers.UPDATES.parse(record.value)
                if isinstance(update, ValuesUpdated) and len(update.values) >= 10:
                    published.setdefault(update.run, record.timestamp / 1000)


async def phase(
    executors: int, runs: int, root: Path, context: str, base_dsn: str, *, paced: bool = False
) -> dict[str, object]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    kafka = KafkaSettings(topic_prefix=prefix)
    db = f"bench_{prefix}"
    admin = await asyncpg.connect(base_dsn)
    await admin.execute(f'CREATE DATABASE "{db}"')
    await admin.close()
    dsn = f"{base_dsn.rpartition('/')[0]}/{db}"
    work = root / prefix
    context_dir = work / "usr"
    context_dir.mkdir(parents=True)
    (context_dir / "context.py").write_text(textwrap.dedent(context))
    proposal_dir = root / "data" / f"p{PROPOSAL:06d}"
    raw_topic = f"{prefix}.facility.daq"
    await ensure_topics(kafka, [raw_topic])
    upgrade = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runstream.cli",
        "db",
        "upgrade",
        "--dsn",
        dsn,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert await upgrade.wait() == 0
    env = {
        **{k: v for k, v in __import__("os").environ.items() if not k.startswith("RUNSTREAM_")},
        "RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "RUNSTREAM_KAFKA_TOPIC_PREFIX": prefix,
        "RUNSTREAM_POSTGRES_DSN": dsn,
        "RUNSTREAM_INGEST_FACILITY_TOPICS": json.dumps([raw_topic]),
        "RUNSTREAM_INGEST_GROUP_ID": f"{prefix}-ingest",
        "RUNSTREAM_INGEST_TRANSACTIONAL_ID": f"{prefix}-ingest",
        "RUNSTREAM_STORE_GROUP_ID": f"{prefix}-store",
        "RUNSTREAM_LOG_LEVEL": "WARNING",
    }
    (work / "logs").mkdir()
    system = System(env=env, log_dir=work / "logs")
    broker = make_broker(kafka, client_id="bench")
    await broker.connect()
    await publish(
        broker,
        kafka.topics.proposals,
        ProposalRegistered(
            proposal=PROPOSAL, context_dir=str(context_dir), data_root=str(proposal_dir)
        ),
        key=proposal_key(PROPOSAL),
    )
    await broker.stop()
    peaks: dict[str, float] = {}
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_memory(system, peaks, stop))
    try:
        await system.start("store", "ingest")
        await system.start("executor")
        if executors == 2:
            await system.start("executor", instance="executor-2")
        feed = AIOKafkaConsumer(
            kafka.topics.updates,
            bootstrap_servers=kafka.bootstrap_servers,
            auto_offset_reset="earliest",
        )
        await feed.start()
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
        await producer.start()
        sent: dict[int, float] = {}
        published: dict[int, float] = {}
        deadline = time.monotonic() + 60 + 10 * runs
        for run in range(1, runs + 1):
            body = json.dumps(
                {"event": "migration_complete", "proposal": PROPOSAL, "run": run}
            ).encode()
            sent[run] = time.time()
            await producer.send_and_wait(raw_topic, body, key=f"{PROPOSAL}/{run}".encode())
            if paced:  # one run at a time: latency without queueing
                await collect(feed, published, {run}, deadline)
        await producer.stop()
        await collect(feed, published, set(range(1, runs + 1)), deadline)
        await feed.stop()
    finally:
        stop.set()
        await sampler
        system.stop()
    if len(published) < runs:
        raise SystemExit(
            f"only {len(published)} of {runs} runs were published; logs in {work / 'logs'}"
        )
    latencies = [published[r] - sent[r] for r in range(1, runs + 1)]
    span = max(published.values()) - min(sent.values())
    return {"latencies": latencies, "rate": runs / span, "peaks": peaks}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    base_dsn = PostgresSettings().dsn.get_secret_value()
    executor_bench = _executor_bench()
    context = str(executor_bench.TEN_VARIABLES)
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        executor_bench.make_runs(root / "data", args.runs)
        paced_runs = min(10, args.runs)
        results = {
            f"one at a time ({paced_runs} runs), 1 executor": await phase(
                1, paced_runs, root, context, base_dsn, paced=True
            ),
            f"burst of {args.runs}, 1 executor": await phase(1, args.runs, root, context, base_dsn),
            f"burst of {args.runs}, 2 executors": await phase(
                2, args.runs, root, context, base_dsn
            ),
        }
    print("end to end, 10-variable context: facility event -> values committed and published")
    print(f"{'phase':36} {'p50 s':>7} {'p95 s':>7} {'runs/s':>7}")
    for name, r in results.items():
        lat = r["latencies"]
        print(f"{name:36} {pct(lat, 0.5):7.2f} {pct(lat, 0.95):7.2f} {r['rate']:7.2f}")  # type: ignore[arg-type]
    one, two = (results[f"burst of {args.runs}, {n}"] for n in ("1 executor", "2 executors"))
    print(f"throughput two/one executors: {two['rate'] / one['rate']:.2f}x")  # type: ignore[operator]
    print("peak RSS per service (MiB, process tree incl. workers):")
    for name, r in results.items():
        peaks: dict[str, float] = r["peaks"]  # type: ignore[assignment]
        print(f"  {name}: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(peaks.items())))


if __name__ == "__main__":
    asyncio.run(main())
