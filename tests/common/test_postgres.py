"""The real local PostgreSQL: each test has its own database."""

from __future__ import annotations

import asyncpg
import pytest

pytestmark = pytest.mark.integration


async def test_asyncpg_writes_and_reads_a_row_in_the_tests_own_database(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        name = await conn.fetchval("SELECT current_database()")
        assert name.startswith("t_")
        await conn.execute(
            "CREATE TABLE runs (proposal int, run int, note text, PRIMARY KEY (proposal, run))"
        )
        await conn.execute("INSERT INTO runs VALUES ($1, $2, $3)", 2212, 42, "first light")
        row = await conn.fetchrow("SELECT * FROM runs WHERE proposal = $1 AND run = $2", 2212, 42)
        assert dict(row) == {"proposal": 2212, "run": 42, "note": "first light"}
    finally:
        await conn.close()


async def test_databases_of_different_tests_are_separate(pg_dsn: str, stack: object) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert tables == []
    finally:
        await conn.close()
