"""Paths come from the proposal registry, not from messages (docs/security.md, control 10).

The services run as real processes on the real stack. Someone who can write the
``runs`` or ``results`` topic (a compromised service, a context file publishing
with the executor's or a job's credentials, anyone on a plaintext broker) sends
messages naming folders that are not the proposal's registered ones. The
executor must run nothing for them, the store must read, write and delete
nothing for them, and each must land in its topic's dead-letter topic with the
reason, while genuine messages of the same proposal are processed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import textwrap
import time
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer
from runstream_common.kafka import DLQ_ERROR_CLASS, DLQ_REASON, make_broker, publish
from runstream_common.messages import (
    ProposalRegistered,
    ResultsReady,
    RunRequested,
    Trigger,
    VariableResult,
)
from runstream_common.settings import KafkaSettings
from runstream_common.topics import dlq, proposal_key, run_key
from store.fragments import Fragment

from .conftest import E2E, PROPOSAL
from .helpers import wait_until

pytestmark = pytest.mark.e2e

VICTIM = 4343
LATE = 4244

# Writes a marker file as soon as it is imported, and again from a variable.
EVIL_CONTEXT = """
from pathlib import Path
from damnit_ctx import Variable

Path({marker!r}).write_text("the forged context ran")

@Variable(title="Evil")
def evil(run):
    Path({marker!r}).write_text("the forged variable ran")
    return 1
"""


async def dead_letters_of(
    kafka: KafkaSettings, topic: str, count: int, field: str
) -> dict[str, dict[str, str]]:
    """The headers of the first ``count`` dead letters of ``topic`` (waits for them), by the
    original message's ``field``."""
    consumer = AIOKafkaConsumer(
        dlq(topic),
        bootstrap_servers=kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=500,
    )
    await consumer.start()
    got: dict[str, dict[str, str]] = {}
    try:
        deadline = time.monotonic() + 90
        while len(got) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    got[json.loads(r.value)[field]] = {k: v.decode() for k, v in r.headers}
    finally:
        await consumer.stop()
    return got


async def send(kafka: KafkaSettings, topic: str, messages: list[tuple[Any, bytes]]) -> None:
    broker = make_broker(kafka, client_id="attacker")
    await broker.connect()
    try:
        for message, key in messages:
            await publish(broker, topic, message, key=key)
    finally:
        await broker.stop()


async def fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def forged_run(
    request_id: str, proposal: int, context_dir: Path, proposal_dir: Path
) -> tuple[Any, bytes]:
    return (
        RunRequested(
            request_id=request_id,
            proposal=proposal,
            run=1,
            trigger=Trigger.RAW,
            context_dir=str(context_dir),
            proposal_dir=str(proposal_dir),
        ),
        run_key(proposal, 1),
    )


async def test_forged_run_messages_run_nothing_and_are_dead_lettered(e2e: E2E) -> None:
    evil = e2e.root / "evil"
    evil.mkdir()
    marker = e2e.root / "MARKER"
    (evil / "context.py").write_text(textwrap.dedent(EVIL_CONTEXT.format(marker=str(marker))))
    elsewhere = e2e.root / "elsewhere" / f"p{PROPOSAL:06d}"
    (elsewhere / "raw" / "r0001").mkdir(parents=True)
    e2e.make_runs(range(1, 2))
    e2e.system.env["RUNSTREAM_EXECUTOR_REGISTRY_WAIT_S"] = "5"
    await e2e.system.start("store", "executor", "ingest")

    forged = [
        forged_run("forged-context", PROPOSAL, evil, e2e.proposal_dir),
        forged_run("forged-data", PROPOSAL, e2e.context_dir, elsewhere),
        forged_run("forged-proposal", 4999, evil, e2e.proposal_dir),
    ]
    # A proposal whose registration comes a moment after its first run message.
    late_context = e2e.root / "late"
    late_context.mkdir()
    (late_context / "context.py").write_text((e2e.context_dir / "context.py").read_text())
    early = forged_run("early", LATE, late_context, e2e.proposal_dir)
    await send(e2e.kafka, e2e.kafka.topics.runs, [*forged, early])
    e2e.send_events(range(1, 2))  # the genuine run of the same proposal, through ingest
    await asyncio.sleep(1.0)
    registration = ProposalRegistered(
        proposal=LATE, context_dir=str(late_context), data_root=str(e2e.proposal_dir)
    )
    await send(e2e.kafka, e2e.kafka.topics.proposals, [(registration, proposal_key(LATE))])

    async def missing() -> list[str]:
        rows = await fetch(e2e.dsn, "SELECT name FROM run_values WHERE proposal = $1 AND run = 1",
                           PROPOSAL)  # fmt: skip
        late = await fetch(e2e.dsn, "SELECT name FROM run_values WHERE proposal = $1 AND run = 1",
                           LATE)  # fmt: skip
        wanted = {f"{PROPOSAL}:{n}" for n in ("n_trains", "label", "doubled")} | {
            f"{LATE}:{n}" for n in ("n_trains", "doubled")
        }
        got = {f"{PROPOSAL}:{r['name']}" for r in rows} | {f"{LATE}:{r['name']}" for r in late}
        return sorted(wanted - got)

    await wait_until(missing, timeout=180, what="the genuine run's values", logs=e2e.system.logs)
    by_request = await dead_letters_of(e2e.kafka, e2e.kafka.topics.runs, 3, "request_id")
    assert set(by_request) == {"forged-context", "forged-data", "forged-proposal"}, (
        e2e.system.logs()
    )  # and not "early": its proposal was registered while it waited
    context = by_request["forged-context"]
    assert context[DLQ_ERROR_CLASS] == "PathRefused"
    assert (
        f"context_dir {evil} is not the registered context folder {e2e.context_dir}; "
        "nothing was run" in context[DLQ_REASON]
    )
    data = by_request["forged-data"]
    assert data[DLQ_ERROR_CLASS] == "PathRefused"
    assert (
        f"proposal_dir {elsewhere} is not under the data root {e2e.proposal_dir}"
        in data[DLQ_REASON]
    )
    unknown = by_request["forged-proposal"]
    assert unknown[DLQ_ERROR_CLASS] == "UnknownProposal"
    assert "proposal 4999 is not registered" in unknown[DLQ_REASON]

    # Nothing ran: no marker, no processing state, no value of the forged requests.
    assert not marker.exists()
    states = await fetch(
        e2e.dsn, "SELECT request_id FROM processing_state WHERE request_id LIKE 'forged-%'"
    )
    assert states == []
    assert await fetch(e2e.dsn, "SELECT * FROM run_values WHERE name = 'evil'") == []
    early_states = await fetch(
        e2e.dsn, "SELECT status FROM processing_state WHERE request_id = 'early'"
    )
    assert [r["status"] for r in early_states] == ["finished"]
    genuine = await fetch(
        e2e.dsn, "SELECT status FROM processing_state WHERE proposal = $1 AND run = 1", PROPOSAL
    )
    assert genuine
    assert {r["status"] for r in genuine} <= {"finished", "running", "queued"}


def digest(path: Path) -> tuple[str, float]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime


def needs_fragment(name: str) -> VariableResult:
    return VariableResult(name=name, summary=1.0, in_fragment=True)


async def test_forged_results_cannot_write_or_delete_outside_the_proposal(e2e: E2E) -> None:
    # The victim: another proposal with its run file and a fragment waiting to be merged.
    victim = e2e.root / "victim"
    victim_fragment = victim / "extracted_data" / "fragments" / f"p{VICTIM}_r1.abcd.h5"
    victim_fragment.parent.mkdir(parents=True)
    victim_fragment.write_bytes(b"the victim's fragment")
    victim_run_file = victim / "extracted_data" / f"p{VICTIM}_r1.h5"
    victim_run_file.write_bytes(b"the victim's run file")
    (victim / "context.py").write_text("# the victim's context\n")
    before = {p: digest(p) for p in (victim_fragment, victim_run_file, victim / "context.py")}
    await send(
        e2e.kafka,
        e2e.kafka.topics.proposals,
        [(ProposalRegistered(proposal=VICTIM, context_dir=str(victim)), proposal_key(VICTIM))],
    )
    # The attacker's proposal may write its own extracted_data, links included.
    own = e2e.context_dir / "extracted_data"
    own.mkdir()
    (own / "link").symlink_to(victim / "extracted_data")

    e2e.system.env["RUNSTREAM_STORE_REGISTRY_WAIT_S"] = "2"
    await e2e.system.start("store")

    def forged(result_id: str, proposal: int, context_dir: Path | str, fragment: Path | str) -> Any:
        message = ResultsReady(
            result_id=result_id,
            request_id=result_id,
            processing_id=result_id,
            proposal=proposal,
            run=1,
            trigger=Trigger.RAW,
            context_hash="h",
            revision=1,
            context_dir=str(context_dir),
            fragment=str(fragment),
            results=(needs_fragment("stolen"),),
        )
        return message, run_key(proposal, 1)

    attacks = {
        # the victim's folder as this proposal's: its run file written, its fragment deleted
        "victim-folder": (forged("victim-folder", PROPOSAL, victim, victim_fragment), "PathRefused",
                          f"context_dir {victim} is not the registered context folder"),
        # this proposal's folder, the victim's fragment
        "victim-fragment": (forged("victim-fragment", PROPOSAL, e2e.context_dir, victim_fragment),
                            "PathRefused", f"fragment {victim_fragment} is not inside {own}"),
        # a link inside extracted_data that leads out of it
        "link": (forged("link", PROPOSAL, e2e.context_dir,
                        own / "link" / "fragments" / victim_fragment.name),
                 "PathRefused", "(symbolic links resolved)"),
        # '..' out of extracted_data
        "dot-dot": (forged("dot-dot", PROPOSAL, e2e.context_dir,
                           f"{own}/../../victim/extracted_data/fragments/{victim_fragment.name}"),
                    "PathRefused", "contains '..'"),
        # a proposal nobody registered
        "unregistered": (forged("unregistered", 4999, victim, victim_fragment), "UnknownProposal",
                         "proposal 4999 is not registered"),
    }  # fmt: skip
    await send(e2e.kafka, e2e.kafka.topics.results, [m for m, _, _ in attacks.values()])

    # A genuine result of the same proposal, its fragment in its own extracted_data.
    frag = Fragment(e2e.context_dir, PROPOSAL, 1)
    frag.array("trace", np.linspace(0, 1, 50))
    genuine = frag.message(revision=1, result_id="genuine")
    assert frag.path is not None
    await send(e2e.kafka, e2e.kafka.topics.results, [(genuine, run_key(PROPOSAL, 1))])

    async def applied() -> bool:
        return bool(await fetch(e2e.dsn, "SELECT result_id FROM applied_results"))

    await wait_until(applied, timeout=90, what="the genuine result", logs=e2e.system.logs)
    reasons = await dead_letters_of(e2e.kafka, e2e.kafka.topics.results, len(attacks), "result_id")
    assert set(reasons) == set(attacks), e2e.system.logs()
    rows = await fetch(e2e.dsn, "SELECT result_id FROM applied_results")
    assert [r["result_id"] for r in rows] == ["genuine"]
    for name, (_, error_class, reason) in attacks.items():
        assert reasons[name][DLQ_ERROR_CLASS] == error_class, reasons[name]
        assert reason in reasons[name][DLQ_REASON], reasons[name]

    # The genuine result went in; its fragment, in the proposal's own folder, was consumed.
    assert (own / f"p{PROPOSAL}_r1.h5").is_file()
    await asyncio.sleep(0.5)
    assert not frag.path.exists()
    # Nothing of the victim was written, replaced or deleted, and nothing was created there.
    assert {p: digest(p) for p in before} == before
    assert sorted(p.name for p in (victim / "extracted_data").iterdir()) == [
        "fragments",
        victim_run_file.name,
    ]
    assert [p.name for p in victim_fragment.parent.iterdir()] == [victim_fragment.name]
    assert await fetch(e2e.dsn, "SELECT * FROM run_values WHERE name = 'stolen'") == []
