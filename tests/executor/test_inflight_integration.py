"""Several runs in flight, against the real broker.

Nothing here waits for time to pass: variables meet at files (a rendezvous that
only succeeds if two runs really run at once) and the tests read what happened
from the messages' timestamps and the committed offsets.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from runstream_common import parsers
from runstream_common.admin import ensure_topics
from runstream_common.messages import (
    ProcessingStateChanged,
    ProcessingStatus,
    ResultsReady,
    RunRequested,
    Trigger,
)
from runstream_common.service import Service
from runstream_common.settings import KafkaSettings
from runstream_common.topics import run_key
from runstream_executor.app import ExecutorRuntime, build_app
from runstream_executor.memory import tree_pss_mb
from runstream_executor.settings import Settings
from support.database import upgrade_async
from support.kafka import committed_offsets, wait_for
from support.registry import register_proposal

from .conftest import make_mock_proposal
from .helpers import Collector, finished, write_context

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def settings_for(kafka: KafkaSettings, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "kafka": kafka,
        "workers": 2,
        "runs_in_flight": 4,
        "parallel_variables": 1,
        "preload": "numpy,extra_data",
        "variable_timeout_s": 120,
        "progress_after_s": 0,  # every state, however short the pass: the tests read them
    }
    return Settings(**{**values, **overrides})


class Runs:
    """Publishes run requests straight to the runs topic (on a chosen partition if asked)."""

    def __init__(self, kafka: KafkaSettings, context_dir: Path, proposal_dir: Path) -> None:
        self.kafka = kafka
        self.context_dir = context_dir
        self.proposal_dir = proposal_dir
        self.producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")

    async def send(
        self, run: int, *, request_id: str | None = None, partition: int | None = None
    ) -> str:
        rid = request_id or f"req-{run}"
        message = RunRequested(
            request_id=rid,
            proposal=1234,
            run=run,
            trigger=Trigger.RAW,
            context_dir=str(self.context_dir),
            proposal_dir=str(self.proposal_dir),
        )
        await self.producer.send_and_wait(
            self.kafka.topics.runs,
            parsers.encode(message),
            key=run_key(1234, run),
            partition=partition,
        )
        return rid


@pytest_asyncio.fixture(loop_scope="session")
async def started(kafka_settings: KafkaSettings) -> AsyncIterator[Any]:
    """Starts an executor app built by the test; stops everything afterwards."""
    services: list[Service[ExecutorRuntime]] = []
    producers: list[AIOKafkaProducer] = []

    async def start(settings: Settings, runs: Runs) -> Any:
        await ensure_topics(kafka_settings, [kafka_settings.topics.runs])
        await register_proposal(kafka_settings, 1234, runs.context_dir, runs.proposal_dir)
        service = build_app(settings)
        await service.app.start()
        services.append(service)
        await runs.producer.start()
        producers.append(runs.producer)
        return service

    yield start
    for producer in producers:
        await producer.stop()
    for service in services:
        await service.app.stop()


def states(out: Collector, request_id: str) -> dict[ProcessingStatus, Any]:
    """First time of each processing status of one request."""
    seen: dict[ProcessingStatus, Any] = {}
    for m in out.of(ProcessingStateChanged):
        if m.request_id == request_id:
            seen.setdefault(m.status, m.time)
    return seen


def results_of(out: Collector, request_id: str) -> dict[str, Any]:
    (message,) = [m for m in out.of(ResultsReady) if m.request_id == request_id]
    return {r.name: r for r in message.results}


MEET = """
from damnit_ctx import Variable
import os, time

GATES = {gates!r}

@Variable(title="Meet")
def meet(run, number: "meta#run_number"):
    # Succeeds only if the partner run is being evaluated at the same time.
    open(os.path.join(GATES, f"arrived-{{number}}"), "w").close()
    partner = os.path.join(GATES, f"arrived-{{3 - number}}")
    deadline = time.time() + 60
    while not os.path.exists(partner):
        if time.time() > deadline:
            return "alone"
        time.sleep(0.005)
    return "met"
"""


async def test_two_runs_are_evaluated_at_the_same_time(
    kafka_settings: KafkaSettings, tmp_path: Path, mock_proposal: Path, started: Any
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    ctx_dir = tmp_path / "ctx"
    write_context(ctx_dir, MEET.format(gates=str(gates)))
    runs = Runs(kafka_settings, ctx_dir, mock_proposal)
    await started(settings_for(kafka_settings), runs)
    async with Collector(kafka_settings) as out:
        first, second = await runs.send(1), await runs.send(2)
        await out.until(lambda m: finished(first)(m) and finished(second)(m))
        # The rendezvous worked: each run saw the other one arrive while it waited ...
        assert results_of(out, first)["meet"].summary == "met"
        assert results_of(out, second)["meet"].summary == "met"
        # ... and the executor's own timestamps show the two passes overlapping.
        a, b = states(out, first), states(out, second)
        assert a[ProcessingStatus.RUNNING] < b[ProcessingStatus.FINISHED]
        assert b[ProcessingStatus.RUNNING] < a[ProcessingStatus.FINISHED]


WIDE = """
from damnit_ctx import Variable
import numpy as np

@Variable(title="A")
def a(run, number: "meta#run_number"):
    return np.full((16, 16), float(number))

@Variable(title="B")
def b(run, number: "meta#run_number"):
    return number * 2

@Variable(title="C")
def c(run, number: "meta#run_number"):
    return np.arange(number + 3.0)

@Variable(title="D")
def d(run, x: "var#a", y: "var#b"):
    return float(x.sum()) + y
"""


async def test_more_runs_than_workers_with_parallel_variables_all_finish(
    kafka_settings: KafkaSettings, tmp_path: Path, started: Any
) -> None:
    """Passes that could use a second worker never wait for one while holding their own."""
    ctx_dir = tmp_path / "ctx"
    write_context(ctx_dir, WIDE)
    proposal_dir = await asyncio.to_thread(make_mock_proposal, tmp_path / "data", 8)
    runs = Runs(kafka_settings, ctx_dir, proposal_dir)
    await started(settings_for(kafka_settings, parallel_variables=2, runs_in_flight=6), runs)
    async with Collector(kafka_settings) as out:
        ids = [await runs.send(run) for run in range(1, 9)]
        await out.until(lambda m: all(finished(r)(m) for r in ids), timeout=120)
    import h5py
    import numpy as np

    for run, rid in enumerate(ids, start=1):
        got = results_of(out, rid)
        assert got["b"].summary == 2 * run
        assert got["d"].summary == 256.0 * run + 2 * run
        (message,) = [m for m in out.of(ResultsReady) if m.request_id == rid]
        assert message.fragment is not None
        with h5py.File(message.fragment, "r") as f:  # written once, by the pass's worker
            np.testing.assert_array_equal(f["a/data"][()], np.full((16, 16), float(run)))
            np.testing.assert_array_equal(f["c/data"][()], np.arange(run + 3.0))


GATED = """
from damnit_ctx import Variable
import os, time

GO = {go!r}

@Variable(title="Gated")
def gated(run, number: "meta#run_number"):
    if number == 1:  # run 1 is slow: it waits until the test opens the gate
        deadline = time.time() + 120
        while not os.path.exists(GO) and time.time() < deadline:
            time.sleep(0.01)
    return number
"""


async def test_a_slow_run_holds_back_only_its_own_partition(
    kafka_settings: KafkaSettings, tmp_path: Path, mock_proposal: Path, started: Any
) -> None:
    go = tmp_path / "go"
    ctx_dir = tmp_path / "ctx"
    write_context(ctx_dir, GATED.format(go=str(go)))
    settings = settings_for(kafka_settings)
    runs = Runs(kafka_settings, ctx_dir, mock_proposal)
    await started(settings, runs)
    topic = kafka_settings.topics.runs
    async with Collector(kafka_settings) as out:
        slow = await runs.send(1, partition=0)  # offset 0 of partition 0
        later = await runs.send(2, partition=0)  # offset 1 of partition 0: done long before
        others = [await runs.send(3, partition=1), await runs.send(4, partition=2)]
        await out.until(lambda m: all(finished(r)(m) for r in (later, *others)))
        offsets = await wait_for(
            lambda: _committed(kafka_settings, settings, {(topic, 1): 1, (topic, 2): 1}),
            timeout=30,
        )
        # The other partitions are committed; partition 0 is not, not even up to the
        # later run that is done: the slow run before it is not durable yet.
        assert offsets.get((topic, 0), 0) == 0
        assert not finished(slow)(out.of(object))
        go.touch()
        await out.until(finished(slow))
        await wait_for(lambda: _committed(kafka_settings, settings, {(topic, 0): 2}), timeout=30)
        assert results_of(out, slow)["gated"].summary == 1


async def _committed(
    kafka: KafkaSettings, settings: Settings, wanted: dict[tuple[str, int], int]
) -> dict[tuple[str, int], int] | None:
    offsets = await committed_offsets(kafka, settings.consumer_group)
    return offsets if all(offsets.get(k) == v for k, v in wanted.items()) else None


HOG = """
from damnit_ctx import Variable
import os, time
import numpy as np

GATES = {gates!r}

@Variable(title="Hog")
def hog(run, number: "meta#run_number"):
    if number != 1:
        return 0
    with open(os.path.join(GATES, "hog"), "w") as f:
        f.write(str(os.getpid()))
    blocks = []
    for _ in range(40):  # up to 4 GB, 100 MB at a time, until the budget stops it
        blocks.append(np.ones(100 * 2**20 // 8))
        time.sleep(0.02)
    return len(blocks)

@Variable(title="Small")
def small(run, number: "meta#run_number"):
    return number * 10

@Variable(title="Bystander")
def bystander(run, number: "meta#run_number"):
    if number != 2:
        return "-"
    # In flight beside the hog: waits until the hog's worker is gone, then goes on.
    path = os.path.join(GATES, "hog")
    deadline = time.time() + 90
    while time.time() < deadline:
        if os.path.exists(path) and os.path.getsize(path):
            pid = int(open(path).read())
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return "survived"
        time.sleep(0.01)
    return "timed out"
"""


async def test_the_memory_budget_stops_a_runaway_variable_and_nothing_else(
    kafka_settings: KafkaSettings, tmp_path: Path, mock_proposal: Path, started: Any
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    ctx_dir = tmp_path / "ctx"
    write_context(ctx_dir, HOG.format(gates=str(gates)))
    runs = Runs(kafka_settings, ctx_dir, mock_proposal)
    # The budget covers this process tree (the test process is the service here): what it
    # uses now with warm workers, plus 600 MiB. The per-worker limit is higher, so only
    # the budget can stop the hog.
    probe = settings_for(kafka_settings, memory_budget_mb=0)
    service = await started(probe, runs)
    budget = int(await asyncio.to_thread(tree_pss_mb, os.getpid())) + 600
    service.runtime.processor.pools.guard.budget_mb = budget
    async with Collector(kafka_settings) as out:
        hog_run, other_run = await runs.send(1), await runs.send(2)
        await out.until(lambda m: finished(hog_run)(m) and finished(other_run)(m), timeout=180)
    hog = results_of(out, hog_run)
    assert hog["hog"].error_cls == "MemoryLimitExceeded", hog["hog"]
    assert "memory budget" in (hog["hog"].error or "")
    assert hog["small"].summary == 10  # the rest of the hog's run is saved
    other = results_of(out, other_run)
    assert other["bystander"].summary == "survived"  # in flight during the kill, unharmed
    assert other["small"].summary == 20
    assert other["hog"].summary == 0
    assert service.runtime.processor.pools.guard.stopped_by_budget == 1


CRASH = """
from damnit_ctx import Variable
import os, time
import numpy as np

GATES = {gates!r}

@Variable(title="Gated")
def gated(run, number: "meta#run_number"):
    open(os.path.join(GATES, f"started-{{number}}"), "w").close()
    if number in (4, 6):  # these runs are still in flight when the executor is killed
        deadline = time.time() + 180
        while not os.path.exists(os.path.join(GATES, "go")) and time.time() < deadline:
            time.sleep(0.01)
    return number

@Variable(title="Image")
def image(run, number: "meta#run_number"):
    return np.full((32, 32), float(number))

@Variable(title="Label")
def label(run, number: "meta#run_number"):
    return f"run {{number}}"
"""
CRASH_NAMES = ("gated", "image", "label")


async def _db_rows(dsn: str, query: str) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()


@pytest.mark.timeout(600)
async def test_kill_9_with_runs_in_flight_loses_and_duplicates_nothing(
    kafka_settings: KafkaSettings, pg_dsn: str, tmp_path: Path
) -> None:
    """The executor and the store as processes; the executor is SIGKILLed (workers too)."""

    from support.services import System

    await upgrade_async(pg_dsn)
    gates = tmp_path / "gates"
    gates.mkdir()
    ctx_dir = tmp_path / "ctx"
    write_context(ctx_dir, CRASH.format(gates=str(gates)))
    proposal_dir = await asyncio.to_thread(make_mock_proposal, tmp_path / "data", 8)
    prefix = kafka_settings.topic_prefix
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env.update(
        {
            "RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
            "RUNSTREAM_KAFKA_TOPIC_PREFIX": prefix,
            "RUNSTREAM_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "RUNSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
            "RUNSTREAM_POSTGRES_DSN": pg_dsn,
            "RUNSTREAM_STORE_GROUP_ID": f"{prefix}-store",
            "RUNSTREAM_EXECUTOR_WORKERS": "3",
            "RUNSTREAM_EXECUTOR_RUNS_IN_FLIGHT": "4",
            "RUNSTREAM_EXECUTOR_PARALLEL_VARIABLES": "1",
            "RUNSTREAM_EXECUTOR_PRELOAD": "numpy,extra_data",
            "PYTHONUNBUFFERED": "1",
        }
    )
    (tmp_path / "logs").mkdir()
    system = System(env=env, log_dir=tmp_path / "logs")
    await ensure_topics(kafka_settings, [kafka_settings.topics.runs])
    runs = Runs(kafka_settings, ctx_dir, proposal_dir)
    await register_proposal(kafka_settings, 1234, ctx_dir, proposal_dir)
    await runs.producer.start()
    query = "SELECT run, name, value_int, value_text FROM run_values WHERE proposal = 1234"
    try:
        await system.start("store", "executor")

        async def stored(*wanted: int) -> bool:
            done = {(r["run"], r["name"]) for r in await _db_rows(pg_dsn, query)}
            return all((r, n) in done for r in wanted for n in CRASH_NAMES)

        for run in (1, 2, 3):
            await runs.send(run)
        await wait_for(lambda: stored(1, 2, 3), timeout=180)
        for run in range(4, 9):
            await runs.send(run)

        async def two_in_flight_three_done() -> bool:
            in_flight = all((gates / f"started-{r}").exists() for r in (4, 6))
            return in_flight and await stored(5, 7, 8)

        # Runs 4 and 6 hold two workers; 5, 7 and 8 are done on the third, though some of
        # them may sit behind 4 or 6 in their partition and so are not committed.
        await wait_for(two_in_flight_three_done, timeout=180)
        system.kill("executor")  # SIGKILL of its process group: service, zygote and workers
        (gates / "go").touch()
        await system.restart("executor")

        async def everything() -> list[Any] | None:
            rows = await _db_rows(pg_dsn, query)
            return rows if len(rows) == 8 * len(CRASH_NAMES) else None

        rows = await wait_for(everything, timeout=240)
    except BaseException:
        print(system.logs())
        raise
    finally:
        await runs.producer.stop()
        system.stop()
    values = {(r["run"], r["name"]): (r["value_int"], r["value_text"]) for r in rows}
    for run in range(1, 9):  # nothing lost ...
        assert values[(run, "gated")][0] == run
        assert values[(run, "label")][1] == f"run {run}"
        assert (run, "image") in values
    history = await _db_rows(
        pg_dsn,
        "SELECT run, name, count(*) AS n FROM run_value_history WHERE proposal = 1234 "
        "GROUP BY run, name",
    )
    assert {(r["run"], r["name"]): r["n"] for r in history} == {  # ... and nothing twice
        (run, name): 1 for run in range(1, 9) for name in CRASH_NAMES
    }
    group = f"{prefix}-executor"
    offsets = await committed_offsets(kafka_settings, group)
    assert sum(v for (t, _), v in offsets.items() if t == kafka_settings.topics.runs) == 8
