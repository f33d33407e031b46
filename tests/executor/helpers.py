"""Helpers for executor tests: write a context, load it, evaluate it on a mock run."""

from __future__ import annotations

import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from runstream_common import parsers
from runstream_common.messages import ProcessingStateChanged, ProcessingStatus
from runstream_common.settings import KafkaSettings
from runstream_executor.context import ContextSource, LoadedContext
from runstream_executor.engine import RunTarget, evaluate, load_context, select
from runstream_executor.outcome import Outcome
from runstream_executor.pool import WorkerPool


@dataclass
class Evaluated:
    ctx: LoadedContext
    names: list[str]
    outcomes: dict[str, Outcome]
    context_dir: Path

    def error(self, name: str) -> tuple[str | None, str | None]:
        o = self.outcomes[name]
        return o.error, o.error_cls

    def summary(self, name: str) -> object:
        prepared = self.outcomes[name].prepared
        assert prepared is not None, (name, self.outcomes[name])
        return prepared["summary"]


def write_context(context_dir: Path, code: str) -> ContextSource:
    context_dir.mkdir(parents=True, exist_ok=True)
    path = context_dir / "context.py"
    path.write_text(textwrap.dedent(code))
    return ContextSource.read(path)


def target(proposal_dir: Path, context_dir: Path, run: int = 1, proposal: int = 1234) -> RunTarget:
    return RunTarget(
        proposal,
        run,
        str(proposal_dir),
        str(context_dir),
        str(proposal_dir / "raw" / f"r{run:04d}"),
        str(proposal_dir / "proc" / f"r{run:04d}"),
    )


async def run_context(
    pool: WorkerPool,
    code: str,
    context_dir: Path,
    proposal_dir: Path,
    *,
    run: int = 1,
    trigger: str = "all",
    match: tuple[str, ...] = (),
    names: tuple[str, ...] = (),
    parallel: int = 2,
    mymdc: str | None = None,
) -> Evaluated:
    source = write_context(context_dir, code)
    ctx = await load_context(pool, source)
    selected = select(ctx, trigger, names, match)
    outcomes = await evaluate(
        pool,
        ctx,
        target(proposal_dir, context_dir, run),
        selected,
        parallel=parallel,
        mymdc=mymdc,
    )
    return Evaluated(ctx, selected, outcomes, context_dir)


class Collector:
    """Reads the executor's output topics from the beginning."""

    def __init__(self, kafka: KafkaSettings) -> None:
        topics = kafka.topics
        self.parsers = {
            topics.results: parsers.RESULTS,
            topics.processing: parsers.PROCESSING,
            topics.job_requests: parsers.JOB_REQUESTS,
        }
        self.consumer = AIOKafkaConsumer(
            *self.parsers,
            bootstrap_servers=kafka.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            metadata_max_age_ms=500,
        )
        self.messages: list[tuple[bytes | None, Any]] = []

    async def __aenter__(self) -> Collector:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def until(self, predicate: Any, timeout: float = 120.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while not predicate(self.of(object)):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"not seen in {timeout} s; got {[type(m).__name__ for m in self.of(object)]}"
                )
            batch = await self.consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                for rec in recs:
                    self.messages.append((rec.key, self.parsers[rec.topic].parse(rec.value)))
        return self.of(object)

    def of(self, cls: type) -> list[Any]:
        return [m for _, m in self.messages if isinstance(m, cls)]


def finished(request_id: str, count: int = 1) -> Any:
    def check(messages: list[Any]) -> bool:
        return (
            sum(
                1
                for m in messages
                if isinstance(m, ProcessingStateChanged)
                and m.request_id == request_id
                and m.status in (ProcessingStatus.FINISHED, ProcessingStatus.FAILED)
            )
            >= count
        )

    return check
