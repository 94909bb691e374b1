"""Queue depths from the real brokers (the dashboard's broker page)."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import pytest
import redis.asyncio as aioredis

from aiocelev.brokers import QueueInfo, QueueInspector, open_broker


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def test_memory_broker_has_no_queue_depths() -> None:
    broker = open_broker("memory://queues")
    assert not isinstance(broker, QueueInspector)


async def test_rabbitmq_passive_declare_gives_messages_and_consumers(amqp_url: str) -> None:
    name, missing = _name("qi-amqp"), _name("qi-missing")
    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel()
        queue = await channel.declare_queue(name, auto_delete=False)
        for n in range(3):
            await channel.default_exchange.publish(aio_pika.Message(b"%d" % n), routing_key=name)
        consumer_channel = await conn.channel()
        consumed = await consumer_channel.declare_queue(name, passive=True)
        await consumer_channel.set_qos(prefetch_count=1)

        async def hold(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            held.append(message)  # never acknowledged: one message stays with this consumer

        held: list[aio_pika.abc.AbstractIncomingMessage] = []
        tag = await consumed.consume(hold, no_ack=False)
        while not held:
            await asyncio.sleep(0.01)
        async with open_broker(amqp_url) as broker:
            assert isinstance(broker, QueueInspector)
            info = await broker.queue_info([missing, name, missing])
        assert info[0] == QueueInfo(missing, None, None)
        assert info[2] == QueueInfo(missing, None, None)  # a missing queue does not break the rest
        assert info[1].name == name and info[1].consumers == 1
        assert info[1].messages == 2  # ready ones: one is delivered to the consumer
        await consumed.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await conn.close()


async def test_redis_llen_sums_kombus_priority_lists(redis_url: str) -> None:
    name, empty_missing = _name("qi-redis"), _name("qi-missing")
    client = aioredis.from_url(redis_url)
    try:
        await client.rpush(name, b"a", b"b")
        await client.rpush(f"{name}\x06\x163", b"c")
        await client.rpush(f"{name}\x06\x169", b"d", b"e")
        async with open_broker(redis_url) as broker:
            assert isinstance(broker, QueueInspector)
            info = await broker.queue_info([name, empty_missing])
        # Redis deletes emptied lists: a missing queue is an empty one.
        assert info == [QueueInfo(name, 5, None), QueueInfo(empty_missing, 0, None)]
    finally:
        await client.delete(name, f"{name}\x06\x163", f"{name}\x06\x169")
        await client.aclose()


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
async def test_unreachable_broker_raises_aiocelevs_error(scheme: str) -> None:
    from aiocelev import BrokerError

    url = "redis://127.0.0.1:1/0" if scheme == "redis" else "amqp://guest:guest@127.0.0.1:1//"
    key = "socket_connect_timeout" if scheme == "redis" else "connect_timeout"
    broker = open_broker(url, **{key: 0.5})
    try:
        with pytest.raises(BrokerError):
            await broker.queue_info(["celery"])  # type: ignore[attr-defined]
    finally:
        await broker.aclose()
