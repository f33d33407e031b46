"""At-least-once delivery through the real local Kafka broker."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from runstream_common import parsers
from runstream_common.admin import ensure_topics
from runstream_common.errors import PermanentError, TransientError
from runstream_common.kafka import Delivery, RetryPolicy, make_broker, publish, subscribe
from runstream_common.messages import RunRequested, SetComment
from runstream_common.settings import KafkaSettings, ServiceSettings
from runstream_common.topics import dlq, run_key
from support.kafka import committed_offsets, read_all, wait_for

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
FAST = RetryPolicy(max_attempts=2, backoff_s=0.05, backoff_max_s=0.05, transient_window_s=30)


def _run(run: int) -> RunRequested:
    return RunRequested(
        request_id=f"req-{run}",
        proposal=2212,
        run=run,
        trigger="raw",
        context_dir="/ctx",
        proposal_dir="/data",
    )


async def test_typed_message_round_trips_and_is_committed_only_after_the_handler(
    kafka_settings: KafkaSettings,
) -> None:
    topic = kafka_settings.topics.runs
    group = f"{kafka_settings.topic_prefix}-g"
    await ensure_topics(kafka_settings, [topic])
    settings = ServiceSettings(kafka=kafka_settings)
    received: asyncio.Queue[tuple[RunRequested, Delivery]] = asyncio.Queue()
    release = asyncio.Event()

    async def handler(message: RunRequested, delivery: Delivery) -> None:
        await received.put((message, delivery))
        await release.wait()

    consumer = make_broker(kafka_settings, client_id="consumer")
    subscribe(
        consumer, topic, group_id=group, parser=parsers.RUNS, handler=handler, settings=settings
    )
    producer = make_broker(kafka_settings, client_id="producer")
    await consumer.start()
    await producer.connect()
    try:
        sent = _run(42)
        await publish(producer, topic, sent, key=run_key(2212, 42))
        got, delivery = await asyncio.wait_for(received.get(), 60)
        assert got == sent
        assert delivery.key == b"2212/42"

        # The handler has the message but has not returned: nothing is committed yet.
        await asyncio.sleep(1.0)
        assert (topic, delivery.partition) not in await committed_offsets(kafka_settings, group)

        release.set()

        async def committed() -> bool:
            offsets = await committed_offsets(kafka_settings, group)
            return offsets.get((topic, delivery.partition)) == delivery.offset + 1

        await wait_for(committed, timeout=30)
    finally:
        release.set()
        await consumer.stop()
        await producer.stop()


async def test_transient_is_retried_bad_input_is_dead_lettered_and_the_stream_goes_on(
    kafka_settings: KafkaSettings,
) -> None:
    # One partition so the order of records is the order of sending.
    topic = kafka_settings.topics.runs
    group = f"{kafka_settings.topic_prefix}-g"
    await ensure_topics(kafka_settings, [topic], partitions=1)
    settings = ServiceSettings(kafka=kafka_settings)
    calls: list[tuple[int, int]] = []
    done = asyncio.Event()
    hiccups = {"left": 1}

    async def handler(message: RunRequested, delivery: Delivery) -> None:
        calls.append((message.run, delivery.attempt))
        if message.run == 1 and hiccups["left"]:
            hiccups["left"] -= 1
            raise TransientError("database briefly away")
        if message.run == 13:
            raise PermanentError("run 13 is not on disk")
        if message.run == 99:
            done.set()

    consumer = make_broker(kafka_settings, client_id="consumer")
    subscribe(
        consumer,
        topic,
        group_id=group,
        parser=parsers.RUNS,
        handler=handler,
        settings=settings,
        retry=FAST,
    )
    producer = make_broker(kafka_settings, client_id="producer")
    await consumer.start()
    await producer.connect()
    try:
        good = parsers.encode(_run(1))
        wrong_type = parsers.encode(SetComment(proposal=1, run=1, text="hi"))
        missing_field = good.replace(b'"request_id":"req-1",', b"")
        for payload in (good, b"{not json", wrong_type, missing_field):
            await producer.publish(payload, topic=topic, key=b"k")
        await publish(producer, topic, _run(13), key=b"k")
        await publish(producer, topic, _run(99), key=b"k")
        await asyncio.wait_for(done.wait(), 60)
    finally:
        await consumer.stop()
        await producer.stop()

    assert calls == [(1, 1), (1, 2), (13, 1), (99, 1)]
    dead = await read_all(kafka_settings, dlq(topic), expected=4)
    reasons = [dict(r.headers)["x-dlq-reason"].decode() for r in dead]
    assert len(dead) == 4
    assert "Invalid JSON" in reasons[0]
    assert "run_requested" in reasons[1]  # wrong type: says which types the topic takes
    assert "request_id: Field required" in reasons[2]
    assert reasons[3] == "run 13 is not on disk"
    assert dead[0].value == b"{not json"
    assert [int(dict(r.headers)["x-dlq-source-offset"]) for r in dead] == [1, 2, 3, 4]
    assert {dict(r.headers)["x-dlq-source-topic"].decode() for r in dead} == {topic}


async def test_a_consumer_killed_before_committing_loses_nothing(
    kafka_settings: KafkaSettings,
) -> None:
    topic = kafka_settings.topics.runs
    group = f"{kafka_settings.topic_prefix}-g"
    await ensure_topics(kafka_settings, [topic], partitions=1)
    producer = make_broker(kafka_settings, client_id="producer")
    await producer.connect()
    try:
        await publish(producer, topic, _run(7), key=b"k")
    finally:
        await producer.stop()

    env = {
        **os.environ,
        "RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "RUNSTREAM_KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
    }
    victim = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "consumer_that_dies.py"),
        topic,
        group,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out_b, err_b = await asyncio.wait_for(victim.communicate(), 120)
    out, err = out_b.decode(), err_b.decode()
    assert victim.returncode == -signal.SIGKILL, err
    assert "received run 7" in out
    assert (topic, 0) not in await committed_offsets(kafka_settings, group)

    settings = ServiceSettings(kafka=kafka_settings)
    received: asyncio.Queue[RunRequested] = asyncio.Queue()

    async def handler(message: RunRequested, delivery: Delivery) -> None:
        await received.put(message)

    survivor = make_broker(kafka_settings, client_id="survivor")
    subscribe(
        survivor, topic, group_id=group, parser=parsers.RUNS, handler=handler, settings=settings
    )
    await survivor.start()
    try:
        again = await asyncio.wait_for(received.get(), 90)
        assert again.run == 7

        async def committed() -> Any:
            return (await committed_offsets(kafka_settings, group)).get((topic, 0)) == 1

        await wait_for(committed, timeout=30)
    finally:
        await survivor.stop()


async def test_a_record_whose_dead_letter_cannot_be_published_is_not_committed(
    kafka_settings: KafkaSettings,
) -> None:
    """Broken JSON, then a good record; the dead-letter publish fails for a while (a broker
    blip, longer than the retry window). The bad record must not be committed past: it comes
    again, is dead-lettered once the broker takes it, and the good record follows."""
    topic = kafka_settings.topics.runs
    group = f"{kafka_settings.topic_prefix}-g"
    await ensure_topics(kafka_settings, [topic], partitions=1)
    settings = ServiceSettings(kafka=kafka_settings)
    handled: list[int] = []
    window = RetryPolicy(max_attempts=1, backoff_s=0.05, backoff_max_s=0.1, transient_window_s=0.5)

    async def handler(message: RunRequested, delivery: Delivery) -> None:
        handled.append(message.run)

    consumer = make_broker(kafka_settings, client_id="consumer")
    subscribe(
        consumer,
        topic,
        group_id=group,
        parser=parsers.RUNS,
        handler=handler,
        settings=settings,
        retry=window,
    )
    blip = {"on": True, "refused": 0}  # the test ends the blip (a clock raced a slow start)
    real_publish = consumer.publish

    async def flaky_publish(*args: Any, **kw: Any) -> Any:
        if kw.get("topic", "").endswith(".dlq") and blip["on"]:
            blip["refused"] += 1
            from aiokafka.errors import KafkaConnectionError

            raise KafkaConnectionError("broker blip")
        return await real_publish(*args, **kw)

    consumer.publish = flaky_publish  # type: ignore[method-assign]
    producer = make_broker(kafka_settings, client_id="producer")
    await producer.connect()
    await producer.publish(b"{broken", topic=topic, key=b"k")
    await producer.publish(parsers.encode(_run(7)), topic=topic, key=b"k")
    await consumer.start()
    try:

        async def refused_thrice() -> bool:  # several retry windows long
            return blip["refused"] >= 3

        await wait_for(refused_thrice, timeout=30)
        # the blip is on: nothing may be committed or handled yet
        assert handled == []
        assert (topic, 0) not in await committed_offsets(kafka_settings, group)
        blip["on"] = False

        async def through() -> bool:
            return handled == [7]

        await wait_for(through, timeout=30)
        dead = await read_all(kafka_settings, dlq(topic), 1)
        assert [r.value for r in dead] == [b"{broken"]

        async def committed() -> bool:
            return (await committed_offsets(kafka_settings, group)).get((topic, 0)) == 2

        await wait_for(committed, timeout=30)
        assert blip["refused"] >= 3  # the retry window ran out at least once: the record came again
    finally:
        await consumer.stop()
        await producer.stop()
