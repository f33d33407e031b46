"""The folder watcher through the real loop: one raw run message per new complete folder."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

import pytest
from runstream_common import parsers
from runstream_common.settings import KafkaSettings

from .helpers import make_run_folder
from .kafka_helpers import (
    create_topics,
    event,
    ingest_settings,
    produce,
    read_topic,
    register,
    running,
)

pytestmark = pytest.mark.integration


async def _keep_writing(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        while True:
            f.write(b"x" * 1024)
            f.flush()
            await asyncio.sleep(0.1)


async def _wait_scans(service, n: int) -> None:
    start = service.watcher.scans
    while service.watcher.scans < start + n:  # noqa: ASYNC110 - the watcher task counts its scans
        await asyncio.sleep(0.05)


async def test_watcher_emits_complete_new_folders_once(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    pdir = tmp_path / "exp" / "p002212"
    make_run_folder(pdir, 3, age_s=3600)  # existed before registration: history, not new
    settings = ingest_settings(
        kafka_settings, tmp_path / "exp", watch=True, watch_interval_s=0.2, settle_s=1.0
    )
    create_topics(kafka_settings.bootstrap_servers, settings.facility_topics)
    await register(kafka_settings, 2212, tmp_path / "ctx", pdir)

    async with running(settings) as service:
        writer = asyncio.create_task(
            _keep_writing(pdir / "raw" / "r0002" / "RAW-R0002-DA01-S00000.h5")
        )
        try:
            folder = pdir / "raw" / "r0001"
            folder.mkdir(parents=True)
            (folder / "RAW-R0001-DA01-S00000.h5").write_bytes(b"data")

            def has(run: int):
                return lambda recs: any(parsers.RUNS.parse(r.value).run == run for r in recs)

            await read_topic(kafka_settings, kafka_settings.topics.runs, until=has(1), timeout=30)
            await _wait_scans(service, 10)  # r0002 is looked at again and again while it grows
            records = await read_topic(kafka_settings, kafka_settings.topics.runs)
            assert [parsers.RUNS.parse(r.value).run for r in records] == [1]
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        # once r0002 stops changing it is reported; the facility's own event for r0001 is a duplicate
        produce(
            kafka_settings.bootstrap_servers,
            settings.facility_topics[0],
            [event("migration_complete", 2212, 1)],
        )
        records = await read_topic(
            kafka_settings, kafka_settings.topics.runs, until=has(2), timeout=30
        )
        await _wait_scans(service, 3)
        produce(
            kafka_settings.bootstrap_servers,
            settings.facility_topics[0],
            [event("migration_complete", 2212, 50)],
        )
        records = await read_topic(
            kafka_settings, kafka_settings.topics.runs, until=has(50), timeout=30
        )
    msgs = [parsers.RUNS.parse(r.value) for r in records]
    assert sorted(m.run for m in msgs) == [1, 2, 50]
    assert {m.run: m.reason for m in msgs} == {1: "watcher", 2: "watcher", 50: "facility"}


async def test_watcher_sees_copied_folders_and_dangling_links(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """A run copied in with its original (old) mtimes, and a run holding a dangling link."""
    pdir = tmp_path / "exp" / "p002212"
    (pdir / "raw").mkdir(parents=True)
    archive = tmp_path / "archive" / "r0007"
    make_run_folder(tmp_path / "archive-root", 7, age_s=30 * 86400)  # a month old
    shutil.move(tmp_path / "archive-root" / "raw" / "r0007", archive)
    settings = ingest_settings(
        kafka_settings, tmp_path / "exp", watch=True, watch_interval_s=0.2, settle_s=1.0
    )
    create_topics(kafka_settings.bootstrap_servers, settings.facility_topics)
    await register(kafka_settings, 2212, tmp_path / "ctx", pdir)
    await asyncio.sleep(1.1)  # registered_at is in whole seconds at worst

    async with running(settings):
        shutil.copytree(archive, pdir / "raw" / "r0007")  # copy2: the mtimes stay a month old
        linked = pdir / "raw" / "r0008"
        linked.mkdir()
        (linked / "RAW-R0008-DA01-S00000.h5").write_bytes(b"data")
        (linked / "RAW-R0008-DA02-S00000.h5").symlink_to(tmp_path / "moved-away.h5")

        def both(recs: list) -> bool:
            return {parsers.RUNS.parse(r.value).run for r in recs} >= {7, 8}

        records = await read_topic(
            kafka_settings, kafka_settings.topics.runs, until=both, timeout=30
        )
    assert sorted(parsers.RUNS.parse(r.value).run for r in records) == [7, 8]
