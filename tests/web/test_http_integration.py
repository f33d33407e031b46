"""The HTTP API in process over a real (migrated) PostgreSQL: write access, read-only database.

The command sender is a recorder here (the browser tests send through Kafka);
everything else is the service's own code: routes, access checks, queries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr
from runstream_web.adapters.database import Database
from runstream_web.context import Web
from runstream_web.http import build_http
from runstream_web.hub import Hub
from runstream_web.settings import Settings
from support.database import upgrade_async

pytestmark = pytest.mark.integration

WRITE = {"X-Requested-With": "runstream"}


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, str | None]] = []

    async def command(self, message: Any, user: str | None) -> None:
        self.sent.append((message, user))

    async def reprocess(self, request: Any, user: str | None) -> None:
        self.sent.append((request, user))


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[Database]:
    await upgrade_async(pg_dsn)
    conn = await asyncpg.connect(pg_dsn)
    try:  # what the store would have written
        await conn.execute("INSERT INTO proposals (proposal, context_dir) VALUES (7, '/nowhere')")
        await conn.execute(
            "INSERT INTO runs (proposal, run, added_at, cells) VALUES "
            """(7, 1, 1.7e9, '{"x": 1.5, "s": "<b>", "big": {"$i": "123456789012345678901"}}'),"""
            "(7, 2, 1.7e9, '{}')"
        )
        await conn.execute(
            "INSERT INTO variables (proposal, name, title, user_type, units) VALUES "
            "(7, 'x', 'A/X', NULL, 'mm'), (7, 'temp', 'Temp', 'number', 'K')"
        )
        await conn.execute(
            "INSERT INTO run_values (proposal, run, name, kind, value_float, units, error, "
            "error_cls, bold) VALUES (7, 1, 'x', 'float', 1.5, 'mm', NULL, NULL, true), "
            "(7, 2, 'x', 'none', NULL, NULL, 'no beam', 'ValueError', NULL)"
        )
    finally:
        await conn.close()
    database = await Database.connect(pg_dsn, min_size=1, max_size=2)
    try:
        yield database
    finally:
        await database.close()


def client(settings: Settings, db: Database, peer: str = "127.0.0.1") -> tuple[Any, Recorder]:
    recorder = Recorder()
    web = Web(settings=settings, hub=Hub(epoch="test"), sender=recorder)
    web.database.set(db)
    transport = httpx.ASGITransport(app=build_http(web), client=(peer, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://web"), recorder


async def test_table_snapshot_in_two_parts(db: Database) -> None:
    http, _ = client(Settings(), db)
    async with http:
        first = (await http.get("/api/proposals/7/table?newest=1")).json()
        assert [r[0] for r in first["runs"]] == [2]
        assert first["complete"] is False
        assert first["oldest"] == 2
        assert first["cursor"] == "test:0"
        assert first["decor"] == [[2, "x", "no beam", "ValueError", None, None, None]]
        rest = (await http.get("/api/proposals/7/table?before=2")).json()
        assert rest["complete"] is True
        ((run, _, _, cells),) = rest["runs"]
        assert run == 1
        assert cells == {"x": 1.5, "s": "<b>", "big": {"$i": "123456789012345678901"}}
        assert rest["decor"] == [[1, "x", None, None, True, None, None]]
        titles = {v["name"]: v["title"] for v in rest["variables"]}
        assert titles == {"x": "A/X", "temp": "Temp"}
        assert (await http.get("/api/proposals/8/table")).status_code == 404


async def test_the_database_connection_cannot_write(db: Database) -> None:
    async with db.pool.acquire() as conn:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("DELETE FROM runs")


async def test_token_mode_writes_only_with_the_token(db: Database) -> None:
    settings = Settings(write_access="token", write_token=SecretStr("t0ken"))
    http, sent = client(settings, db, peer="192.0.2.10")
    async with http:
        assert (await http.get("/api/session")).json()["can_write"] is False
        refused = await http.post("/api/proposals/7/runs/1/comment", json={"text": "hi"},
                                  headers=WRITE)  # fmt: skip
        assert refused.status_code == 403
        assert "write token" in refused.json()["error"]
        wrong = {**WRITE, "Authorization": "Bearer nope"}
        assert (await http.post("/api/proposals/7/runs/1/comment", json={"text": "hi"},
                                headers=wrong)).status_code == 403  # fmt: skip
        good = {**WRITE, "Authorization": "Bearer t0ken"}
        assert (await http.get("/api/session", headers=good)).json()["can_write"] is True
        answer = await http.post("/api/proposals/7/runs/1/comment", json={"text": "hi"},
                                 headers=good)  # fmt: skip
        assert answer.status_code == 202
        bad = await http.post("/api/proposals/7/runs/1/values/temp", json={"value": "warm"},
                              headers=good)  # fmt: skip
        assert bad.status_code == 400
        assert bad.json()["error"] == "'warm' is not a valid number"
        assert (await http.post("/api/proposals/7/runs/9/comment", json={"text": "x"},
                                headers=good)).status_code == 404  # fmt: skip
    ((command, user),) = sent.sent
    assert (command.type, command.run, command.text, user) == ("set_comment", 1, "hi", "token")
    assert answer.json()["command"] == str(command.event_id)


async def test_proxy_mode_believes_the_user_header_from_the_proxy_only(db: Database) -> None:
    settings = Settings(write_access="proxy", trusted_proxies=("10.0.0.5",))
    body = {"runs": [1, 2], "variables": ["x"]}
    headers = {**WRITE, "X-Forwarded-User": "alice"}
    outsider, sent_out = client(settings, db, peer="10.0.0.99")
    async with outsider:
        response = await outsider.post("/api/proposals/7/reprocess", json=body, headers=headers)
        assert response.status_code == 403
    proxied, sent = client(settings, db, peer="10.0.0.5")
    async with proxied:
        response = await proxied.post("/api/proposals/7/reprocess", json=body, headers=headers)
        assert response.status_code == 202
        assert sorted(response.json()["runs"].values()) == [1, 2]
        session = (await proxied.get("/api/session", headers=headers)).json()
        assert session["can_write"] is True
        assert session["user"] == "alice"
    assert sent_out.sent == []
    ((request, user),) = sent.sent
    assert (request.runs, request.selection.names, user) == ((1, 2), ("x",), "alice")


async def test_read_only_mode_and_missing_csrf_header(db: Database) -> None:
    http, sent = client(Settings(write_access="nobody"), db)
    async with http:
        response = await http.post("/api/proposals/7/runs/1/comment", json={"text": "x"},
                                   headers=WRITE)  # fmt: skip
        assert response.status_code == 403
        assert "read-only" in response.json()["error"]
    http, sent = client(Settings(), db)
    async with http:
        response = await http.post("/api/proposals/7/runs/1/comment", json={"text": "x"})
        assert response.status_code == 403
        assert (await http.get("/api/health")).json()["ok"] is True
        value = (await http.get("/api/proposals/7/runs/2/values/x")).json()
        assert value["value"]["error"] == "no beam"
        assert value["title"] == "A/X"
    assert sent.sent == []


async def test_a_database_without_the_schema_gets_a_clear_answer(pg_dsn: str) -> None:
    database = await Database.connect(pg_dsn, min_size=1, max_size=1)
    try:
        http, _ = client(Settings(), database)
        async with http:
            response = await http.get("/api/proposals")
        assert response.status_code == 503
        assert "runstream db upgrade" in response.json()["error"]
    finally:
        await database.close()
