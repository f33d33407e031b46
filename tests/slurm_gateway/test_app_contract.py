"""Contract tier: the slurm-gateway's app, built by ``build_app``, driven in memory.

Messages go in on the topics the app subscribes to (FastStream's TestKafkaBroker),
and what comes out is read from the topics it publishes to: the wiring of parsers,
handlers, topics and dead letters, without Kafka or Slurm.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from runstream_common.kafka import DLQ_ERROR_CLASS, DLQ_REASON, DLQ_SOURCE_TOPIC
from runstream_common.messages import JobCancelRequested, JobState
from runstream_common.settings import KafkaSettings
from runstream_slurm_gateway.app import build_app
from runstream_slurm_gateway.settings import Settings

from .helpers import job_request
from .test_gateway_logic import MemoryBackend

pytestmark = pytest.mark.unit

BAD = b'{"type": "job_requested", "proposal": "five"}'


class Wired:
    """The app under test, its in-memory backend and what it published."""

    def __init__(self) -> None:
        self.settings = Settings(backend="slurm", kafka=KafkaSettings(topic_prefix="ct"))
        self.backend = MemoryBackend()
        self.service = build_app(self.settings, backend=self.backend)
        self.app = self.service.app
        self.runtime = self.service.runtime
        self.runtime.gateway.proposals.loaded.set()  # no proposal settings: the defaults
        self.states: list[dict[str, Any]] = []
        self.dead: list[tuple[bytes, dict[str, str]]] = []
        topics = self.settings.kafka.topics
        broker = self.service.broker

        @broker.subscriber(topics.job_state)
        async def on_state(message: KafkaMessage) -> None:
            self.states.append(json.loads(message.body))

        @broker.subscriber(f"{topics.job_requests}.dlq")
        async def on_dead(message: KafkaMessage) -> None:
            self.dead.append((message.body, dict(message.headers)))


async def test_a_job_request_is_submitted_and_its_state_published() -> None:
    wired = Wired()
    req = job_request(5, 12, "/ctx")
    topics = wired.settings.kafka.topics
    async with TestKafkaBroker(wired.service.broker) as broker:
        await broker.publish(req.model_dump_json().encode(), topics.job_requests, key=b"5:12")
    assert wired.backend.submits == 1
    ours = [s for s in wired.states if s["job_request_id"] == req.job_request_id]
    assert ours, wired.states
    assert ours[-1]["state"] == JobState.PENDING.value
    assert (ours[-1]["proposal"], ours[-1]["run"]) == (5, 12)
    assert wired.dead == []


async def test_the_same_request_twice_makes_one_job() -> None:
    wired = Wired()
    req = job_request(5, 13, "/ctx")
    topics = wired.settings.kafka.topics
    async with TestKafkaBroker(wired.service.broker) as broker:
        for _ in range(2):
            await broker.publish(req.model_dump_json().encode(), topics.job_requests)
    assert wired.backend.submits == 1


async def test_a_malformed_request_goes_to_the_dead_letter_topic_with_its_reason() -> None:
    wired = Wired()
    topics = wired.settings.kafka.topics
    async with TestKafkaBroker(wired.service.broker) as broker:
        await broker.publish(BAD, topics.job_requests)
    assert wired.backend.submits == 0
    assert len(wired.dead) == 1
    body, headers = wired.dead[0]
    assert body == BAD
    assert headers[DLQ_SOURCE_TOPIC] == topics.job_requests
    assert headers[DLQ_ERROR_CLASS] == "MessageFormatError"
    assert "proposal" in headers[DLQ_REASON], headers


async def test_a_cancel_reaches_the_backend_for_a_known_job() -> None:
    wired = Wired()
    req = job_request(6, 1, "/ctx")
    cancelled: list[int] = []
    original = wired.backend.cancel

    async def cancel(job_id: int) -> bool:
        cancelled.append(job_id)
        return await original(job_id)

    wired.backend.cancel = cancel  # type: ignore[method-assign]
    topics = wired.settings.kafka.topics
    async with TestKafkaBroker(wired.service.broker) as broker:
        await broker.publish(req.model_dump_json().encode(), topics.job_requests)
        stop = JobCancelRequested(proposal=6, run=1, reason="test")
        await broker.publish(stop.model_dump_json().encode(), topics.job_control)
    assert cancelled == list(wired.backend.jobs), (cancelled, wired.backend.jobs)
