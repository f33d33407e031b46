"""Where the wall-clock time of one run goes, from the broker timestamps of its messages.

Every hop publishes something, so the path of a run can be read back from the
topics without touching the services: facility event -> ``run_requested``
(ingest) -> ``results_ready`` (the executor took it, read the context, evaluated,
wrote the fragment) -> ``values_updated`` (store merged the fragment, committed to
PostgreSQL and published). A pass longer than the executor's ``progress_after_s``
also publishes ``processing: queued``/``running``; those stages are shown when
they were published (a short pass publishes only ``finished``).
"""

from __future__ import annotations

import statistics
from typing import Any

from aiokafka import AIOKafkaConsumer
from runstream_common import parsers
from runstream_common.messages import (
    ProcessingStateChanged,
    ProcessingStatus,
    ResultsReady,
    RunRequested,
    ValuesUpdated,
)
from runstream_common.settings import KafkaSettings

STAGES = (
    ("ingest: event -> run_requested", "event", "requested"),
    ("executor: run_requested -> results_ready", "requested", "results"),
    ("executor: run_requested -> queued", "requested", "queued"),
    ("executor: queued -> running (context)", "queued", "running"),
    ("executor: running -> results_ready", "running", "results"),
    ("store: results_ready -> values_updated", "results", "values"),
)


async def read_topics(kafka: KafkaSettings, topics: dict[str, Any]) -> list[tuple[str, Any, float]]:
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[tuple[str, Any, float]] = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=1500)
            if not batch:
                return out
            for records in batch.values():
                for r in records:
                    out.append((r.topic, topics[r.topic].parse(r.value), r.timestamp / 1000))
    finally:
        await consumer.stop()


def _mark(marks: dict[str, float], name: str, at: float) -> None:
    marks.setdefault(name, at)  # the first time each point is reached


async def stages(kafka: KafkaSettings, proposal: int, sent: dict[int, float]) -> dict[str, float]:
    """Median seconds of each stage over the runs in ``sent`` (run -> event time)."""
    t = kafka.topics
    topics = {
        t.runs: parsers.RUNS,
        t.processing: parsers.PROCESSING,
        t.results: parsers.RESULTS,
        t.updates: parsers.UPDATES,
    }
    marks: dict[int, dict[str, float]] = {run: {"event": at} for run, at in sent.items()}
    for _, msg, at in sorted(await read_topics(kafka, topics), key=lambda x: x[2]):
        run_marks = marks.get(getattr(msg, "run", -1))
        if run_marks is None or getattr(msg, "proposal", None) != proposal:
            continue
        if isinstance(msg, RunRequested):
            _mark(run_marks, "requested", at)
        elif isinstance(msg, ProcessingStateChanged) and msg.status in (
            ProcessingStatus.QUEUED,
            ProcessingStatus.RUNNING,
        ):
            _mark(run_marks, msg.status.value, at)
        elif isinstance(msg, ResultsReady):
            _mark(run_marks, "results", at)
        elif isinstance(msg, ValuesUpdated):
            run_marks["values"] = at  # the last one completes the run
    out = {}
    for label, start, end in STAGES:
        spans = [m[end] - m[start] for m in marks.values() if start in m and end in m]
        if spans:
            out[label] = statistics.median(spans)
    return out
