"""The proposal registry on the real broker: read to its end at start, late registrations wait."""

from __future__ import annotations

import asyncio

import pytest
from runstream_common.admin import ensure_topics
from runstream_common.errors import PathRefused, UnknownProposal
from runstream_common.kafka import make_broker, publish
from runstream_common.messages import ProposalRegistered, ProposalRemoved
from runstream_common.registry import ProposalRegistry, Registration, refuse_unless
from runstream_common.settings import KafkaSettings
from runstream_common.topics import proposal_key

pytestmark = pytest.mark.integration


def wants(context_dir: str):  # type: ignore[no-untyped-def]
    """A verdict: the proposal must be registered with ``context_dir``."""

    async def verdict(reg: Registration | None) -> PathRefused | UnknownProposal | None:
        if reg is None:
            return UnknownProposal("not registered")
        return refuse_unless(reg.context_dir == context_dir, f"not {reg.context_dir}")

    return verdict


async def test_registry_is_read_to_its_end_then_followed(kafka_settings: KafkaSettings) -> None:
    topic = kafka_settings.topics.proposals
    await ensure_topics(kafka_settings, [topic], compacted={topic})
    broker = make_broker(kafka_settings, client_id="test-registrar")
    await broker.connect()

    async def register(proposal: int, context_dir: str | None) -> None:
        event = (
            ProposalRemoved(proposal=proposal)
            if context_dir is None
            else ProposalRegistered(proposal=proposal, context_dir=context_dir)
        )
        await publish(broker, topic, event, key=proposal_key(proposal))

    registry = ProposalRegistry(kafka_settings, client_id="test-registry", wait_s=3.0)
    try:
        for p in range(1, 41):  # spread over every partition
            await register(p, f"/old/{p}")
        await register(7, "/new/7")
        await register(8, None)
        await registry.start(timeout_s=30)
        # Everything published before start() returned is in the table already.
        assert len(registry.table) == 39
        assert registry.get(7) == Registration(7, "/new/7", None)
        assert registry.get(8) is None
        assert (await registry.judge(7, wants("/new/7"))).context_dir == "/new/7"

        # A registration published a moment after the message is judged: accepted.
        async def late() -> None:
            await asyncio.sleep(1.0)
            await register(100, "/ctx/100")

        await asyncio.gather(late(), registry.judge(100, wants("/ctx/100")))
        assert registry.get(100) == Registration(100, "/ctx/100", None)

        # A changed folder is seen before the message is judged against it.
        await register(5, "/moved/5")
        assert (await registry.judge(5, wants("/moved/5"))).context_dir == "/moved/5"

        # Folders that still disagree once the registry is read to its end: refused.
        with pytest.raises(PathRefused, match="not /moved/5"):
            await registry.judge(5, wants("/old/5"))
        # A proposal that stays unregistered is waited for (wait_s), then refused.
        with pytest.raises(UnknownProposal):
            await registry.judge(999, wants("/x"))
        # A removal is followed too (a match is not re-read: it counts once the follower has it).
        await register(100, None)
        await registry.sync(10)
        with pytest.raises(UnknownProposal):
            await registry.judge(100, wants("/ctx/100"))
    finally:
        await registry.stop()
        await broker.stop()
