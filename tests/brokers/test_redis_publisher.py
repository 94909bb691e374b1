"""The Redis adapter's publishing connection: concurrency, cancellation, errors, lost connections."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from aiocelev import OutgoingMessage, PublishError
from aiocelev._codec import decode_message, encode_event
from aiocelev.brokers.redis import RedisBroker, from_url

from .test_redis import _kill_clients, _prefix

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


def _event(sender: str, n: int) -> OutgoingMessage:
    body = encode_event(
        {"hostname": sender, "clock": n, "timestamp": 1700000000.0 + n, "type": "worker-heartbeat"}
    )
    return OutgoingMessage(routing_key="worker.heartbeat", body=body)


async def _subscribed_and_warm(pub: RedisBroker, con: RedisBroker) -> Any:
    """A subscription of *con*, with *pub*'s publishing connection open (one event through)."""
    sub = await con.subscribe(["#"])
    await pub.publish([_event("warm", 0)])
    decode_message(await sub.__anext__())
    return sub


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[RedisBroker, RedisBroker, str]]:
    prefix, name = _prefix(), f"aiocelev-pub-{uuid.uuid4().hex[:8]}"
    pub = from_url(redis_url, global_keyprefix=prefix, client_name=name)
    con = from_url(redis_url, global_keyprefix=prefix)
    try:
        yield pub, con, name
    finally:
        await pub.aclose()
        await con.aclose()


async def test_concurrent_publishers_lose_nothing_and_keep_their_order(
    pair: tuple[RedisBroker, RedisBroker, str],
) -> None:
    pub, con, _ = pair
    sub = await con.subscribe(["#"])
    senders, batches, size = 4, 30, 5

    async def publish(sender: str) -> None:
        for b in range(batches):
            await pub.publish([_event(sender, b * size + i) for i in range(size)])

    async with anyio.create_task_group() as tg:
        for s in range(senders):
            tg.start_soon(publish, f"s{s}")
    seen: dict[str, list[int]] = {}
    with anyio.fail_after(10):
        for _ in range(senders * batches * size):
            [event], _ = decode_message(await sub.__anext__())
            seen.setdefault(event["hostname"], []).append(event["clock"])
    assert seen == {f"s{s}": list(range(batches * size)) for s in range(senders)}
    await sub.aclose()


async def test_a_cancelled_publish_leaves_no_connection_behind(
    pair: tuple[RedisBroker, RedisBroker, str],
) -> None:
    pub, con, _ = pair
    sub = await _subscribed_and_warm(pub, con)
    assert pub._publisher is not None and pub._publisher._conn is not None
    cancelled = 0
    for attempt in range(50):
        # cancelled at some point of the write or of reading the replies
        with anyio.move_on_after(0.0002 * attempt) as scope:
            await pub.publish([_event("big", i) for i in range(2000)])
        if scope.cancelled_caught:
            cancelled += 1
            # the half-read connection was closed, not kept for the next publish
            assert pub._publisher is not None and pub._publisher._conn is None
    assert cancelled
    # a later publish opens a fresh connection and its event arrives
    await pub.publish([_event("after", 1)])
    with anyio.fail_after(10):
        while True:
            [event], _ = decode_message(await sub.__anext__())
            if event["hostname"] == "after":
                break
    await sub.aclose()


async def test_an_idle_publishing_connection_killed_by_the_server_is_replaced(
    pair: tuple[RedisBroker, RedisBroker, str], redis_url: str
) -> None:
    pub, con, name = pair
    sub = await _subscribed_and_warm(pub, con)
    assert await _kill_clients(redis_url, name) >= 1
    for n in range(3):  # no error: the dead connection is replaced (or the write retried)
        await pub.publish([_event("after", n)])
    with anyio.fail_after(10):
        clocks = [decode_message(await sub.__anext__())[0][0]["clock"] for _ in range(3)]
    assert clocks == [0, 1, 2]
    assert pub.publish_reconnects == 0  # no publish ever failed
    await sub.aclose()


async def test_an_error_reply_is_a_publish_error_and_the_next_publish_works(
    redis_url: str,
) -> None:
    user, password = f"aiocelev-nopub-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = aioredis.Redis.from_url(redis_url, protocol=2)
    await admin.execute_command(
        "ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-publish"
    )
    broker = from_url(
        redis_url.replace("redis://", f"redis://{user}:{password}@", 1),
        global_keyprefix=_prefix(),
    )
    try:
        for _ in range(2):
            with pytest.raises(PublishError) as info:
                await broker.publish([_event("denied", 0)])
            assert "publish" in str(info.value).lower()
            assert password not in str(info.value)
        # the user may publish again: the same broker's next publish goes through
        await admin.execute_command("ACL", "SETUSER", user, "+publish")
        await broker.publish([_event("allowed", 1)])
    finally:
        await broker.aclose()
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()
