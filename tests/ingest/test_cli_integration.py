"""``runstream proposal ...`` and ``runstream reprocess ...`` as real processes against the broker."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from runstream_common import parsers
from runstream_common.messages import (
    ProcessingStateChanged,
    ProcessingStateSet,
    ProcessingStatus,
    RunKnown,
    Selection,
    Trigger,
)
from runstream_common.settings import KafkaSettings
from runstream_common.topics import run_key
from runstream_ingest.adapters.publisher import publish_once

from .helpers import make_run_folder
from .kafka_helpers import create_topics, event, ingest_settings, produce, read_topic, running

pytestmark = pytest.mark.integration

# The root `runstream` command loads every service's plugin (slow to import); most calls go
# through this package's own entry, one through the root to prove the registration.
RUNSTREAM = [sys.executable, "-c", "from runstream.cli import main; main()"]
INGEST_CLI = [sys.executable, "-m", "runstream_ingest.cli"]


async def cli(kafka: KafkaSettings, *args: str, root: bool = False) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "RUNSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "COLUMNS": "200",
    }
    proc = await asyncio.create_subprocess_exec(
        *(RUNSTREAM if root else INGEST_CLI),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


async def test_proposal_add_list_remove(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    pdir = tmp_path / "p002212"
    (pdir / "raw").mkdir(parents=True)
    code, out, err = await cli(
        kafka_settings,
        "proposal",
        "add",
        "2212",
        "--context-dir",
        str(tmp_path / "ctx"),
        "--data-root",
        str(pdir),
    )
    assert code == 0, err
    assert (tmp_path / "ctx" / "context.py").exists()
    assert "starter context file" in out
    code, out, _ = await cli(
        kafka_settings, "proposal", "add", "3000", "--context-dir", str(tmp_path / "ctx3")
    )
    assert code == 0
    code, out, _ = await cli(kafka_settings, "proposal", "list", "--json", root=True)
    assert code == 0
    listed = {row["proposal"]: row for row in json.loads(out)}
    assert listed[2212]["context_dir"] == str(tmp_path / "ctx")
    assert listed[2212]["data_root"] == str(pdir)
    assert listed[3000]["data_root"] is None
    code, out, _ = await cli(kafka_settings, "proposal", "list")
    assert "2212" in out
    assert "Registered proposals" in out
    code, _, _ = await cli(kafka_settings, "proposal", "remove", "2212")
    assert code == 0
    code, out, _ = await cli(kafka_settings, "proposal", "list", "--json")
    assert [row["proposal"] for row in json.loads(out)] == [3000]
    code, _, err = await cli(kafka_settings, "proposal", "remove", "2212")
    assert code == 1
    assert "not registered" in err


async def _ingest_with_runs(
    kafka_settings: KafkaSettings, tmp_path: Path, on_disk: list[int], known: list[int]
):
    os.environ["RUNSTREAM_INGEST_DATA_ROOT"] = str(tmp_path / "exp")  # for the CLI processes
    pdir = tmp_path / "exp" / "SPB" / "202601" / "p002212"
    for run in on_disk:
        make_run_folder(pdir, run)
    settings = ingest_settings(kafka_settings, tmp_path / "exp")
    create_topics(kafka_settings.bootstrap_servers, settings.facility_topics)
    code, _, err = await cli(
        kafka_settings, "proposal", "add", "2212", "--context-dir", str(tmp_path / "ctx")
    )
    # no --data-root: the default root and DAMNIT's glob find exp/SPB/202601/p002212
    assert code == 0, err
    return settings, pdir


@pytest.fixture(autouse=True)
def _restore_data_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNSTREAM_INGEST_DATA_ROOT", raising=False)


async def test_reprocess_all_match_expands_to_registered_runs(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    settings, pdir = await _ingest_with_runs(
        kafka_settings, tmp_path, on_disk=[1, 2, 4], known=[1, 2, 3]
    )
    async with running(settings):
        produce(
            kafka_settings.bootstrap_servers,
            settings.facility_topics[0],
            [event("migration_complete", 2212, r) for r in (1, 2, 3)],
        )
        await read_topic(
            kafka_settings, kafka_settings.topics.run_catalog, until=lambda recs: len(recs) >= 3
        )
        code, out, _ = await cli(kafka_settings, "proposal", "runs", "2212", "--json")
        assert code == 0
        assert [(e["run"], e["raw_seen"], e["proc_seen"]) for e in json.loads(out)] == [
            (1, True, False),
            (2, True, False),
            (3, True, False),
        ]
        code, _out, err = await cli(
            kafka_settings,
            "reprocess",
            "2212",
            "all",
            "--match",
            "XGM",
            "--match",
            "energy",
            "--var",
            "n_trains",
            "--data",
            "raw",
        )
        assert code == 0, err
        assert "run 3 of p2212 does not exist on disk" in err  # reported, not sent

        def reprocessed(recs: list) -> list:
            return [
                m for m in (parsers.RUNS.parse(r.value) for r in recs) if m.reason == "reprocess"
            ]

        records = await read_topic(
            kafka_settings,
            kafka_settings.topics.runs,
            until=lambda recs: len(reprocessed(recs)) >= 2,
        )
    msgs = reprocessed(records)
    # run 4 is on disk but the facility never announced it; run 3 is announced but not on disk
    assert sorted(m.run for m in msgs) == [1, 2]
    assert all(m.selection == Selection(names=("n_trains",), match=("XGM", "energy")) for m in msgs)
    assert all(m.trigger is Trigger.RAW and m.proposal_dir == str(pdir) for m in msgs)
    assert len({m.request_id for m in msgs}) == 2
    facility = [m for m in (parsers.RUNS.parse(r.value) for r in records) if m.reason == "facility"]
    assert not {m.request_id for m in msgs} & {m.request_id for m in facility}


async def test_reprocess_wait_follows_updates_to_a_summary(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    settings, _ = await _ingest_with_runs(kafka_settings, tmp_path, on_disk=[1, 2], known=[])
    async with running(settings):
        waiter = asyncio.create_task(
            cli(
                kafka_settings,
                "reprocess",
                "2212",
                "1",
                "2",
                "5",
                "--wait",
                "--json",
                "--timeout",
                "60",
            )
        )

        def reprocessed(recs: list) -> list:
            return [
                m for m in (parsers.RUNS.parse(r.value) for r in recs) if m.reason == "reprocess"
            ]

        records = await read_topic(
            kafka_settings,
            kafka_settings.topics.runs,
            until=lambda recs: len(reprocessed(recs)) >= 2,
        )
        # play the store: processing states on the updates feed
        updates = []
        for m in reprocessed(records):
            for status in (
                ProcessingStatus.RUNNING,
                ProcessingStatus.FINISHED if m.run == 1 else ProcessingStatus.FAILED,
            ):
                state = ProcessingStateChanged(
                    processing_id=f"proc-{m.run}",
                    request_id=m.request_id,
                    proposal=2212,
                    run=m.run,
                    trigger=m.trigger,
                    status=status,
                    reason="context file does not load"
                    if status is ProcessingStatus.FAILED
                    else None,
                    counts={"ok": 2} if status is ProcessingStatus.FINISHED else {},
                )
                updates.append(
                    (
                        kafka_settings.topics.updates,
                        run_key(2212, m.run),
                        ProcessingStateSet(state=state),
                    )
                )
        # an unrelated run's finish must not count
        other = ProcessingStateChanged(
            processing_id="x",
            request_id="other",
            proposal=2212,
            run=1,
            trigger=Trigger.RAW,
            status=ProcessingStatus.FAILED,
        )
        await publish_once(
            kafka_settings,
            [
                (kafka_settings.topics.updates, run_key(2212, 1), ProcessingStateSet(state=other)),
                *updates,
            ],
        )
        code, out, err = await waiter
        # the catalog learnt the reprocessed runs
        catalog = [
            parsers.RUN_CATALOG.parse(r.value)
            for r in await read_topic(kafka_settings, kafka_settings.topics.run_catalog)
        ]
    assert code == 1, err  # one run failed
    result = json.loads(out)
    assert (result["ok"], result["failed"], result["skipped"], result["pending"]) == (
        [1],
        [2],
        [5],
        [],
    )
    assert result["failures"] == {"2": "context file does not load"}
    assert result["variables"] == {"ok": 2}
    assert sorted(c.run for c in catalog if isinstance(c, RunKnown)) == [1, 2]
