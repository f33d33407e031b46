"""Contract tier: the store's app, built by ``build_app``, driven in memory.

Messages go in on the topics the app subscribes to (FastStream's TestKafkaBroker,
the app's own start-up and shutdown hooks), and what comes out is read from the
topics it publishes to; the database is the in-memory one of the handler unit tests
(tests/store/fakes.py), the registry and topic admin are in memory
(tests/support/ports.py), the run files are real HDF5 under the test's folder.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h5py
import pytest
from runstream_common.kafka import DLQ_ERROR_CLASS, DLQ_REASON, DLQ_SOURCE_TOPIC
from runstream_common.messages import (
    ResultsReady,
    RunKnown,
    SetComment,
    Trigger,
    VariableResult,
)
from runstream_common.registry import Registration
from runstream_common.service import Service
from runstream_common.settings import KafkaSettings
from runstream_common.topics import dlq, run_key
from runstream_store.app import Ports, StoreRuntime, build_app
from runstream_store.handlers import Database
from runstream_store.settings import DamnitSettings, Settings
from support.ports import MemoryRegistry, MemoryTopics, in_memory, published

from .fakes import MemoryDatabase

pytestmark = pytest.mark.unit

P, R = 2212, 7


class Wired:
    """The store app under test, its in-memory ports and what it published."""

    def __init__(self, context_dir: Path) -> None:
        self.context_dir = context_dir
        self.settings = Settings(
            kafka=KafkaSettings(topic_prefix="ct"),
            fragment_wait_s=0.5,
            damnit=DamnitSettings(enabled=False),  # runs.sqlite needs PostgreSQL's repository
        )
        self.db = MemoryDatabase()
        self.topics = MemoryTopics()

        @contextlib.asynccontextmanager
        async def database() -> AsyncIterator[Database]:
            yield self.db

        self.ports = Ports(
            topics=self.topics,
            registry=MemoryRegistry(Registration(P, str(context_dir), None)),
            ledger=None,
            database=database,
        )
        self.service: Service[StoreRuntime] = build_app(self.settings, ports=self.ports)
        topics = self.settings.kafka.topics
        self.out = published(
            self.service, *(topics.updates, dlq(topics.results), dlq(topics.commands))
        )

    def updates(self, type_: str) -> list[dict[str, Any]]:
        return [m for m, _ in self.out[self.settings.kafka.topics.updates] if m["type"] == type_]

    def dead(self, topic: str) -> list[tuple[dict[str, Any], dict[str, str]]]:
        return self.out[dlq(topic)]


def results(context_dir: Path, *items: VariableResult, proposal: int = P) -> ResultsReady:
    return ResultsReady(
        result_id=uuid.uuid4().hex,
        request_id="req-1",
        processing_id="proc-1",
        proposal=proposal,
        run=R,
        trigger=Trigger.RAW,
        context_hash="hash-1",
        revision=1,
        context_dir=str(context_dir),
        start_time=1_700_000_000.0,
        results=items,
    )


@pytest.fixture
def wired(tmp_path: Path) -> Wired:
    context_dir = tmp_path / "usr" / "Shared" / "runstream"
    context_dir.mkdir(parents=True)
    return Wired(context_dir)


async def test_a_result_in_is_stored_and_published_as_values_updated(wired: Wired) -> None:
    energy = VariableResult.model_validate({"name": "energy", "summary": 9.3, "units": "keV"})
    message = results(wired.context_dir, energy)
    topics = wired.settings.kafka.topics
    async with in_memory(wired.service) as app:
        await app.send(topics.results, message.model_dump_json().encode(), run_key(P, R))
        await app.until(lambda: wired.updates("values_updated") and app.commits, "ValuesUpdated")
    (update,) = wired.updates("values_updated")
    assert (update["proposal"], update["run"]) == (P, R)
    assert update["values"]["energy"]["summary"] == 9.3
    assert update["values"]["energy"]["units"] == "keV"
    stored = (await wired.db.current_values(P, R))["energy"]
    assert (stored.value_float, stored.units) == (9.3, "keV")
    assert await wired.db.is_applied(message.result_id)
    with h5py.File(wired.context_dir / "extracted_data" / f"p{P}_r{R}.h5", "r") as f:
        assert f[".reduced/energy"][()] == 9.3
    # the record's offset is committed once the value is durable
    ((tp, position),) = app.commits[-1].items()
    assert (tp.topic, position) == (topics.results, 1)
    assert wired.dead(topics.results) == []
    assert {topics.results, topics.updates, topics.commands} <= wired.topics.ensured


async def test_a_malformed_result_goes_to_the_dead_letter_topic_with_its_reason(
    wired: Wired,
) -> None:
    topics = wired.settings.kafka.topics
    async with in_memory(wired.service) as app:
        await app.send(topics.results, b'{"type": "results_ready", "proposal": "five"}')
        await app.until(lambda: wired.dead(topics.results), "the dead letter")
    ((body, headers),) = wired.dead(topics.results)
    assert body == {"type": "results_ready", "proposal": "five"}
    assert headers[DLQ_SOURCE_TOPIC] == topics.results
    assert headers[DLQ_ERROR_CLASS] == "MessageFormatError"
    assert "proposal" in headers[DLQ_REASON]
    assert wired.updates("values_updated") == []


async def test_a_result_for_another_folder_than_the_registered_one_is_refused(
    wired: Wired, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    message = results(elsewhere, VariableResult.model_validate({"name": "x", "summary": 1}))
    topics = wired.settings.kafka.topics
    async with in_memory(wired.service) as app:
        await app.send(topics.results, message.model_dump_json().encode(), run_key(P, R))
        await app.until(lambda: wired.dead(topics.results), "the dead letter")
    ((_, headers),) = wired.dead(topics.results)
    assert headers[DLQ_ERROR_CLASS] == "PathRefused"
    assert "registered" in headers[DLQ_REASON]
    assert not await wired.db.is_applied(message.result_id)
    assert not (elsewhere / "extracted_data").exists()  # nothing written there


async def test_a_new_run_and_a_comment_reach_the_feed(wired: Wired) -> None:
    topics = wired.settings.kafka.topics
    comment = SetComment(proposal=P, run=R, text="sample A")
    async with in_memory(wired.service) as app:
        await app.send(topics.run_catalog, RunKnown(proposal=P, run=R).model_dump_json().encode(),
                       run_key(P, R))  # fmt: skip
        await app.send(topics.commands, comment.model_dump_json().encode(), run_key(P, R))
    (added,) = wired.updates("run_added")
    assert (added["proposal"], added["run"]) == (P, R)
    (update,) = wired.updates("values_updated")
    assert update["values"]["comment"]["summary"] == "sample A"
    stored = (await wired.db.current_values(P, R))["comment"]
    assert stored.value_text == "sample A"


async def test_a_comment_on_an_unknown_run_is_rejected_on_the_feed(wired: Wired) -> None:
    topics = wired.settings.kafka.topics
    comment = SetComment(proposal=P, run=999, text="x")
    async with in_memory(wired.service) as app:
        await app.send(topics.commands, comment.model_dump_json().encode())
    (rejected,) = wired.updates("command_rejected")
    assert rejected["command_event_id"] == str(comment.event_id)
    assert wired.updates("values_updated") == []
