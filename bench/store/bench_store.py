"""Store benchmark: scalar results ingested per second, and the table query at 10,000 x 50.

    uv run python bench/store/bench_store.py [--dsn DSN] [--runs 10000] [--variables 50]

Needs the local PostgreSQL (deploy/local/stack.sh up). Creates a scratch
database, prints a report (and --json for scripts), and drops the database.

1. ingest: ResultsReady messages of ``--batch`` small scalar results each go
   through the store's handler (run-file merge + one database transaction +
   feed publish to an in-memory sink); and the database part alone
   (Repository.apply_results). Reported as values per second.
2. table: ``--runs`` x ``--variables`` current values (plus the history rows)
   are loaded with COPY, then ``read_table`` + ``to_dataframe`` is timed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from typing import Any

import asyncpg
from pydantic import BaseModel
from runstream_common.messages import ProposalSettingsSet, ResultsReady, Trigger, VariableResult
from runstream_store.adapters.postgres import Repository, create_pool
from runstream_store.adapters.run_files import RunFiles
from runstream_store.handlers import Handlers
from runstream_store.schema import upgrade
from runstream_store.table import read_table
from runstream_store.values import StoredValue

DEFAULT_DSN = "postgresql://runstream:runstream@127.0.0.1:25432/runstream"


class NullFeed:
    def __init__(self) -> None:
        self.count = 0

    async def update(self, message: BaseModel, key: bytes) -> None:
        self.count += 1

    async def settings(self, message: ProposalSettingsSet) -> None:
        self.count += 1


def _results(batch: int, run: int) -> tuple[VariableResult, ...]:
    return tuple(
        VariableResult(name=f"var_{i:03d}", summary=float(run * 1000 + i), units="mJ")
        for i in range(batch)
    )


def _message(proposal: int, run: int, batch: int, context_dir: str) -> ResultsReady:
    return ResultsReady(
        result_id=uuid.uuid4().hex,
        request_id="bench",
        processing_id="bench",
        proposal=proposal,
        run=run,
        trigger=Trigger.RAW,
        context_hash="bench",
        revision=1,
        context_dir=context_dir,
        fragment=None,
        start_time=1.7e9 + run,
        results=_results(batch, run),
    )


async def bench_ingest(pool: asyncpg.Pool, messages: int, batch: int) -> dict[str, float]:
    repo = Repository(pool)
    with tempfile.TemporaryDirectory() as tmp:
        handlers = Handlers(repo, RunFiles(), NullFeed(), fragment_wait_s=0)
        started, cpu_started = time.perf_counter(), time.process_time()
        for run in range(messages):
            await handlers.results_ready(_message(900, run, batch, tmp))
        full = time.perf_counter() - started
        full_cpu = time.process_time() - cpu_started

    started = time.perf_counter()
    for run in range(messages):
        message = _message(901, run, batch, "/nonexistent")
        values = {
            r.name: StoredValue.from_result(
                r, provenance="context.py", context_hash="bench", revision=1, result_id="x"
            )
            for r in message.results
        }
        await repo.apply_results(message, values, set(values))
    db_only = time.perf_counter() - started
    total = messages * batch
    load = os.getloadavg()[0]
    return {
        "messages": messages,
        "values_per_message": batch,
        "handler_values_per_s": total / full,
        "handler_ms_per_message": full / messages * 1000,
        "handler_client_cpu_ms_per_message": full_cpu / messages * 1000,
        "db_values_per_s": total / db_only,
        "db_ms_per_message": db_only / messages * 1000,
        "load_average_1min": load,
    }


async def fill_table(pool: asyncpg.Pool, proposal: int, runs: int, variables: int) -> float:
    started = time.perf_counter()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO proposals (proposal, context_dir) VALUES ($1, '/tmp') ON CONFLICT DO NOTHING",
            proposal,
        )
        await conn.copy_records_to_table(
            "runs",
            columns=["proposal", "run", "start_time", "added_at", "announced"],
            records=[(proposal, r, 1.7e9 + r, 1.7e9 + r, True) for r in range(runs)],
        )
        await conn.copy_records_to_table(
            "variables",
            columns=["proposal", "name", "title", "units"],
            records=[(proposal, f"var_{v:03d}", f"Variable {v}", "mJ") for v in range(variables)],
        )
        kinds = ("float", "int", "str", "bool", "blob")

        def record(r: int, v: int) -> tuple[Any, ...]:
            kind = kinds[v % len(kinds)]
            return (
                proposal, r, f"var_{v:03d}", kind,
                r * v if kind == "int" else None,
                r * 0.5 + v if kind == "float" else None,
                f"text {r}" if kind == "str" else None,
                (r + v) % 2 == 0 if kind == "bool" else None,
                "trendline" if kind == "blob" else None,
                "context.py", 1, "bench",
            )  # fmt: skip

        records = [record(r, v) for r in range(runs) for v in range(variables)]
        columns = [
            "proposal", "run", "name", "kind", "value_int", "value_float", "value_text",
            "value_bool", "summary_type", "provenance", "revision", "result_id",
        ]  # fmt: skip
        await conn.copy_records_to_table("run_values", columns=columns, records=records)
        await conn.copy_records_to_table("run_value_history", columns=columns, records=records)
        # what the store's writes keep in step: the per-run JSON cells
        await conn.execute(
            "UPDATE runs SET cells = runstream_run_cells(proposal, run) WHERE proposal = $1",
            proposal,
        )
        await conn.execute("ANALYZE")
    return time.perf_counter() - started


async def bench_table(pool: asyncpg.Pool, proposal: int, repeats: int) -> dict[str, float]:
    queries: list[float] = []
    frames: list[float] = []
    cpu: list[float] = []
    shape: tuple[int, int] = (0, 0)
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        table = await read_table(pool, proposal)
        queried = time.perf_counter()
        frame = table.to_dataframe()
        done = time.perf_counter()
        cpu.append(time.process_time() - cpu_started)
        queries.append(queried - started)
        frames.append(done - started)
        shape = frame.shape
    return {
        "rows": shape[0],
        "columns": shape[1],
        "query_s_median": statistics.median(queries),
        "query_plus_dataframe_s_median": statistics.median(frames),
        "query_plus_dataframe_s_max": max(frames),
        "client_cpu_s_median": statistics.median(cpu),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    name = f"bench_store_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    base = args.dsn.rpartition("/")[0]
    pool = await create_pool(f"{base}/{name}", min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            await upgrade(conn)
        report: dict[str, Any] = {}
        report["ingest"] = await bench_ingest(pool, args.messages, args.batch)
        report["fill_s"] = await fill_table(pool, 7000, args.runs, args.variables)
        report["table"] = await bench_table(pool, 7000, args.repeats)
        return report
    finally:
        await pool.close()
        admin = await asyncpg.connect(args.dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--variables", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    result = asyncio.run(main(arguments))
    if arguments.json:
        print(json.dumps(result, indent=1))
    else:
        ingest, table = result["ingest"], result["table"]
        print(
            f"ingest, full handler (run file + DB), {ingest['values_per_message']} scalars/message: "
            f"{ingest['handler_values_per_s']:.0f} values/s "
            f"({ingest['handler_ms_per_message']:.1f} ms/message, "
            f"{ingest['handler_client_cpu_ms_per_message']:.1f} ms CPU in this process)"
        )
        print(
            f"ingest, database only: {ingest['db_values_per_s']:.0f} values/s "
            f"({ingest['db_ms_per_message']:.1f} ms/message)"
        )
        print(
            f"table {table['rows']} runs x {table['columns']} columns: query "
            f"{table['query_s_median']:.3f} s, query + DataFrame {table['query_plus_dataframe_s_median']:.3f} s "
            f"(median of {arguments.repeats}, max {table['query_plus_dataframe_s_max']:.3f} s; "
            f"client CPU {table['client_cpu_s_median']:.3f} s)"
        )
        print(f"machine load average (1 min) during the run: {ingest['load_average_1min']:.1f}")
