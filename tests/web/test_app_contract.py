"""Contract tier: the web service's app, built by ``build_app``, driven in memory.

Edits come in over HTTP (the app's own server, on a free loopback port) and go out
as messages on the ``commands`` and ``reprocess`` topics (FastStream's TestKafkaBroker);
updates come in from the ``updates`` follower and go out to browsers as Server-Sent
Events. The database, the updates follower and the topic admin are in memory.
"""

from __future__ import annotations

import json

import httpx
import pytest
from runstream_common import parsers
from runstream_common.messages import ValuesUpdated, ValueView
from runstream_common.service import Service
from runstream_common.settings import KafkaSettings
from runstream_web.adapters.updates import OnUpdate, browser_payload, proposal_of
from runstream_web.app import Ports, WebRuntime, build_app
from runstream_web.context import Reader
from runstream_web.settings import Settings
from support.ports import MemoryTopics, in_memory, published

pytestmark = pytest.mark.unit

P = 7
WRITE = {"X-Requested-With": "runstream"}


class MemoryReader:
    """The few queries the edits need: which runs and computed variables exist."""

    def __init__(self, runs: set[int], computed: set[str]) -> None:
        self.runs = runs
        self.computed = computed
        self.closed = False

    async def run_exists(self, proposal: int, run: int) -> bool:
        return proposal == P and run in self.runs

    async def run_numbers(self, proposal: int) -> list[int]:
        return sorted(self.runs) if proposal == P else []

    async def computed_variable_names(self, proposal: int) -> set[str]:
        return set(self.computed) if proposal == P else set()

    async def close(self) -> None:
        self.closed = True


class MemoryFollower:
    """The updates follower: ``deliver`` hands it one record of the ``updates`` topic."""

    def __init__(self, on_update: OnUpdate) -> None:
        self.on_update = on_update
        self.running = False

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False

    def deliver(self, raw: bytes) -> None:  # what adapters.updates.UpdatesReader does
        self.on_update(proposal_of(parsers.UPDATES.parse(raw)), browser_payload(raw))


class Wired:
    def __init__(self) -> None:
        self.settings = Settings(kafka=KafkaSettings(topic_prefix="ct"), port=0)
        self.reader = MemoryReader({1, 2}, {"energy"})
        self.followers: list[MemoryFollower] = []

        async def database() -> Reader:
            return self.reader  # type: ignore[return-value]  # the queries the edits ask

        def updates(on_update: OnUpdate) -> MemoryFollower:
            self.followers.append(MemoryFollower(on_update))
            return self.followers[-1]

        ports = Ports(topics=MemoryTopics(), database=database, updates=updates)
        self.service: Service[WebRuntime] = build_app(self.settings, ports=ports)
        topics = self.settings.kafka.topics
        self.out = published(self.service, *(topics.commands, topics.reprocess))


async def test_edits_in_over_http_go_out_as_commands_and_reprocess_requests() -> None:
    wired = Wired()
    topics = wired.settings.kafka.topics
    async with in_memory(wired.service):
        url = wired.service.runtime.web.url
        async with httpx.AsyncClient(base_url=url) as http:
            comment = await http.post(f"/api/proposals/{P}/runs/2/comment",
                                      json={"text": "sample A"}, headers=WRITE)  # fmt: skip
            unknown = await http.post(f"/api/proposals/{P}/runs/9/comment",
                                      json={"text": "x"}, headers=WRITE)  # fmt: skip
            again = await http.post(f"/api/proposals/{P}/reprocess",
                                    json={"runs": [1], "variables": ["energy"]},
                                    headers=WRITE)  # fmt: skip
            bad = await http.post(f"/api/proposals/{P}/reprocess",
                                  json={"runs": [1], "variables": ["nope"]},
                                  headers=WRITE)  # fmt: skip
    assert comment.status_code == 202, comment.text
    ((command, _),) = wired.out[topics.commands]
    assert command["type"] == "set_comment"
    assert (command["proposal"], command["run"], command["text"]) == (P, 2, "sample A")
    assert command["event_id"] == comment.json()["command"]
    assert unknown.status_code == 404
    assert again.status_code == 202, again.text
    ((request, _),) = wired.out[topics.reprocess]
    assert (request["proposal"], request["runs"]) == (P, [1])
    assert request["selection"]["names"] == ["energy"]
    assert bad.status_code == 400
    assert "not a computed variable: nope" in bad.json()["error"]
    assert wired.reader.closed  # the database is closed at shutdown


async def test_an_update_in_reaches_browsers_as_a_server_sent_event() -> None:
    wired = Wired()
    update = ValuesUpdated(proposal=P, run=2, values={"energy": ValueView(summary=9.3)})
    async with in_memory(wired.service):
        (follower,) = wired.followers
        assert follower.running
        follower.deliver(update.model_dump_json().encode())
        hub = wired.service.runtime.web.hub
        url = wired.service.runtime.web.url
        async with (
            httpx.AsyncClient(base_url=url) as http,
            http.stream("GET", f"/api/proposals/{P}/events?since={hub.epoch}:0") as events,
        ):
            text = ""
            async for chunk in events.aiter_text():
                text += chunk
                if "event: update" in text:
                    break
    assert events.status_code == 200
    data = json.loads(text.split("event: update\ndata: ", 1)[1].split("\n", 1)[0])
    assert data["type"] == "values_updated"
    assert (data["run"], data["values"]["energy"]["summary"]) == (2, 9.3)
    assert not follower.running  # stopped at shutdown
