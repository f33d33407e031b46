"""Two executors share the work; one trace follows each run across the services."""

from __future__ import annotations

import os
import re

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from runstream_common.settings import TelemetrySettings
from runstream_common.telemetry import setup_telemetry

from .conftest import ALL_NAMES, E2E, RAW_NAMES
from .helpers import wait_until
from .test_pipeline import check_values

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(600)
async def test_two_executors_share_the_partitions_and_agree_with_one(e2e: E2E) -> None:
    runs = range(1, 13)
    e2e.make_runs(runs)
    await e2e.system.start()
    await e2e.system.start("executor", instance="executor-2")
    e2e.send_events(runs)

    async def missing() -> list[str]:
        values = await e2e.values()
        return [f"{r}:{n}" for r in runs for n in RAW_NAMES if (r, n) not in values]

    await wait_until(
        missing, timeout=300, what="raw values with two executors", logs=e2e.system.logs
    )
    e2e.send_events(runs, event="run_corrections_complete")

    async def proc_missing() -> list[str]:
        values = await e2e.values()
        return [str(r) for r in runs if (r, "proc_sum") not in values]

    await wait_until(proc_missing, timeout=300, what="proc values with two executors")
    values = await e2e.values()
    check_values(values, runs, ALL_NAMES)  # the same values one executor computes (test_pipeline)

    # The two instances split the partitions of the runs topic between them ...
    runs_topic = e2e.kafka.topics.runs
    assigned = {}
    for key in ("executor", "executor-2"):
        text = e2e.system.procs[key].log.read_text(errors="replace")
        lines = [
            ln
            for ln in text.splitlines()
            if "assigned to partitions" in ln and f"'{runs_topic}'" in ln
        ]
        assert lines, (key, text[-2000:])
        assigned[key] = {
            int(p)
            for p in re.findall(rf"topic='{re.escape(runs_topic)}', partition=(\d+)", lines[-1])
        }
    assert all(assigned.values()), assigned
    assert assigned["executor"].isdisjoint(assigned["executor-2"]), assigned
    # ... and each of them processed run messages.
    received = {
        key: e2e.system.procs[key].log.read_text(errors="replace").count(": Received")
        for key in assigned
    }
    assert all(n > 0 for n in received.values()), received
    history = await e2e.history_counts()
    assert {history[(r, n)] for r in runs for n in ALL_NAMES} == {1}


@pytest.mark.timeout(600)
async def test_one_trace_per_run_from_facility_event_to_database_commit(e2e: E2E) -> None:
    """The services run in this process with one in-memory span exporter."""
    from runstream_executor.app import build_app as build_executor
    from runstream_executor.settings import Settings as ExecutorSettings
    from runstream_ingest.app import build_app as build_ingest
    from runstream_ingest.settings import Settings as IngestSettings
    from runstream_slurm_gateway.app import build_app as build_gateway
    from runstream_slurm_gateway.settings import Settings as GatewaySettings
    from runstream_store.app import build_app as build_store
    from runstream_store.settings import Settings as StoreSettings

    runs = range(1, 4)
    e2e.make_runs(runs)
    exporter = InMemorySpanExporter()
    saved = dict(os.environ)
    os.environ.update(e2e.system.env)
    try:
        apps = {}
        for name, build, settings_cls in (
            ("store", build_store, StoreSettings),
            ("executor", build_executor, ExecutorSettings),
            ("ingest", build_ingest, IngestSettings),
            ("slurm-gateway", build_gateway, GatewaySettings),
        ):
            telemetry = setup_telemetry(
                name, TelemetrySettings(), span_processors=(SimpleSpanProcessor(exporter),)
            )
            apps[name] = build(settings_cls(), telemetry=telemetry).app
    finally:
        os.environ.clear()
        os.environ.update(saved)
    for app in apps.values():
        await app.start()
    try:
        e2e.send_events(runs)

        async def missing() -> list[str]:
            values = await e2e.values()
            return [f"{r}:{n}" for r in runs for n in RAW_NAMES if (r, n) not in values]

        await wait_until(missing, timeout=300, what="values of the traced runs")
    finally:
        for app in reversed(list(apps.values())):
            await app.stop()

    spans = exporter.get_finished_spans()
    by_trace: dict[int, list] = {}
    for span in spans:
        by_trace.setdefault(span.context.trace_id, []).append(span)

    def service(span: object) -> str:
        return str(span.resource.attributes["service.name"])  # type: ignore[attr-defined]

    def key_of(span: object) -> str:
        raw = (span.attributes or {}).get("messaging.kafka.message.key", "")  # type: ignore[attr-defined]
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    for run in runs:
        key = f"4242/{run}"
        # The store's commits of this run's results (the executor's, and the cluster job's
        # that went through the slurm-gateway and a local batch job) ...
        commits = [
            s
            for s in spans
            if service(s) == "runstream-store"
            and s.name.endswith(".results process")
            and key_of(s) == key
        ]
        assert len(commits) >= 2, (run, sorted({(service(s), s.name) for s in spans}))
        traces = {s.context.trace_id for s in commits}
        assert len(traces) == 1, (run, len(traces))
        trace = by_trace[traces.pop()]
        # ... is in the trace that ingest started when it consumed the facility event.
        roots = [s for s in trace if s.parent is None]
        assert len(roots) == 1, [(service(s), s.name) for s in roots]
        assert service(roots[0]) == "runstream-ingest", (service(roots[0]), roots[0].name)
        summary = sorted({(service(s), s.name) for s in trace})
        assert {"runstream-ingest", "runstream-executor", "runstream-store"} <= {
            svc for svc, _ in summary
        }, summary
        assert any(
            svc == "runstream-executor" and name.endswith(".runs process") for svc, name in summary
        ), summary
