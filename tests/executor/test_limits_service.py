"""The executor service on the real broker: a 5 GB result and the secrets of its
environment (issues #16, #17)."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest
from runstream_common.kafka import make_broker, publish
from runstream_common.messages import ResultsReady, RunRequested, Trigger
from runstream_common.settings import KafkaSettings
from runstream_common.topics import run_key
from runstream_executor.app import build_app
from runstream_executor.settings import Settings
from support.registry import register_proposal

from .helpers import Collector, finished, write_context

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

CONTEXT = """
from damnit_ctx import Variable
import os
import numpy as np

@Variable(title="Huge")
def huge(run):
    return np.zeros(5 * 2**30, dtype=np.uint8)  # 5 GB, never touched

@Variable(title="Base")
def base(run):
    return np.arange(5.0)

@Variable(title="Secrets")
def secrets(run):
    return repr(sorted(k for k, v in os.environ.items() if "s3cr3t" in v))
"""


async def test_a_5gb_result_is_an_error_value_and_the_executor_goes_on(
    kafka_settings: KafkaSettings,
    tmp_path: Path,
    mock_proposal: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(
        kafka=kafka_settings, workers=1, parallel_variables=1, preload="numpy,extra_data"
    )
    monkeypatch.setenv("RUNSTREAM_POSTGRES_DSN", "postgresql://svc:s3cr3t@db/runstream")
    monkeypatch.setenv("RUNSTREAM_KAFKA_SASL_PASSWORD", "s3cr3t-kafka")
    ctx_dir = tmp_path / "ctx"
    write_context(ctx_dir, CONTEXT)
    await register_proposal(kafka_settings, 1234, ctx_dir, mock_proposal)
    app = build_app(settings).app
    producer = make_broker(kafka_settings, client_id="test-producer")
    await app.start()
    await producer.connect()
    try:
        async with Collector(kafka_settings) as out:
            for run in (1, 2):
                req = RunRequested(
                    request_id=f"r-{run}",
                    proposal=1234,
                    run=run,
                    trigger=Trigger.RAW,
                    context_dir=str(ctx_dir),
                    proposal_dir=str(mock_proposal),
                )
                await publish(producer, kafka_settings.topics.runs, req, key=run_key(1234, run))
            await out.until(lambda m: finished("r-1")(m) and finished("r-2")(m))
    finally:
        await producer.stop()
        await app.stop()
    results = {r.run: r for r in out.of(ResultsReady)}
    assert set(results) == {1, 2}
    for ready in results.values():
        by_name = {r.name: r for r in ready.results}
        assert by_name["huge"].error_cls == "ResultTooLarge"
        assert "huge returned 5.0 GiB" in (by_name["huge"].error or "")
        assert by_name["secrets"].summary == "[]"
        assert ready.fragment is not None
        with h5py.File(ready.fragment, "r") as f:
            assert list(f["base/data"][()]) == [0.0, 1.0, 2.0, 3.0, 4.0]
            assert "huge" not in f
