"""Versioned SQL migrations: ``migrations/NNN_name.sql``, applied in order by ``runstream db upgrade``.

Each migration runs in its own transaction together with its row in
``schema_version``, under an advisory lock, so two concurrent upgrades apply each
migration once. The store checks the version at start-up and refuses to run on
an older (or newer) schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files

import asyncpg
from runstream_common.errors import SchemaOutdated

_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_LOCK_ID = 0x72756E73  # advisory lock key for upgrades ("runs")

UPGRADE_HINT = "run `runstream db upgrade` (or `runstream db upgrade --dsn DSN`)"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with this code, by version."""
    found: list[Migration] = []
    for entry in files("runstream_store").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 001, 002, ... without gaps: {versions}")
    return found


def latest_version() -> int:
    return migrations()[-1].version


async def current_version(conn: asyncpg.Connection) -> int:
    """The schema version of the database; 0 when it has none yet."""
    exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    version = await conn.fetchval("SELECT max(version) FROM schema_version")
    return int(version or 0)


async def upgrade(conn: asyncpg.Connection) -> list[Migration]:
    """Apply the missing migrations. Returns those applied (empty when up to date)."""
    applied: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_version (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        have = await current_version(conn)
        for migration in migrations():
            if migration.version <= have:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied.append(migration)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return applied


async def check(conn: asyncpg.Connection) -> int:
    """Raise SchemaOutdated unless the database is exactly at this code's version."""
    have = await current_version(conn)
    want = latest_version()
    if have < want:
        raise SchemaOutdated(
            f"the database schema is at version {have}, this store needs version {want}: "
            f"{UPGRADE_HINT}"
        )
    if have > want:
        raise SchemaOutdated(
            f"the database schema is at version {have}, newer than this store knows ({want}); "
            "upgrade runstream-store"
        )
    return have
