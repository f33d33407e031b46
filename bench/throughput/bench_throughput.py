"""Throughput benchmark: facility events -> values stored, on real services, 200 MB runs.

    uv run python bench/throughput/bench_throughput.py [--runs 20] [--data-dir DIR]
        [--executor-env KEY=VALUE ...]          (needs the local stack: ./task infra:up)

Builds 20 EXtra-data mock runs with seeded non-zero data (a 209 MB camera source
per run, see workload.py), starts ingest, executor and store as processes
(``runstream serve``, as in production) on the local Kafka and PostgreSQL with a
fresh topic prefix and database, registers two proposals and sends
``migration_complete`` facility events with a plain Kafka producer. In one run
it prints:

- the pure computation floor: the same 11 variables called in a bare loop by
  one process per CPU (floor.py), as runs/s and seconds per run per core,
  measured before each batch round and after the last one with the services
  paused (SIGSTOP), so that each round is compared with the machine as it was
  just then (a shared machine's speed drifts by 2x within minutes);
- batch throughput: ``--rounds`` (3) batches of 20 events at once (fresh run
  numbers linked to the same data), first event -> last run's values published
  by the store; each round's ratio to the mean of the floors around it, and the
  medians;
- CPU per run of every service and of the shared Kafka and PostgreSQL, and the
  Kafka records written per run, over the batches;
- single-run latency p50/p95: runs sent one at a time, event -> values published;
- fixed cost per run: 20 events at once for a context of one constant variable;
- peak RSS and PSS of each service's process tree (workers included) and of
  all services together (Kafka and PostgreSQL excluded);
- the load average before and after (the machine may be shared).

A run counts as done when the store has published ``values_updated`` for every
variable of the context (the failing one included, as an error).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests"))

import timeline  # noqa: E402
import workload  # noqa: E402
from memory import Sampler, cpu_seconds, tree  # noqa: E402
from runstream_common import parsers  # noqa: E402
from runstream_common.admin import ensure_topics  # noqa: E402
from runstream_common.kafka import make_broker, publish  # noqa: E402
from runstream_common.messages import ProposalRegistered, ValuesUpdated  # noqa: E402
from runstream_common.settings import KafkaSettings, PostgresSettings  # noqa: E402
from runstream_common.topics import proposal_key  # noqa: E402
from support.services import System  # noqa: E402

FIXED = workload.PROPOSAL + 1  # the one-constant-variable proposal (same data folder)
LATENCY_FIRST = 101  # run numbers of the one-at-a-time phase (links to runs 1..)
WARMUP_RUN = 201
ROUND_FIRST = 1001  # run numbers of batch rounds after the first: 1001.., 1101.., ...


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------- the floor


def measure_floor(context: str, prop: Path, runs: list[int], work: Path) -> dict[str, float | str]:
    """The 11 variables in a bare loop, one process per CPU, started together."""
    path = work / "floor_context.py"
    path.write_text(context)
    n = os.cpu_count() or 1
    procs = []
    for i in range(n):
        mine = [str(r) for r in runs[i::n]]
        procs.append(
            subprocess.Popen(
                [sys.executable, str(HERE / "floor.py"), str(path), str(prop), *mine],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
    started = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outputs = [json.loads(p.communicate()[0]) for p in procs]
    wall = time.perf_counter() - started
    per_run = [t for out in outputs for t in out["runs"].values()]
    cpu = [t for out in outputs for t in out["cpu"].values()]
    spent: dict[str, float] = {}
    for out in outputs:
        for name, seconds in out["variables"].items():
            spent[name] = spent.get(name, 0.0) + seconds
    largest = max(spent, key=spent.__getitem__)
    return {
        "runs_per_s": len(runs) / wall,
        "s_per_run_per_core": statistics.fmean(per_run),
        "cpu_per_run": statistics.fmean(cpu),
        "cpus": n,
        "failed": ",".join(outputs[0]["failed"]),
        "largest": largest,
        "largest_share": spent[largest] / sum(spent.values()),
    }


def combine(floors: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The mean of the floors measured around the rounds (``spread``: each of them)."""
    if not floors:
        return None
    return {
        **floors[0],
        "runs_per_s": statistics.fmean(f["runs_per_s"] for f in floors),
        "s_per_run_per_core": statistics.fmean(f["s_per_run_per_core"] for f in floors),
        "cpu_per_run": statistics.fmean(f["cpu_per_run"] for f in floors),
        "largest_share": statistics.fmean(f["largest_share"] for f in floors),
        "spread": "/".join(f"{f['runs_per_s']:.2f}" for f in floors),
    }


@contextlib.contextmanager
def paused(roots: dict[str, int]) -> Iterator[None]:
    """The services' process trees stopped (SIGSTOP), so a floor measured meanwhile has
    the machine as it had before they started; continued afterwards (well inside the
    consumers' session timeout)."""
    pids = [p for root in roots.values() for p in tree(root)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


# ---------------------------------------------------------------- the services


@dataclass
class Done:
    """Completion of runs, read from the store's ``updates`` feed."""

    expected: dict[int, frozenset[str]]
    names: dict[tuple[int, int], set[str]] = field(default_factory=dict)
    at: dict[tuple[int, int], float] = field(default_factory=dict)

    def feed(self, record: Any) -> None:
        update = parsers.UPDATES.parse(record.value)
        if not isinstance(update, ValuesUpdated) or update.proposal not in self.expected:
            return
        key = (update.proposal, update.run)
        seen = self.names.setdefault(key, set())
        seen.update(update.values)
        if key not in self.at and seen >= self.expected[update.proposal]:
            self.at[key] = record.timestamp / 1000


class Bench:
    def __init__(self, kafka: KafkaSettings, system: System, feed: AIOKafkaConsumer) -> None:
        self.kafka = kafka
        self.system = system
        self.feed = feed
        self.done = Done({workload.PROPOSAL: workload.ELEVEN_NAMES, FIXED: frozenset({"one"})})
        self.topic = f"{kafka.topic_prefix}.facility.daq"
        self.producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")

    async def wait(self, keys: set[tuple[int, int]], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not keys <= self.done.at.keys():
            if time.monotonic() > deadline:
                missing = sorted(keys - self.done.at.keys())
                raise SystemExit(f"runs not done in {timeout:.0f} s: {missing}")
            batch = await self.feed.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    self.done.feed(record)

    async def send(self, proposal: int, run: int) -> float:
        body = json.dumps({"event": "migration_complete", "proposal": proposal, "run": run})
        sent = time.time()
        await self.producer.send_and_wait(
            self.topic, body.encode(), key=f"{proposal}/{run}".encode()
        )
        return sent

    async def batch(self, proposal: int, runs: list[int]) -> float:
        """All events at once; runs per second from the first event to the last value."""
        first = time.time()
        await asyncio.gather(*(self.send(proposal, r) for r in runs))
        await self.wait({(proposal, r) for r in runs}, 60 + 10 * len(runs))
        return len(runs) / (max(self.done.at[(proposal, r)] for r in runs) - first)

    async def paced(self, proposal: int, runs: list[int]) -> dict[int, float]:
        """One run at a time: event -> values published, without queueing. Run -> sent at."""
        sent = {}
        for run in runs:
            sent[run] = await self.send(proposal, run)
            await self.wait({(proposal, run)}, 120)
        return sent

    def latencies(self, proposal: int, sent: dict[int, float]) -> list[float]:
        return [self.done.at[(proposal, run)] - at for run, at in sent.items()]


async def prepare_services(
    root: Path, prop: Path, executor_env: dict[str, str]
) -> tuple[KafkaSettings, System]:
    prefix = f"thr{uuid.uuid4().hex[:8]}"
    kafka = KafkaSettings(topic_prefix=prefix)
    base_dsn = PostgresSettings().dsn.get_secret_value()
    db = f"bench_{prefix}"
    admin = await asyncpg.connect(base_dsn)
    await admin.execute(f'CREATE DATABASE "{db}"')
    await admin.close()
    dsn = f"{base_dsn.rpartition('/')[0]}/{db}"
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
    raw_topic = f"{prefix}.facility.daq"
    await ensure_topics(kafka, [raw_topic])
    contexts = {workload.PROPOSAL: workload.ELEVEN_VARIABLES, FIXED: workload.ONE_CONSTANT}
    broker = make_broker(kafka, client_id="bench")
    await broker.connect()
    for proposal, code in contexts.items():
        context_dir = root / prefix / f"usr{proposal}"
        context_dir.mkdir(parents=True)
        (context_dir / "context.py").write_text(code)
        registration = ProposalRegistered(
            proposal=proposal, context_dir=str(context_dir), data_root=str(prop)
        )
        await publish(broker, kafka.topics.proposals, registration, key=proposal_key(proposal))
    await broker.stop()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")},
        "RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "RUNSTREAM_KAFKA_TOPIC_PREFIX": prefix,
        "RUNSTREAM_POSTGRES_DSN": dsn,
        "RUNSTREAM_INGEST_FACILITY_TOPICS": json.dumps([raw_topic]),
        "RUNSTREAM_INGEST_GROUP_ID": f"{prefix}-ingest",
        "RUNSTREAM_INGEST_TRANSACTIONAL_ID": f"{prefix}-ingest",
        "RUNSTREAM_STORE_GROUP_ID": f"{prefix}-store",
        "RUNSTREAM_LOG_LEVEL": "WARNING",
        **executor_env,
    }
    (root / prefix / "logs").mkdir()
    return kafka, System(env=env, log_dir=root / prefix / "logs")


async def drop_database(kafka: KafkaSettings) -> None:
    base_dsn = PostgresSettings().dsn.get_secret_value()
    admin = await asyncpg.connect(base_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "bench_{kafka.topic_prefix}" WITH (FORCE)')
    finally:
        await admin.close()


async def topic_counts(kafka: KafkaSettings) -> dict[str, int]:
    """Records written so far to each of the benchmark's topics (their end offsets)."""
    client = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers)
    await client.start()
    try:
        prefix = f"{kafka.topic_prefix}."
        metadata = await client._client.fetch_all_metadata()
        topics = sorted(t for t in metadata.topics() if t.startswith(prefix))
        parts = [
            TopicPartition(t, p) for t in topics for p in metadata.partitions_for_topic(t) or ()
        ]
        ends = await client.end_offsets(parts) if parts else {}
    finally:
        await client.stop()
    counts: dict[str, int] = {}
    for part, end in ends.items():
        name = part.topic.removeprefix(prefix)
        counts[name] = counts.get(name, 0) + end
    return counts


def infra_cpu() -> dict[str, float]:
    """CPU seconds used so far by the local Kafka and PostgreSQL (their whole process trees).

    They are shared with whatever else uses the stack, so this is an upper bound of
    what the benchmark cost them.
    """
    state = Path(os.environ.get("RUNSTREAM_STATE_DIR", REPO / ".state"))
    pids = {
        "kafka": state / "kafka" / "kafka.pid",
        "postgres": state / "postgres" / "data" / "postmaster.pid",
    }
    used = {}
    for name, pid_file in pids.items():
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        used[name] = sum(cpu_seconds(p) for p in tree(pid))
    return used


class Profiler:
    """py-spy sampling every service's process tree during one phase (``--profile DIR``)."""

    def __init__(self, out: Path | None) -> None:
        self.out = out
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, pids: dict[str, int], phase: str) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy")
        cmd = [spy] if spy else ["uvx", "--from", "py-spy", "py-spy"]
        for name, root in pids.items():
            for pid in tree(root):  # one py-spy per process: --subprocesses misses forked workers
                target = self.out / f"{phase.replace(' ', '-')}-{name}-{pid}.txt"
                self.procs.append(
                    subprocess.Popen(
                        [
                            *cmd,
                            "record",
                            "--format",
                            "raw",
                            "--rate",
                            "100",
                            "--nonblocking",
                            "-p",
                            str(pid),
                            "-o",
                            str(target),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            proc.wait(timeout=60)
        self.procs.clear()


@dataclass(frozen=True)
class Rounds:
    """The batch rounds: their runs, and whether to measure the floor around each."""

    runs: list[list[int]]
    floor: bool
    context: str = workload.ELEVEN_VARIABLES


async def run_services(
    root: Path,
    prop: Path,
    rounds: Rounds,
    latency_runs: list[int],
    executor_env: dict[str, str],
    profile: Path | None = None,
) -> dict[str, Any]:
    kafka, system = await prepare_services(root, prop, executor_env)
    sampler = Sampler(
        lambda: {k: p.process.pid for k, p in system.procs.items() if p.process and p.alive}
    )
    sampler.start()
    feed = AIOKafkaConsumer(
        kafka.topics.updates,
        bootstrap_servers=kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        metadata_max_age_ms=1000,
    )
    bench = Bench(kafka, system, feed)
    profiler = Profiler(profile)
    out: dict[str, Any] = {}
    try:
        await system.start("store", "ingest", "executor")
        await feed.start()
        await bench.producer.start()
        sampler.phase = "warm-up"
        for proposal in (workload.PROPOSAL, FIXED):
            await bench.paced(proposal, [WARMUP_RUN])
        out.update(await batch_rounds(bench, sampler, profiler, rounds, prop, root))
        sampler.phase = "one at a time"
        sent = await bench.paced(workload.PROPOSAL, latency_runs)
        out["latencies"] = bench.latencies(workload.PROPOSAL, sent)
        out["stages"] = await timeline.stages(kafka, workload.PROPOSAL, sent)
        sampler.phase = "fixed cost"
        out["fixed_runs_per_s"] = await bench.batch(FIXED, rounds.runs[0])
    except BaseException:
        print(system.logs(), file=sys.stderr)
        raise
    finally:
        await sampler.stop()
        await bench.producer.stop()
        await feed.stop()
        system.stop()
        await drop_database(kafka)
    out["peaks"] = sampler.peaks
    return out


async def batch_rounds(
    bench: Bench, sampler: Sampler, profiler: Profiler, rounds: Rounds, prop: Path, root: Path
) -> dict[str, Any]:
    """Each round: the floor (services paused), then a batch of fresh runs; then the floor
    once more. CPU, records and the shared stack's CPU are summed over the rounds."""
    rates: list[float] = []
    floors: list[dict[str, Any]] = []
    records: dict[str, int] = {}
    infra: dict[str, float] = {}

    def floor() -> None:
        if rounds.floor:
            with paused(sampler.roots()):
                floors.append(measure_floor(rounds.context, prop, rounds.runs[0], root))

    for i, runs in enumerate(rounds.runs):
        floor()
        sampler.phase = "batch"
        if i == 0:  # --profile: the first round
            profiler.start(sampler.roots(), "batch")
        counts_before, infra_before = await topic_counts(bench.kafka), infra_cpu()
        rates.append(await bench.batch(workload.PROPOSAL, runs))
        infra_after, counts_after = infra_cpu(), await topic_counts(bench.kafka)
        if i == 0:
            profiler.stop()
        sampler.phase = "between rounds"
        for k, v in infra_before.items():
            infra[k] = infra.get(k, 0.0) + infra_after.get(k, v) - v
        for t, n in counts_after.items():
            records[t] = records.get(t, 0) + n - counts_before.get(t, 0)
    floor()
    return {
        "rates": rates,
        "floors": floors,
        "infra_cpu": infra,
        "records": {t: n for t, n in records.items() if n},
        "batch_runs": sum(len(r) for r in rounds.runs),
    }


# ---------------------------------------------------------------- report


def round_ratios(svc: dict[str, Any]) -> list[tuple[float, float]]:
    """Per round: (floor runs/s, the mean of the floors just before and after it; the
    floor divided by the round's throughput)."""
    floors = [f["runs_per_s"] for f in svc["floors"]]
    out = []
    for i, rate in enumerate(svc["rates"]):
        around = statistics.fmean(floors[i : i + 2])
        out.append((around, around / rate))
    return out


def print_turns_bound(floor: dict[str, Any]) -> None:
    """What taking turns would cost: with one large variable computing at a time (the
    executor's admission by memory), the batch cannot go faster than one of them after
    another on one core, whatever the rest costs."""
    share = floor["largest_share"]
    alone = share * floor["s_per_run_per_core"]
    print(
        f"  its largest variable, {floor['largest']}, is {share:.0%} of its CPU: if those take "
        f"turns (admission by memory) they bound a batch at {1 / alone:.2f} runs/s, "
        f"floor/throughput >= {floor['runs_per_s'] * alone:.2f}x"
    )


def report(
    args: argparse.Namespace,
    floor: dict[str, Any] | None,
    svc: dict[str, Any],
    loads: tuple[str, str],
) -> None:
    lat = svc["latencies"]
    rates = svc["rates"]
    rate = statistics.median(rates)
    n = svc["batch_runs"]
    print(
        f"\nthroughput benchmark: {args.runs} runs x 209 MB camera, 11-variable context, "
        f"{len(rates)} rounds"
    )
    print(f"load average (1/5/15 min) before {loads[0]}, after {loads[1]}; {os.cpu_count()} CPUs")
    ratio = ""
    if floor is not None:
        print(
            f"computation floor (bare loop, {floor['cpus']} processes, services paused; before "
            f"and after each round {floor['spread']} runs/s): {floor['runs_per_s']:.2f} runs/s, "
            f"{floor['s_per_run_per_core']:.3f} s per run per core (failed as intended: "
            f"{floor['failed']})"
        )
        print_turns_bound(floor)
        ratios = round_ratios(svc)
        ratio = f"; floor/throughput {statistics.median(r for _, r in ratios):.2f}x (median)"
        rounds = ", ".join(
            f"{r:.2f} runs/s ({x:.2f}x)" for r, (_, x) in zip(rates, ratios, strict=True)
        )
    else:
        rounds = ", ".join(f"{r:.2f} runs/s" for r in rates)
    print(f"batch throughput: {rate:.2f} runs/s{ratio}   [target >= 4.5 runs/s, <= 1.5x]")
    print(f"  each round (floor/throughput, the floor around it): {rounds}")
    cpu = svc["peaks"].cpu_used("batch")
    spent = sum(a + b for a, b in cpu.values()) / n
    cells = ", ".join(
        f"{k} {(a + b) / n * 1000:.0f}"
        + (f" (main {a / n * 1000:.0f} + workers {b / n * 1000:.0f})" if b else "")
        for k, (a, b) in sorted(cpu.items())
    )
    floor_cpu = f"; floor {floor['cpu_per_run'] * 1000:.0f} ms" if floor else ""
    print(f"CPU per run in the batches (ms): {cells}; all {spent * 1000:.0f}{floor_cpu}")
    infra = ", ".join(f"{k} {v / n * 1000:.0f}" for k, v in svc["infra_cpu"].items())
    print(f"  shared stack meanwhile (ms per run, includes anyone else's use): {infra}")
    records = svc["records"]
    per_topic = ", ".join(f"{t} {c / n:.1f}" for t, c in sorted(records.items()))
    print(f"Kafka records per run in the batches: {sum(records.values()) / n:.1f} ({per_topic})")
    print(
        f"single run, event -> values stored and published ({len(lat)} runs): "
        f"p50 {pct(lat, 0.5):.3f} s, p95 {pct(lat, 0.95):.3f} s   [target p50 <= 0.6 s]"
    )
    for label, seconds in svc["stages"].items():
        print(f"  {label:42} median {seconds * 1000:6.0f} ms")
    fixed_ms = 1000 / svc["fixed_runs_per_s"]
    print(
        f"fixed cost, one constant variable, batch of {args.runs}: {fixed_ms:.0f} ms per run "
        f"({svc['fixed_runs_per_s']:.1f} runs/s)   [target <= 50 ms]"
    )
    peaks = svc["peaks"]
    print("peak memory (MiB) per phase: service RSS / PSS (process tree incl. workers)")
    for phase, services in peaks.services.items():
        total_rss, total_pss = peaks.total[phase]
        cells = ", ".join(f"{k} {r:.0f}/{p:.0f}" for k, (r, p) in sorted(services.items()))
        print(f"  {phase:14} {cells}; all services {total_rss:.0f}/{total_pss:.0f}")
        snapshot = peaks.at_peak.get(phase, {})
        print(
            f"  {'':14} at that peak, RSS of each process (main first): "
            + "; ".join(
                f"{k} " + "+".join(f"{r:.0f}" for r in rss) for k, rss in sorted(snapshot.items())
            )
        )
    batch = peaks.per_process.get("batch", {})
    print(
        "  batch, each process (RSS/PSS MiB): "
        + ", ".join(f"{pid} {r:.0f}/{p:.0f}" for pid, (r, p) in sorted(batch.items()))
    )
    overall = max(r for r, _ in peaks.total.values()), max(p for _, p in peaks.total.values())
    print(
        f"peak of all services together: RSS {overall[0]:.0f} MiB, PSS {overall[1]:.0f} MiB"
        "   [target <= 650 MB RSS]"
    )
    print(
        "processes per service (max): "
        + ", ".join(f"{k} {n}" for k, n in sorted(peaks.processes.items()))
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--latency-runs", type=int, default=10)
    parser.add_argument("--data-dir", type=Path, help="keep (and reuse) the mock runs here")
    parser.add_argument("--executor-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--pythonpath",
        help="prepended to the services' PYTHONPATH: e.g. an older checkout's "
        "services/executor/src:libs/common/src, to compare before/after in the same conditions",
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy the services during the batch, into DIR"
    )
    parser.add_argument("--no-floor", action="store_true", help="skip the floor (with --profile)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="batches of --runs fresh runs, each between two floors (services paused)",
    )
    args = parser.parse_args()
    executor_env = dict(kv.split("=", 1) for kv in args.executor_env)
    if args.pythonpath:
        executor_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [args.pythonpath, os.environ.get("PYTHONPATH")])
        )
    loads_before = load()
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        root = Path(tmp)
        data = args.data_dir or root / "data"
        data.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        prop = workload.make_runs(data, args.runs)
        runs = list(range(1, args.runs + 1))
        latency = workload.alias_runs(prop, LATENCY_FIRST, args.latency_runs, args.runs)
        workload.alias_runs(prop, WARMUP_RUN, 1, args.runs)
        size = workload.warm_page_cache(prop)
        print(f"{len(runs)} runs ready ({size / 2**30:.1f} GiB) in {time.perf_counter() - t:.0f} s")
        later = [
            workload.alias_runs(prop, ROUND_FIRST + 100 * i, args.runs, args.runs)
            for i in range(args.rounds - 1)
        ]
        rounds = Rounds([runs, *later], floor=not args.no_floor)
        svc = await run_services(root, prop, rounds, latency, executor_env, args.profile)
    floor = combine(svc["floors"])
    report(args, floor, svc, (loads_before, load()))


if __name__ == "__main__":
    asyncio.run(main())
