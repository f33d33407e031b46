"""Contract tier: the executor's app, built by ``build_app``, driven in memory.

Run messages go in on the ``runs`` topic (FastStream's TestKafkaBroker, the app's own
start-up and shutdown hooks), and what comes out is read from the topics the app
publishes to. The registry and topic admin are in memory (tests/support/ports.py);
the variables are evaluated for real, by one warm worker of the app's own pool, on
a mock run (tests/executor/conftest.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from runstream_common.kafka import DLQ_ERROR_CLASS, DLQ_REASON, DLQ_SOURCE_TOPIC
from runstream_common.messages import ProposalSettingsSet, RunRequested, Trigger
from runstream_common.registry import Registration
from runstream_common.service import Service
from runstream_common.settings import KafkaSettings
from runstream_common.topics import dlq, proposal_key, run_key
from runstream_executor.app import ExecutorRuntime, Ports, build_app
from runstream_executor.pool_set import PoolSet
from runstream_executor.settings import Settings
from support.ports import MemoryRegistry, MemoryTopics, in_memory, published

from .helpers import write_context

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="session")]

P = 1234
CONTEXT = """
from damnit_ctx import Variable

@Variable(title="Trains")
def n_trains(run):
    return len(run.train_ids)

@Variable(title="Broken")
def broken(run):
    raise ValueError("no beam")
"""


class Wired:
    """The executor app under test, its in-memory ports and what it published."""

    def __init__(self, context_dir: Path, proposal_dir: Path) -> None:
        self.settings = Settings(
            kafka=KafkaSettings(topic_prefix="ct"),
            workers=1,
            parallel_variables=1,
            preload="",
            progress_after_s=60,
        )
        self.topics = MemoryTopics()
        registration = Registration(P, str(context_dir), str(proposal_dir.parent))
        self.ports = Ports(
            topics=self.topics,
            registry=MemoryRegistry(registration),
            pools=PoolSet(self.settings),
            ledger=None,
        )
        self.service: Service[ExecutorRuntime] = build_app(self.settings, ports=self.ports)
        topics = self.settings.kafka.topics
        self.out = published(
            self.service,
            *(topics.results, topics.processing, topics.job_requests, dlq(topics.runs)),
        )

    def bodies(self, topic: str, type_: str | None = None) -> list[dict[str, Any]]:
        return [m for m, _ in self.out[topic] if type_ is None or m["type"] == type_]

    def finished(self, request_id: str) -> bool:
        return any(
            m["request_id"] == request_id and m["status"] in ("finished", "failed")
            for m in self.bodies(self.settings.kafka.topics.processing)
        )


def request(context_dir: Path, proposal_dir: Path, rid: str, proposal: int = P) -> bytes:
    message = RunRequested(
        request_id=rid,
        proposal=proposal,
        run=1,
        trigger=Trigger.RAW,
        context_dir=str(context_dir),
        proposal_dir=str(proposal_dir),
    )
    return message.model_dump_json().encode()


async def test_run_requests_in_results_processing_states_and_dead_letters_out(
    tmp_path: Path, mock_proposal: Path
) -> None:
    context_dir = tmp_path / "ctx"
    write_context(context_dir, CONTEXT)
    wired = Wired(context_dir, mock_proposal)
    topics = wired.settings.kafka.topics
    async with in_memory(wired.service) as app:
        # a run of the registered proposal: evaluated, its results and states published
        await app.send(topics.runs, request(context_dir, mock_proposal, "r-1"), run_key(P, 1))
        await app.until(lambda: wired.finished("r-1"), "the finished state", timeout=60)
        # an unregistered proposal and a malformed message: dead-lettered with the reason
        await app.send(topics.runs, request(context_dir, mock_proposal, "r-2", proposal=99))
        await app.send(topics.runs, b'{"type": "run_requested", "run": "one"}')
        await app.until(lambda: len(wired.out[dlq(topics.runs)]) == 2, "two dead letters")
        # the proposals' settings are kept for the next pass
        setting = ProposalSettingsSet(proposal=P, settings={"context_python": "/opt/py"})
        await app.send(topics.proposal_settings, setting.model_dump_json().encode(),
                       proposal_key(P))  # fmt: skip
        assert wired.service.runtime.processor.context_python(P) == "/opt/py"

    (defined,) = wired.bodies(topics.results, "variables_defined")
    assert {v["name"] for v in defined["variables"]} == {"n_trains", "broken"}
    (results,) = wired.bodies(topics.results, "results_ready")
    assert (results["proposal"], results["run"], results["request_id"]) == (P, 1, "r-1")
    by_name = {r["name"]: r for r in results["results"]}
    assert by_name["n_trains"]["summary"] == 400  # the mock run's trains
    assert (by_name["broken"]["error"], by_name["broken"]["error_cls"]) == ("no beam", "ValueError")
    states = [m["status"] for m in wired.bodies(topics.processing) if m["request_id"] == "r-1"]
    assert states == ["finished"]  # a pass shorter than progress_after_s: how it ended only
    assert wired.bodies(topics.job_requests) == []

    unknown, malformed = (h for _, h in wired.out[dlq(topics.runs)])
    assert unknown[DLQ_SOURCE_TOPIC] == topics.runs
    assert unknown[DLQ_ERROR_CLASS] == "UnknownProposal"
    assert "not registered" in unknown[DLQ_REASON]
    assert malformed[DLQ_ERROR_CLASS] == "MessageFormatError"
    assert not any(m["request_id"] == "r-2" for m in wired.bodies(topics.processing))
    assert {topics.runs, topics.results, topics.processing} <= wired.topics.ensured
