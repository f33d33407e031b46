"""Ingest throughput and added latency: facility topic -> run messages, through a real ingest process.

    uv run python bench/ingest/bench_ingest.py [--events 20000] [--rate 200] [--seconds 10] [--rounds 3]

Needs Kafka (deploy/local/stack.sh up; RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS, default
127.0.0.1:29092). Starts ``python -m runstream_ingest`` as a subprocess on fresh
topics, produces EuXFEL ``migration_complete`` events with confluent-kafka and
reads the run messages back with a ``read_committed`` consumer.

- throughput: a burst of ``--events`` distinct runs (plus the same number of
  duplicates with ``--duplicates``); events/s = events / (last run message seen -
  first event sent).
- latency: ``--rounds`` rounds of ``--rate`` events/s for ``--seconds``; per
  event, the time from ``produce()`` to the run message arriving at a consumer,
  and the same event's arrival at a plain consumer of the facility topic (the
  baseline, no ingest). "added" is, per event, run message seen minus facility
  event seen. A p99 over 2,000 events is decided by ~20 of them, and the broker's
  own pauses land on some; each round is reported, and the median round first.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from runstream_common.admin import ensure_topics
from runstream_common.messages import ProposalRegistered
from runstream_common.settings import KafkaSettings
from runstream_common.topics import proposal_key
from runstream_ingest.adapters.compacted import partitions_of
from runstream_ingest.adapters.publisher import publish_once

PROPOSAL = 2212


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Tap:
    """One group-less ``read_committed`` consumer for every topic the bench watches.

    The facility event and its run message are stamped by the same consumer and
    event loop, so neither side of "added" pays for a second client.
    """

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.readers: dict[str, Reader] = {}

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap_servers,
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_wait_ms=100,
        )
        await self.consumer.start()
        self.task = asyncio.create_task(self._run())

    async def watch(self, reader: Reader) -> None:
        """Add ``reader.topic`` (read from its beginning) to the assignment."""
        tps = await partitions_of(self.consumer, reader.topic, 30)
        self.readers[reader.topic] = reader
        self.consumer.assign([*self.consumer.assignment(), *tps])
        await self.consumer.seek_to_beginning(*tps)

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            now = time.time()
            for tp, records in batch.items():
                reader = self.readers[tp.topic]
                for r in records:
                    reader.record(r, now)

    async def stop(self) -> None:
        if hasattr(self, "task"):
            self.task.cancel()
            await self.consumer.stop()


class Reader:
    """Arrival time per run number on one topic."""

    def __init__(self, topic: str, key_of: Any) -> None:
        self.topic, self.key_of = topic, key_of
        self.seen: dict[int, float] = {}
        self.stamp: dict[int, float] = {}  # the record's own CreateTime (s)
        self.count = 0

    def record(self, r: Any, now: float) -> None:
        self.count += 1
        run = self.key_of(r.value)
        self.seen.setdefault(run, now)
        self.stamp.setdefault(run, r.timestamp / 1000)

    async def wait(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.seen) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.topic}: {len(self.seen)} of {n} after {timeout} s")
            await asyncio.sleep(0.01)

    async def wait_for(self, runs: dict[int, float], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(r not in self.seen for r in runs):
            if time.monotonic() > deadline:
                missing = sum(r not in self.seen for r in runs)
                raise TimeoutError(
                    f"{self.topic}: {missing} of {len(runs)} missing after {timeout} s"
                )
            await asyncio.sleep(0.05)


def _spawn(env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "runstream_ingest"], env=env, stdout=log, stderr=subprocess.STDOUT
    )


async def measure_round(
    args: argparse.Namespace,
    first: int,
    send: Any,
    producer: Producer,
    runs: Reader,
    baseline: Reader,
) -> dict[str, float]:
    """``--rate`` events/s for ``--seconds`` (run numbers from ``first``); percentiles in ms."""
    sent: dict[int, float] = {}
    total = int(args.rate * args.seconds)
    start = time.monotonic()
    for i in range(total):
        due = start + i / args.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[first + i] = time.time()
        send(first + i)
    producer.flush(30)
    await runs.wait_for(sent, timeout=120)
    await baseline.wait_for(sent, timeout=60)
    e2e = [(runs.seen[r] - t) * 1000 for r, t in sent.items()]
    kafka_only = [(baseline.seen[r] - t) * 1000 for r, t in sent.items()]
    # per event: what ingest adds on top of the same event's plain Kafka hop
    added = [(runs.seen[r] - baseline.seen[r]) * 1000 for r in sent]
    # facility record CreateTime -> run message CreateTime: poll wait + decision, before commit
    pickup = [(runs.stamp[r] - baseline.stamp[r]) * 1000 for r in sent]
    out: dict[str, float] = {"events": total, "mean_end_to_end_ms": round(statistics.fmean(e2e), 2)}
    for name, q in (("p50", 0.50), ("p99", 0.99)):
        out[f"{name}_end_to_end_ms"] = round(pct(e2e, q), 2)
        out[f"{name}_kafka_only_ms"] = round(pct(kafka_only, q), 2)
        out[f"{name}_added_ms"] = round(pct(added, q), 2)
        out[f"{name}_pickup_ms"] = round(pct(pickup, q), 2)
    return out


def run_of_json(value: bytes) -> int:
    return int(json.loads(value)["run"])


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=20000, help="burst size (distinct runs)")
    ap.add_argument("--duplicates", action="store_true", help="send every burst event twice")
    ap.add_argument("--rate", type=float, default=200.0, help="events/s in the latency phase")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of one latency round")
    ap.add_argument("--rounds", type=int, default=3, help="latency rounds (p99 is noisy)")
    ap.add_argument("--partitions", type=int, default=3, help="partitions of the facility topic")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()

    bootstrap = os.environ.get("RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:29092")
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix)
    facility = f"{prefix}.facility"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(facility, num_partitions=args.partitions, replication_factor=1)])[
        facility
    ].result(30)
    tmp = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    pdir = tmp / f"p{PROPOSAL:06d}"
    (pdir / "raw").mkdir(parents=True)
    await ensure_topics(kafka, [kafka.topics.proposals], compacted={kafka.topics.proposals})
    await publish_once(
        kafka,
        [
            (
                kafka.topics.proposals,
                proposal_key(PROPOSAL),
                ProposalRegistered(
                    proposal=PROPOSAL, context_dir=str(tmp / "ctx"), data_root=str(pdir)
                ),
            )
        ],
    )

    env = {
        **os.environ,
        "RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "RUNSTREAM_KAFKA_TOPIC_PREFIX": prefix,
        "RUNSTREAM_INGEST_FACILITY_TOPICS": json.dumps([facility]),
        "RUNSTREAM_INGEST_GROUP_ID": f"{prefix}-ingest",
        "RUNSTREAM_INGEST_TRANSACTIONAL_ID": f"{prefix}-ingest",
        "RUNSTREAM_INGEST_LOG_LEVEL": "INFO",
        "RUNSTREAM_INGEST_STATS_INTERVAL_S": "5",
    }
    log = (tmp / "ingest.log").open("wb")
    proc = _spawn(env, log)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 0}
    )

    def send(run: int) -> None:
        producer.produce(
            facility,
            json.dumps(
                {
                    "event": "migration_complete",
                    "proposal": PROPOSAL,
                    "run": run,
                    "instrument": "HED",
                    "cycle": "202601",
                }
            ).encode(),
        )
        producer.poll(0)

    tap = Tap(kafka)
    runs = Reader(kafka.topics.runs, run_of_json)
    baseline = Reader(facility, run_of_json)
    results: dict[str, Any] = {}
    try:
        await asyncio.sleep(0.5)
        send(0)  # warm-up: wait until ingest is up and has processed one event
        producer.flush(30)
        await tap.start()
        await tap.watch(runs)
        await runs.wait(1, timeout=120)

        # -- throughput --------------------------------------------------------------------
        n = args.events
        t0 = time.time()
        for run in range(1, n + 1):
            send(run)
            if args.duplicates:
                send(run)
        producer.flush(60)
        t_sent = time.time()
        await runs.wait(n + 1, timeout=600)
        t_done = max(runs.seen[r] for r in range(1, n + 1))
        inputs = n * (2 if args.duplicates else 1)
        results["throughput"] = {
            "events": inputs,
            "run_messages": n,
            "seconds": round(t_done - t0, 3),
            "events_per_s": round(inputs / (t_done - t0), 1),
            "produce_seconds": round(t_sent - t0, 3),
        }

        # -- latency -----------------------------------------------------------------------
        # the harness must not add its own pauses: no garbage collection while measuring
        gc.collect()
        gc.disable()
        await tap.watch(baseline)
        rounds = []
        first = 1_000_000
        for _ in range(args.rounds):
            rounds.append(await measure_round(args, first, send, producer, runs, baseline))
            first += 1_000_000
        gc.enable()
        ordered = sorted(rounds, key=lambda r: r["p99_added_ms"])
        results["latency"] = {
            "rate_per_s": args.rate,
            "events_per_round": rounds[0]["events"],
            "rounds": rounds,
            "median_round": ordered[len(ordered) // 2],
        }
        results["duplicates_in_runs_topic"] = runs.count - len(runs.seen)
        results["load_average"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        await tap.stop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        # ingest's own view (it logs its batch timings every 30 s)
        for line in (tmp / "ingest.log").read_text().splitlines():
            if "ms p50/p99" in line:
                print("ingest:", line.split(": ", 1)[-1], file=sys.stderr)

    if args.json:
        print(json.dumps(results, indent=2))
        return
    t = results["throughput"]
    lat: Any = results["latency"]
    print(
        f"throughput: {t['events']} events -> {t['run_messages']} run messages in {t['seconds']} s "
        f"= {t['events_per_s']} events/s (producing took {t['produce_seconds']} s)"
    )
    print(
        f"latency at {lat['rate_per_s']:g} events/s, {len(lat['rounds'])} rounds of "
        f"{lat['events_per_round']} events (the round with the median p99 first):"
    )
    for i, r in enumerate([lat["median_round"], *lat["rounds"]]):
        label = "median" if i == 0 else f"round {i}"
        print(
            f"  {label}: added by ingest p50 {r['p50_added_ms']} ms, p99 {r['p99_added_ms']} ms "
            f"(end-to-end p50/p99 {r['p50_end_to_end_ms']}/{r['p99_end_to_end_ms']}, Kafka alone "
            f"{r['p50_kafka_only_ms']}/{r['p99_kafka_only_ms']}, until the run message is sent "
            f"{r['p50_pickup_ms']}/{r['p99_pickup_ms']})"
        )
    print(f"duplicate run messages: {results['duplicates_in_runs_topic']}")
    print(f"load average during the run: {results['load_average']}")


if __name__ == "__main__":
    asyncio.run(main())
