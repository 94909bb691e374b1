"""Remote control on Redis (RedisControl): kombu's bytes, a client and a node talking,
replies streamed, early stops, reply queues cleaned up, malformed envelopes survived."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import redis.asyncio as aioredis

from aiocelev import ControlReply, DuplicateNodeError, EventReceiver, OutgoingMessage
from aiocelev._codec import encode_event
from aiocelev._control import ControlRequest
from aiocelev.brokers import ControlTransport
from aiocelev.brokers._redis_envelope import encode_envelope
from aiocelev.brokers.redis import RedisBroker, RedisControl, from_url

from .test_redis import RawCapture

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "celery-5.7.0"
BINDING = "_kombu.binding.reply.celery.pidbox"
DEADLINES = "_kombu.binding_deadlines"

pytestmark = [pytest.mark.timeout(60), pytest.mark.redis]


def _prefix() -> str:
    return f"aiocelev-ctl-{uuid.uuid4().hex[:12]}:"


def _node() -> str:
    return f"node-{uuid.uuid4().hex[:8]}@test"


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, protocol=2)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def brokers(redis_url: str) -> AsyncIterator[tuple[RedisBroker, RedisBroker, str]]:
    """A client's and a node's adapter on one private key prefix."""
    prefix = _prefix()
    client, node = (
        from_url(redis_url, global_keyprefix=prefix),
        from_url(redis_url, global_keyprefix=prefix),
    )
    try:
        yield client, node, prefix
    finally:
        await client.aclose()
        await node.aclose()


async def _serve(
    control: RedisControl,
    nodename: str,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    payload: Any = None,
    seen: list[ControlRequest] | None = None,
) -> None:
    """A node: answers every request addressed to it (``pong`` unless *payload*)."""
    pidbox = await control.consume_control(nodename)
    task_status.started()
    try:
        async for request in pidbox:
            if seen is not None:
                seen.append(request)
            if request.addressed_to(nodename):
                await control.reply(
                    request, nodename, payload if payload is not None else {"ok": "pong"}
                )
    finally:
        with anyio.CancelScope(shield=True):
            await pidbox.aclose()


async def _reply_state(admin: aioredis.Redis, prefix: str) -> tuple[set[bytes], list[bytes]]:
    """The reply binding members and every reply list under *prefix*."""
    members = await admin.smembers(prefix + BINDING)
    lists = [key async for key in admin.scan_iter(match=f"{prefix}*.reply.celery.pidbox")]
    return members, lists


def test_control_is_cached_and_a_transport() -> None:
    broker = from_url("redis://127.0.0.1:6379/3", global_keyprefix="p:")
    control = broker.control()
    assert control is broker.control()
    assert isinstance(control, ControlTransport)
    assert control.namespace == "celery"
    assert "p:/3.celery.pidbox" in control.identity
    assert from_url("redis://127.0.0.1/0", control_exchange="ops").control().namespace == "ops"
    for gone in ("broadcast", "consume_control", "reply"):
        assert not hasattr(broker, gone)


async def test_ping_round_trip(
    brokers: tuple[RedisBroker, RedisBroker, str], redis_url: str, admin: aioredis.Redis
) -> None:
    client, node_broker, prefix = brokers
    node = _node()
    seen: list[ControlRequest] = []
    async with RawCapture(redis_url, f"{prefix}*") as raw, anyio.create_task_group() as tg:
        await tg.start(lambda task_status: _serve(node_broker.control(), node, seen=seen,
                                                   task_status=task_status))  # fmt: skip
        with anyio.fail_after(20):
            replies = await client.control().broadcast("ping", destination=[node], timeout=15)
        assert replies == [ControlReply(node, {"ok": "pong"})]
        # the request went out as kombu sends it
        channel, payload = await raw.next()
        tg.cancel_scope.cancel()
    assert channel == f"{prefix}/0.celery.pidbox"
    envelope = json.loads(payload)
    assert envelope["properties"]["delivery_mode"] == 2
    assert envelope["properties"]["delivery_info"] == {
        "exchange": "celery.pidbox",
        "routing_key": "",
    }
    assert list(envelope["headers"]) == ["clock", "expires"]
    [request] = seen
    assert request.method == "ping" and request.destination == (node,)
    assert request.reply_to is not None
    assert request.reply_to["exchange"] == "reply.celery.pidbox"
    # the node merged the client's clock, the client the node's
    assert client.control().clock.value > 1 and node_broker.control().clock.value > 1
    assert await _reply_state(admin, prefix) == (set(), [])


async def test_replies_stream_before_the_timeout(
    brokers: tuple[RedisBroker, RedisBroker, str],
) -> None:
    client, node_broker, _ = brokers
    node = _node()
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: _serve(node_broker.control(), node,
                                                   task_status=task_status))  # fmt: skip
        # no limit, no destination: the stream stays open for a minute, yet the
        # first reply comes out as soon as it arrives
        with anyio.fail_after(15):
            async with client.control().broadcast("ping", timeout=60) as replies:
                first = await replies.__anext__()
                assert first == ControlReply(node, {"ok": "pong"})
                assert replies.received == 1 and replies.nodes == {node}
        tg.cancel_scope.cancel()


async def test_limit_and_destination_stop_early(
    brokers: tuple[RedisBroker, RedisBroker, str],
) -> None:
    client, node_broker, _ = brokers
    first, second = _node(), _node()
    control = client.control()
    async with anyio.create_task_group() as tg:
        for name in (first, second):
            await tg.start(lambda task_status, name=name: _serve(node_broker.control(), name,
                                                                  task_status=task_status))  # fmt: skip
        with anyio.fail_after(15):  # both would block for a minute without the early stop
            limited = await control.broadcast("ping", timeout=60, limit=1)
            assert len(limited) == 1 and limited[0].node in (first, second)
            addressed = await control.broadcast("ping", destination=[second], timeout=60)
            assert addressed == [ControlReply(second, {"ok": "pong"})]
            both = await control.broadcast("ping", destination=[first, second], timeout=60)
            assert sorted(r.node for r in both) == sorted([first, second])
        tg.cancel_scope.cancel()


async def test_reply_queue_and_binding_are_removed(
    brokers: tuple[RedisBroker, RedisBroker, str], admin: aioredis.Redis
) -> None:
    """However the block ends: left early, cancelled while waiting, or timed out."""
    client, _, prefix = brokers
    control = client.control()
    for how in ("leave", "cancel", "timeout"):
        with anyio.CancelScope() as scope:
            timeout = 0.5 if how == "timeout" else 60
            async with control.broadcast("ping", timeout=timeout) as replies:
                [member] = await admin.smembers(prefix + BINDING)
                key, pattern, queue = member.decode().split("\x06\x16")
                assert pattern == "" and queue == f"{key}.reply.celery.pidbox"
                assert await admin.zscore(prefix + DEADLINES, "reply.celery.pidbox")
                # replies for another ticket: ignored, and they keep the list alive
                stale = OutgoingMessage(key, b'{"x@y": {"ok": "pong"}}', {"ticket": "other"})
                for _ in range(3):
                    await admin.lpush(prefix + queue, encode_envelope(stale, "reply.celery.pidbox"))
                if how == "cancel":
                    scope.cancel()
                    await replies.__anext__()  # cancelled while it waits
                elif how == "timeout":
                    with anyio.fail_after(10):
                        assert [reply async for reply in replies] == []
        assert scope.cancelled_caught == (how == "cancel")
        assert await _reply_state(admin, prefix) == (set(), [])
    # the adapter is still fine, and without replies no reply queue is made at all
    assert await control.broadcast("ping", timeout=0.2) == []
    assert await control.broadcast("enable_events", reply=False) == []
    assert await _reply_state(admin, prefix) == (set(), [])


async def test_closing_the_adapter_removes_open_reply_queues(
    redis_url: str, admin: aioredis.Redis
) -> None:
    prefix = _prefix()
    broker = from_url(redis_url, global_keyprefix=prefix)
    try:
        async with broker.control().broadcast("ping", timeout=60) as replies:
            [member] = await admin.smembers(prefix + BINDING)
            queue = member.decode().split("\x06\x16")[2]
            await admin.lpush(prefix + queue, b"keeps the list alive")
            await broker.aclose()
            assert await _reply_state(admin, prefix) == (set(), [])
            with anyio.fail_after(5):
                assert [reply async for reply in replies] == []
    finally:
        await broker.aclose()


async def test_malformed_reply_is_counted_and_the_stream_goes_on(
    brokers: tuple[RedisBroker, RedisBroker, str],
    admin: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, node_broker, prefix = brokers
    node = _node()
    caplog.set_level(logging.WARNING, logger="aiocelev.brokers.redis")
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: _serve(node_broker.control(), node,
                                                   task_status=task_status))  # fmt: skip
        with anyio.fail_after(15):
            async with client.control().broadcast("ping", destination=[node], timeout=60) as rs:
                [member] = await admin.smembers(prefix + BINDING)
                queue = member.decode().split("\x06\x16")[2]
                # RPUSH: at the end BRPOP takes from, ahead of the node's reply
                for junk in (b"not an envelope", b'{"body": 1}', b"\xff"):
                    await admin.rpush(prefix + queue, junk)
                got = [reply async for reply in rs]
        tg.cancel_scope.cancel()
    assert got == [ControlReply(node, {"ok": "pong"})]
    warnings = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) == 3


async def test_malformed_request_is_counted_and_the_node_goes_on(
    brokers: tuple[RedisBroker, RedisBroker, str],
    admin: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, node_broker, prefix = brokers
    control = node_broker.control()
    caplog.set_level(logging.WARNING, logger="aiocelev.brokers.redis")
    node = _node()
    pidbox = await control.consume_control(node)
    try:
        channel = f"{prefix}/0.celery.pidbox"
        not_a_request = OutgoingMessage("", b'{"no": "method"}')
        assert await admin.publish(channel, b"not an envelope") == 1
        assert await admin.publish(channel, encode_envelope(not_a_request, "celery.pidbox")) == 1
        await client.control().broadcast("heartbeat", reply=False)
        with anyio.fail_after(10):
            request = await pidbox.__anext__()
        assert request.method == "heartbeat"
        warnings = [r for r in caplog.records if "malformed remote-control request" in r.message]
        assert len(warnings) == 2
    finally:
        await pidbox.aclose()


async def test_malformed_event_envelope_is_counted_by_the_receiver(
    brokers: tuple[RedisBroker, RedisBroker, str], admin: aioredis.Redis
) -> None:
    """The adapter hands a malformed envelope up marked as such: counted as ``envelope``."""
    _, consumer, prefix = brokers

    def event(n: int) -> bytes:
        data = {"hostname": "h@x", "clock": n, "timestamp": 1.0 + n, "type": "worker-heartbeat"}
        return encode_envelope(
            OutgoingMessage("worker.heartbeat", encode_event(data), {"hostname": "h@x"}),
            "celeryev",
        )

    channel = f"{prefix}/0.celeryev/worker.heartbeat"
    errors: list[Any] = []
    async with EventReceiver(consumer, on_error=lambda e, m: errors.append((e, m))) as receiver:
        await admin.publish(channel, event(1))
        await admin.publish(channel, b'{"body": "!!", "properties": {"body_encoding": "base64"}}')
        await admin.publish(channel, event(2))
        with anyio.fail_after(10):
            got = [await receiver.receive(), await receiver.receive()]
        stats = receiver.statistics()
    assert [e.clock for e in got] == [1, 2]
    assert stats.malformed == {"envelope": 1}
    [(error, message)] = errors
    assert error.reason == "envelope" and message.routing_key == "worker.heartbeat"


async def test_duplicate_node_names_in_one_process(
    brokers: tuple[RedisBroker, RedisBroker, str],
) -> None:
    client, node_broker, _ = brokers
    node = _node()
    pidbox = await node_broker.control().consume_control(node)
    try:
        # same server, same channels: the same place for node names
        with pytest.raises(DuplicateNodeError):
            await client.control().consume_control(node)
    finally:
        await pidbox.aclose()
    again = await client.control().consume_control(node)
    await again.aclose()


async def test_reply_and_request_envelopes_match_a_celery_worker(
    brokers: tuple[RedisBroker, RedisBroker, str], redis_url: str, admin: aioredis.Redis
) -> None:
    """Byte for byte what Celery 5.7 / kombu 5.7 put on Redis (but the delivery tag)."""
    document = json.loads((FIXTURES / "control-redis.json").read_text())
    capture = next(c for c in document["captures"] if c["name"] == "inspect.ping")
    [reply] = capture["replies"]
    request = capture["request"]
    client, node_broker, prefix = brokers
    # the reply: LPUSHed onto the list bound with the reply key
    key = reply["routing_key"]
    queue = f"{key}.reply.celery.pidbox"
    await admin.sadd(prefix + BINDING, f"{key}\x06\x16\x06\x16{queue}")
    try:
        await node_broker.control().send_reply(
            {"exchange": reply["exchange"], "routing_key": key},
            reply["body"].encode(),
            reply["headers"],
        )
        pushed = await admin.rpop(prefix + queue)
    finally:
        await admin.delete(prefix + BINDING, prefix + queue)
    tag = json.loads(pushed)["properties"]["delivery_tag"]
    want = reply["envelope"].replace(reply["properties"]["delivery_tag"], tag)
    assert pushed.decode() == want
    # the request: PUBLISHed on the pidbox channel
    async with RawCapture(redis_url, f"{prefix}*") as raw:
        await client.control().publish_request(request["body"].encode(), request["headers"])
        channel, payload = await raw.next()
    assert channel == prefix + request["channel"]
    tag = json.loads(payload)["properties"]["delivery_tag"]
    want = request["envelope"].replace(request["properties"]["delivery_tag"], tag)
    assert payload.decode() == want


async def test_a_reply_nobody_waits_for_is_dropped(
    brokers: tuple[RedisBroker, RedisBroker, str], admin: aioredis.Redis
) -> None:
    _, node_broker, prefix = brokers
    await node_broker.control().send_reply(
        {"exchange": "reply.celery.pidbox", "routing_key": "gone"}, b'{"n@h": {}}', {}
    )
    assert await _reply_state(admin, prefix) == (set(), [])


async def test_unreachable_redis_raises_aiocelev_errors() -> None:
    from aiocelev import BrokerConnectionError

    broker = from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    try:
        control = broker.control()
        with pytest.raises(BrokerConnectionError):
            await control.broadcast("ping", timeout=0.5)
        with pytest.raises(BrokerConnectionError):
            await control.broadcast("ping", reply=False)
        with pytest.raises(BrokerConnectionError):
            await control.consume_control(_node())
        with pytest.raises(BrokerConnectionError):
            await control.send_reply({"routing_key": "k"}, b"{}", {})
    finally:
        await broker.aclose()
