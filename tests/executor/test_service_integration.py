"""The executor service and the cluster job entry point against the real broker."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from runstream_common.kafka import make_broker, publish
from runstream_common.messages import (
    JobRequested,
    ProcessingStateChanged,
    ProcessingStatus,
    ProposalSettingsSet,
    ResultsReady,
    RunRequested,
    Trigger,
    VariablesDefined,
)
from runstream_common.settings import KafkaSettings
from runstream_common.topics import proposal_key, run_key
from runstream_executor.app import build_app
from runstream_executor.settings import Settings
from support.kafka import committed_offsets, wait_for
from support.registry import register_proposal

from .helpers import Collector, finished, write_context

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

CONTEXT = """
from damnit_ctx import Variable
import os
import numpy as np

@Variable(title="Base")
def base(run):
    return np.arange(5.0)

@Variable(title="Interpreter")
def interpreter(run):
    return os.environ.get("RS_TEST_INTERPRETER", "default")

@Variable(title="Broken")
def broken(run):
    raise ValueError("nope")

@Variable(title="Heavy", cluster=True)
def heavy(run, b: "var#base"):
    return float(b.sum())
"""


def executor_settings(kafka: KafkaSettings) -> Settings:
    return Settings(
        kafka=kafka, workers=1, parallel_variables=1, preload="numpy,extra_data", progress_after_s=0
    )


async def test_run_request_to_results_and_cluster_job(
    kafka_settings: KafkaSettings, tmp_path: Path, mock_proposal: Path
) -> None:
    ctx_dir = tmp_path / "amore"
    write_context(ctx_dir, CONTEXT)
    await register_proposal(kafka_settings, 1234, ctx_dir, mock_proposal)
    settings = executor_settings(kafka_settings)
    app = build_app(settings).app
    producer = make_broker(kafka_settings, client_id="test-producer")
    await app.start()
    await producer.connect()
    try:
        async with Collector(kafka_settings) as out:
            req = RunRequested(
                request_id="r-1",
                proposal=1234,
                run=1,
                trigger=Trigger.RAW,
                context_dir=str(ctx_dir),
                proposal_dir=str(mock_proposal),
            )
            await publish(producer, kafka_settings.topics.runs, req, key=run_key(1234, 1))
            await out.until(finished("r-1"))
            (defined,) = out.of(VariablesDefined)
            assert {v.name for v in defined.variables} == {"base", "interpreter", "broken", "heavy"}
            (results,) = out.of(ResultsReady)
            by_name = {r.name: r for r in results.results}
            assert set(by_name) == {"base", "interpreter", "broken"}
            assert by_name["interpreter"].summary == "default"
            assert by_name["broken"].error_cls == "ValueError"
            assert results.fragment
            assert Path(results.fragment).is_file()  # noqa: ASYNC240
            (job,) = out.of(JobRequested)
            assert job.selection.names == ("heavy",)
            assert job.job_request_id == "r-1:cluster"
            keys = {
                k for k, m in out.messages if isinstance(m, ProcessingStateChanged | ResultsReady)
            }
            assert keys == {run_key(1234, 1)}
            # The run message is committed (after the handler returned) under this
            # installation's own group.
            assert settings.consumer_group == f"{kafka_settings.topic_prefix}-executor"
            offsets = await wait_for(
                lambda: committed_offsets(kafka_settings, settings.consumer_group), timeout=30
            )
            assert sum(v for (t, _), v in offsets.items() if t == kafka_settings.topics.runs) == 1
            statuses = [m.status for m in out.of(ProcessingStateChanged)]
            assert statuses[0] is ProcessingStatus.QUEUED
            assert statuses[-1] is ProcessingStatus.FINISHED
            assert ProcessingStatus.VARIABLE_FAILED in statuses

            # The Slurm job entry point, as the slurm-gateway runs it.
            env = {
                **os.environ,
                "RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
                "RUNSTREAM_KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
                "RUNSTREAM_EXECUTOR_PRELOAD": "numpy,extra_data",
                "RUNSTREAM_EXECUTOR_WORKERS": "1",
                "SLURM_JOB_ID": "4242",
            }
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "runstream_executor.job",
                "--proposal",
                "1234",
                "--run",
                "1",
                "--context-dir",
                job.context_dir,
                "--proposal-dir",
                job.proposal_dir,
                "--trigger",
                job.trigger.value,
                "--request-id",
                job.request_id,
                "--job-request-id",
                job.job_request_id,
                "--var",
                "heavy",
                env=env,
                stderr=asyncio.subprocess.PIPE,
            )
            _, stderr = await asyncio.wait_for(proc.communicate(), 180)
            assert proc.returncode == 0, stderr.decode()[-3000:]
            # its results and its final state travel on two topics: wait for both
            await out.until(
                lambda ms: (
                    finished("r-1", 2)(ms)
                    and sum(isinstance(m, ResultsReady) and m.request_id == "r-1" for m in ms) == 2
                )
            )
            job_results = out.of(ResultsReady)[-1]
            assert [(r.name, r.summary) for r in job_results.results] == [("heavy", 10.0)]
            job_states = [m for m in out.of(ProcessingStateChanged) if m.slurm_job_id == 4242]
            assert job_states
            assert job_states[-1].status is ProcessingStatus.FINISHED
    finally:
        await producer.stop()
        await app.stop()


async def test_context_python_from_proposal_settings(
    kafka_settings: KafkaSettings, tmp_path: Path, mock_proposal: Path
) -> None:
    """A proposal's context_python runs the context in that interpreter instead of ours."""
    ctx_dir = tmp_path / "amore"
    write_context(ctx_dir, CONTEXT.replace("import os", "import os\nimport only_in_that_env"))
    extra = tmp_path / "other-env-site"
    extra.mkdir()
    (extra / "only_in_that_env.py").write_text("VALUE = 1\n")
    interpreter = tmp_path / "other-python"
    interpreter.write_text(
        "#!/bin/sh\n"
        "export RS_TEST_INTERPRETER=other\n"
        f'export PYTHONPATH="$PYTHONPATH:{extra}"\n'
        f'exec {sys.executable} "$@"\n'
    )
    interpreter.chmod(interpreter.stat().st_mode | stat.S_IEXEC)
    await register_proposal(kafka_settings, 1234, ctx_dir, mock_proposal)

    settings = executor_settings(kafka_settings)
    service = build_app(settings)
    app = service.app
    producer = make_broker(kafka_settings, client_id="test-producer")
    await app.start()
    await producer.connect()
    topics = kafka_settings.topics
    try:
        async with Collector(kafka_settings) as out:

            def request(rid: str) -> RunRequested:
                return RunRequested(
                    request_id=rid,
                    proposal=1234,
                    run=2,
                    trigger=Trigger.RAW,
                    context_dir=str(ctx_dir),
                    proposal_dir=str(mock_proposal),
                )

            # Our interpreter lacks the package: the pass fails with the load error.
            await publish(producer, topics.runs, request("before"), key=run_key(1234, 2))
            await out.until(finished("before"))
            failed = out.of(ProcessingStateChanged)[-1]
            assert failed.status is ProcessingStatus.FAILED
            assert "No module named 'only_in_that_env'" in (failed.reason or "")

            await publish(
                producer,
                topics.proposal_settings,
                ProposalSettingsSet(proposal=1234, settings={"context_python": str(interpreter)}),
                key=proposal_key(1234),
            )
            processor = service.runtime.processor
            deadline = time.monotonic() + 60
            while processor.context_python(1234) is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
            assert processor.context_python(1234) == str(interpreter)
            # the settings are read without a consumer group: none is left behind per process
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap_servers)
            await admin.start()
            try:
                groups = {g[0] for g in await admin.list_consumer_groups()}
            finally:
                await admin.close()
            assert not [g for g in groups if g.startswith(settings.consumer_group + "-settings")]

            await publish(producer, topics.runs, request("after"), key=run_key(1234, 2))
            await out.until(finished("after"))
            (results,) = out.of(ResultsReady)
            assert {r.name: r.summary for r in results.results}["interpreter"] == "other"
    finally:
        await producer.stop()
        await app.stop()
