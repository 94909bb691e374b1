"""The Redis adapter: options, wire bytes vs kombu, conformance, topic filtering,
isolation, reconnects (CLIENT KILL, restart, output-buffer cut-off), Sentinel failover,
remote-control broadcast plumbing."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from aiocelev import (
    BrokerConnectionError,
    ClosedError,
    ConfigurationError,
    OutgoingMessage,
)
from aiocelev._codec import decode_message, encode_event
from aiocelev.brokers import open_broker
from aiocelev.brokers._redis_envelope import decode_envelope, encode_envelope
from aiocelev.brokers.redis import RedisBroker, from_url
from aiocelev.testing import check_broker

from ._redis import redis_processes, wait_port

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "celery-5.7.0"

pytestmark = pytest.mark.timeout(60)


def _prefix() -> str:
    """A unique global_keyprefix: isolates a test from everyone else on the shared server."""
    return f"aiocelev-test-{uuid.uuid4().hex[:12]}:"


def _hb(hostname: str = "test@host", n: int = 1) -> OutgoingMessage:
    event = {
        "hostname": hostname,
        "utcoffset": 0,
        "pid": 1,
        "clock": n,
        "freq": 2.0,
        "timestamp": 1700000000.0 + n,
        "type": "worker-heartbeat",
    }
    return OutgoingMessage("worker.heartbeat", encode_event(event), {"hostname": hostname})


async def _next(sub: Any, timeout: float = 10.0) -> Any:
    with anyio.fail_after(timeout):
        return await sub.__anext__()


async def _nothing(sub: Any, seconds: float = 0.3) -> Any:
    with anyio.move_on_after(seconds):
        return await sub.__anext__()
    return None


class RawCapture:
    """A plain redis-py PSUBSCRIBE: what really goes over the wire."""

    def __init__(self, url: str, pattern: str) -> None:
        self.client = aioredis.Redis.from_url(url, protocol=2)
        self.pubsub = self.client.pubsub()
        self.pattern = pattern

    async def __aenter__(self) -> RawCapture:
        await self.pubsub.psubscribe(self.pattern)
        with anyio.fail_after(5):
            while True:
                msg = await self.pubsub.get_message(timeout=1.0)
                if msg and msg["type"] == "psubscribe":
                    break
        return self

    async def next(self, timeout: float = 10.0) -> tuple[str, bytes]:
        with anyio.fail_after(timeout):
            while True:
                msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg:
                    return msg["channel"].decode(), msg["data"]

    async def __aexit__(self, *exc: object) -> None:
        await self.pubsub.aclose()
        await self.client.aclose()


async def _kill_clients(url: str, name: str) -> int:
    """CLIENT KILL every connection named *name* (only our own test connections)."""
    admin = aioredis.Redis.from_url(url, protocol=2)
    try:
        killed = 0
        for client in await admin.client_list():
            if client.get("name") == name:
                killed += int(await admin.execute_command("CLIENT", "KILL", "ID", client["id"]))
        return killed
    finally:
        await admin.aclose()


# -- options and URLs (no server needed) -----------------------------------------


def test_defaults_are_kombu_4_plus() -> None:
    broker = from_url("redis://localhost")
    assert broker.options.fanout_prefix is True
    assert broker.options.fanout_patterns is True
    assert broker.options.global_keyprefix == ""
    assert broker.options.exchange == "celeryev"
    assert broker.db == 0
    assert broker.channel_for("worker.heartbeat") == "/0.celeryev/worker.heartbeat"
    assert broker.pattern_for("#") == "/0.celeryev/*"
    assert broker.pattern_for("worker.#") == "/0.celeryev/worker.*"


def test_channel_names_follow_kombu() -> None:
    assert from_url("redis://h:6379/5", global_keyprefix="app:").channel_for("worker.online") == (
        "app:/5.celeryev/worker.online"
    )
    assert from_url("redis://h/3", fanout_patterns=False).channel_for("task.multi") == "/3.celeryev"
    legacy = from_url("redis://h/0", fanout_prefix=False, fanout_patterns=False)
    assert legacy.channel_for("task.multi") == "celeryev"
    assert from_url("redis://h/2", fanout_prefix="/x{db}.").channel_for("a.b") == "/x2.celeryev/a.b"
    assert from_url("redis://h/0", exchange="myev").channel_for("a.b") == "/0.myev/a.b"
    # kombu < 5.4 on Sentinel: the literal '{db}'
    sentinel_legacy = from_url("sentinel://h/3", master_name="m", fanout_prefix="/{{db}}.")
    assert sentinel_legacy.channel_for("worker.heartbeat") == "/{db}.celeryev/worker.heartbeat"
    # glob metacharacters in a prefix are escaped in the subscription pattern
    assert from_url("redis://h/0", global_keyprefix="a[1]*:").pattern_for("#") == (
        "a\\[1\\]\\*:/0.celeryev/*"
    )


def test_option_sources_and_precedence() -> None:
    broker = from_url(
        "redis://h/1?global_keyprefix=q:&fanout_patterns=false",
        transport_options={"global_keyprefix": "t:", "visibility_timeout": 3600},
        exchange="ev2",
    )
    assert broker.options.global_keyprefix == "t:"  # transport_options beat the query
    assert broker.options.fanout_patterns is False
    assert broker.options.exchange == "ev2"
    flat = from_url(
        "redis://h/1", transport_options={"global_keyprefix": "t:"}, global_keyprefix="k:"
    )
    assert flat.options.global_keyprefix == "k:"  # flat keywords beat transport_options


@pytest.mark.parametrize(
    ("url", "options", "match"),
    [
        ("redis://h/0?bogus=1", {}, "unknown Redis URL option"),
        ("redis://h/0", {"bogus": 1}, "unknown Redis option"),
        ("redis://h/zero", {}, "integer"),
        ("redis://h/0", {"fanout_patterns": "maybe"}, "fanout_patterns"),
        ("sentinel://h:26379", {}, "master_name"),
        ("redis://h/0", {"master_name": "m"}, "sentinel"),
        ("redis://h/0;redis://h2/0", {}, "sentinel"),
        ("redis+socket://", {}, "socket path"),
        ("redis://h/0", {"fanout_prefix": "/{x}."}, "fanout_prefix"),
    ],
)
def test_bad_configuration(url: str, options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        from_url(url, **options)


def test_url_forms() -> None:
    sock = from_url("redis+socket:///run/redis.sock?virtual_host=4")
    assert sock.db == 4 and sock._parsed.endpoints[0].path == "/run/redis.sock"
    tls = from_url("rediss://:pw@h:6380/2?ssl_cert_reqs=CERT_NONE")
    assert tls._parsed.tls and tls.db == 2 and tls._parsed.endpoints[0].port == 6380
    sentinel = from_url("sentinel://:pw@s1:26379/3;sentinel://s2?master_name=mymaster")
    assert sentinel.options.master_name == "mymaster"
    assert [(e.host, e.port) for e in sentinel._parsed.endpoints] == [("s1", 26379), ("s2", 26379)]
    assert sentinel.db == 3 and sentinel._parsed.password == "pw"
    assert isinstance(open_broker("redis://localhost/0"), RedisBroker)
    assert isinstance(open_broker("sentinel://localhost", master_name="m"), RedisBroker)


def test_secrets_are_masked() -> None:
    broker = from_url("redis://user:s3cret@localhost:1/0")
    assert "s3cret" not in broker.url and "***" in broker.url
    assert "s3cret" not in repr(broker)


async def test_errors_are_masked_and_translated() -> None:
    broker = from_url("redis://user:s3cret@127.0.0.1:1/0", socket_connect_timeout=1)
    try:
        with pytest.raises(BrokerConnectionError) as info:
            await broker.connect()
        assert "s3cret" not in str(info.value)
        with pytest.raises(BrokerConnectionError):
            await broker.publish([_hb()])
        # while the backoff runs, publish fails at once without touching the network
        with pytest.raises(BrokerConnectionError, match="unavailable"):
            await broker.publish([_hb()])
        with pytest.raises(BrokerConnectionError):
            await broker.subscribe(["#"])
    finally:
        await broker.aclose()


# -- wire bytes --------------------------------------------------------------------


def test_envelopes_are_byte_identical_to_the_capture() -> None:
    capture = json.loads((FIXTURES / "redis-capture.json").read_text())
    broker = from_url("redis://127.0.0.1:6379/0")
    checked = 0
    for item in capture:
        raw = item["data"].encode()
        env = json.loads(raw)
        decoded = decode_envelope(raw)
        props = env["properties"]
        message = OutgoingMessage(
            routing_key=decoded.routing_key,
            body=decoded.body,
            headers=decoded.headers,
            delivery_mode=props["delivery_mode"],
            priority=props["priority"],
        )
        exchange = props["delivery_info"]["exchange"]
        assert encode_envelope(message, exchange, props["delivery_tag"]) == raw
        assert broker.channel_for(decoded.routing_key, exchange) == item["channel"]
        checked += 1
    assert checked == len(capture) >= 30


@pytest.mark.redis
async def test_published_bytes_match_kombu(redis_url: str) -> None:
    """Celery's own EventDispatcher (kombu Producer) vs ours, captured with a raw PSUBSCRIBE."""
    from celery import Celery

    prefix = _prefix()
    broker = from_url(redis_url, global_keyprefix=prefix)
    app = Celery("bytes", broker=redis_url, set_as_current=False)
    app.conf.broker_transport_options = {"global_keyprefix": prefix}
    async with RawCapture(redis_url, f"{prefix}*") as raw:

        def kombu_send() -> None:
            with app.connection_for_write() as conn:
                dispatcher = app.events.Dispatcher(conn, hostname="kombu@host", enabled=True)
                dispatcher.send("worker-heartbeat", freq=2.0, active=0)
                dispatcher.close()

        await anyio.to_thread.run_sync(kombu_send)
        channel, kombu_payload = await raw.next()
        kombu_env = json.loads(kombu_payload)
        tag = kombu_env["properties"]["delivery_tag"]
        assert channel == broker.channel_for("worker.heartbeat")
        decoded = decode_envelope(kombu_payload)
        ours = OutgoingMessage(
            routing_key=decoded.routing_key, body=decoded.body, headers=decoded.headers
        )
        assert encode_envelope(ours, "celeryev", tag) == kombu_payload
        try:
            await broker.publish([ours])
            channel2, our_payload = await raw.next()
        finally:
            await broker.aclose()
        assert channel2 == channel
        our_tag = json.loads(our_payload)["properties"]["delivery_tag"]
        assert str(uuid.UUID(our_tag)) == our_tag and our_tag != tag
        assert our_payload == kombu_payload.replace(tag.encode(), our_tag.encode())


@pytest.mark.redis
async def test_broadcast_request_matches_celery_control(redis_url: str) -> None:
    capture = [
        c
        for c in json.loads((FIXTURES / "control-capture.json").read_text())
        if c["transport"] == "redis"
    ]
    want = json.loads(capture[0]["data"])
    want_body = json.loads(decode_envelope(capture[0]["data"].encode()).body)
    prefix = _prefix()
    broker = from_url(redis_url, global_keyprefix=prefix)
    async with RawCapture(redis_url, f"{prefix}*") as raw:
        try:
            assert await broker.control().broadcast("enable_events", timeout=0.3) == []
            channel, payload = await raw.next()
        finally:
            await broker.aclose()
    assert channel == f"{prefix}{capture[0]['channel']}"
    got = json.loads(payload)
    assert list(got) == list(want)
    assert got["properties"]["delivery_info"] == want["properties"]["delivery_info"]
    assert got["properties"]["delivery_mode"] == 2
    assert list(got["headers"]) == ["clock", "expires"]
    body = json.loads(decode_envelope(payload).body)
    assert list(body) == list(want_body)
    assert body["method"] == "enable_events" and body["arguments"] == {}
    assert body["reply_to"]["exchange"] == "reply.celery.pidbox"
    # the reply binding kombu's workers route replies through is gone again
    admin = aioredis.Redis.from_url(redis_url, protocol=2)
    try:
        assert await admin.smembers(f"{prefix}_kombu.binding.reply.celery.pidbox") == set()
    finally:
        await admin.aclose()


# -- against the shared Redis --------------------------------------------------------


@pytest.mark.redis
async def test_conformance(redis_url: str) -> None:
    prefix = _prefix()
    await check_broker(lambda: from_url(redis_url, global_keyprefix=prefix))


@pytest.mark.redis
async def test_conformance_without_fanout_patterns(redis_url: str) -> None:
    """kombu 3.x layout: one channel for everything; routing keys come from the envelope."""
    prefix = _prefix()
    await check_broker(
        lambda: from_url(redis_url, global_keyprefix=prefix, fanout_patterns=False),
        checks=["roundtrip", "topic-routing", "fanout"],
    )


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[RedisBroker, RedisBroker]]:
    prefix = _prefix()
    pub, con = (
        from_url(redis_url, global_keyprefix=prefix),
        from_url(redis_url, global_keyprefix=prefix),
    )
    try:
        yield pub, con
    finally:
        await pub.aclose()
        await con.aclose()


@pytest.mark.redis
async def test_amqp_topic_semantics_despite_redis_globs(
    pair: tuple[RedisBroker, RedisBroker],
) -> None:
    pub, con = pair
    one_word = await con.subscribe(["task.*"])
    overlapping = await con.subscribe(["#", "worker.#", "*.heartbeat"])
    two = await con.subscribe(["task.*", "*.multi"])
    await pub.publish([
        OutgoingMessage("task.a.b", b"[1]"),
        OutgoingMessage("worker.heartbeat", b"[2]"),
        OutgoingMessage("task.multi", b"[3]"),
    ])  # fmt: skip
    got = await _next(one_word)
    # 'task.*' must not see 'task.a.b' (Redis' '*' would match it)
    assert got.routing_key == "task.multi"
    assert await _nothing(one_word) is None
    assert one_word.filtered == 1
    seen = [(await _next(overlapping)).routing_key for _ in range(3)]
    assert seen == ["task.a.b", "worker.heartbeat", "task.multi"]  # each exactly once
    assert await _nothing(overlapping) is None
    assert (await _next(two)).routing_key == "task.multi"
    assert await _nothing(two) is None


@pytest.mark.redis
async def test_routing_stays_right_past_the_remembered_channels(
    pair: tuple[RedisBroker, RedisBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each channel's routing key and match is remembered (a wrong reuse would
    # misroute); with room for two, the channels keep being forgotten and relearnt.
    monkeypatch.setattr("aiocelev.brokers._redis_subscription._KEYS_KEPT", 2)
    pub, con = pair
    sub = await con.subscribe(["task.*"])
    keys = ["task.a", "task.a.b", "worker.x", "task.b", "task.c"]
    for round_ in range(3):
        await pub.publish([OutgoingMessage(k, b"[%d]" % round_) for k in keys])
        got = [(await _next(sub)) for _ in range(3)]
        assert [(m.routing_key, m.body) for m in got] == [
            (k, b"[%d]" % round_) for k in ("task.a", "task.b", "task.c")
        ]
    assert await _nothing(sub) is None
    # task.a.b three times (Redis' glob over-matches; worker.x never reaches the pattern)
    assert sub.filtered == 3
    assert sub.received == 9


@pytest.mark.redis
async def test_a_batch_is_one_round_trip(
    pair: tuple[RedisBroker, RedisBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.asyncio.connection import AbstractConnection

    pub, con = pair
    sub = await con.subscribe(["#"])
    await pub.connect()
    # the publishing connection is opened (and greets the server) by the first publish
    await pub.publish([_hb(n=-1)])
    assert decode_message(await _next(sub))[0][0]["clock"] == -1
    writes: list[int] = []
    original = AbstractConnection.send_packed_command

    async def counting(self: Any, command: Any, check_health: bool = True) -> None:
        writes.append(1)
        await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    await pub.publish([_hb(n=i) for i in range(100)])
    monkeypatch.undo()
    assert len(writes) == 1
    for i in range(100):
        assert decode_message(await _next(sub))[0][0]["clock"] == i


@pytest.mark.redis
async def test_incoming_is_unwrapped(pair: tuple[RedisBroker, RedisBroker]) -> None:
    """Subscriptions hand up the plain body and what the envelope says about it."""
    pub, con = pair
    sub = await con.subscribe(["#"])
    sent = _hb()
    await pub.publish([sent])
    msg = await _next(sub)
    assert msg.error is None
    assert msg.body == sent.body
    assert msg.routing_key == "worker.heartbeat"
    assert msg.content_type == "application/json" and msg.content_encoding == "utf-8"
    assert dict(msg.headers) == {"hostname": "test@host"}
    events, bad = decode_message(msg)
    assert bad == [] and events[0]["type"] == "worker-heartbeat"


@pytest.mark.redis
async def test_bytes_the_loop_already_read_are_drained_in_order(
    pair: tuple[RedisBroker, RedisBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst larger than one socket read: the bytes asyncio buffered are fed
    to the reader directly, every message arrives, in order."""
    from redis.asyncio.connection import AbstractConnection

    pub, con = pair
    sub = await con.subscribe(["#"])
    calls: list[float | None] = []
    original = AbstractConnection.read_response

    async def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self is sub._conn:  # not the publisher's replies
            calls.append(kwargs.get("timeout"))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "read_response", counting)
    await pub.connect()
    padding = "x" * 2000
    sent = [
        OutgoingMessage("task.multi", json.dumps([{"clock": i, "pad": padding}]).encode())
        for i in range(600)
    ]
    await pub.publish(sent)
    await anyio.sleep(0.2)  # let the event loop buffer what the socket holds
    got = [await _next(sub) for _ in range(600)]
    assert [json.loads(m.body)[0]["clock"] for m in got] == list(range(600))
    assert sub.reconnects == 0
    # ~1.8 MB in a few socket reads: a handful of read_response calls (a read
    # per 64 KiB chunk, as before, made it ~65)
    assert len(calls) < 30, len(calls)


async def test_buffered_bytes_go_to_the_parser_and_a_paused_transport_resumes() -> None:
    """The bytes asyncio buffered are moved to hiredis in order, at most
    ``_READ_SIZE`` at a time, and taking them lets a transport the stream
    paused (its buffer over the limit) read again, as ``StreamReader.read`` does."""
    import asyncio

    import hiredis

    from aiocelev.brokers import _redis_subscription as mod

    class Transport(asyncio.Transport):
        def __init__(self) -> None:
            super().__init__()
            self.paused = False

        def pause_reading(self) -> None:
            self.paused = True

        def resume_reading(self) -> None:
            self.paused = False

    stream = asyncio.StreamReader(limit=1024)
    transport = Transport()
    stream.set_transport(transport)
    replies = [b"x" * n for n in (10, 30_000, 5, 50_000, 1)]
    wire = b"".join(b"$%d\r\n%s\r\n" % (len(r), r) for r in replies)
    stream.feed_data(wire)
    assert transport.paused
    reader = hiredis.Reader()
    got: list[bytes] = []
    feeds = 0
    while stream._buffer:
        mod._feed_buffered(stream, reader)
        feeds += 1
        while (reply := reader.gets()) is not False:
            got.append(reply)
    assert got == replies
    assert feeds == -(-len(wire) // mod._READ_SIZE)
    assert not transport.paused


@pytest.mark.redis
async def test_a_failure_behind_buffered_bytes_reconnects(
    pair: tuple[RedisBroker, RedisBroker],
) -> None:
    """The connection fails after bytes were buffered (a reset mid-reply): the
    subscription counts a gap, resubscribes and goes on."""
    pub, con = pair
    sub = await con.subscribe(["#"])
    await pub.publish([_hb(n=0)])
    assert decode_message(await _next(sub))[0][0]["clock"] == 0
    stream = sub._conn._parser._stream
    stream.feed_data(b"*4\r\n$8\r\npmessage\r\n")  # half a reply
    stream.set_exception(ConnectionResetError("connection reset by peer"))
    await pub.publish([_hb(n=1)])  # lost with the connection, or read before it
    with anyio.fail_after(10):
        while not sub.reconnects:
            await _nothing(sub, 0.05)
    await pub.publish([_hb(n=2)])
    clocks = []
    while 2 not in clocks:
        clocks.append(decode_message(await _next(sub))[0][0]["clock"])
    assert sub.reconnects == 1


@pytest.mark.redis
async def test_isolation_by_db_and_prefix(redis_url: str) -> None:
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url
    prefix = _prefix()
    brokers = [
        from_url(f"{base}/7", global_keyprefix=prefix),
        from_url(f"{base}/8", global_keyprefix=prefix),
        from_url(f"{base}/7", global_keyprefix=prefix + "other:"),
    ]
    try:
        subs = [await b.subscribe(["#"]) for b in brokers]
        for i, b in enumerate(brokers):
            await b.publish([_hb(f"app{i}@host")])
        for i, sub in enumerate(subs):
            events, _ = decode_message(await _next(sub))
            assert events[0]["hostname"] == f"app{i}@host"
            assert await _nothing(sub) is None
    finally:
        for b in brokers:
            await b.aclose()


@pytest.mark.redis
async def test_cancelling_a_read_loses_nothing(pair: tuple[RedisBroker, RedisBroker]) -> None:
    pub, con = pair
    sub = await con.subscribe(["#"])
    for _ in range(20):  # cancelled waits must leave the connection intact
        assert await _nothing(sub, 0.01) is None
    await pub.publish([_hb(n=i) for i in range(200)])
    got = []
    while len(got) < 200:
        with anyio.move_on_after(0.001):
            got.append(await sub.__anext__())
    clocks = [decode_message(m)[0][0]["clock"] for m in got]
    assert clocks == list(range(200))
    assert sub.reconnects == 0


@pytest.mark.redis
async def test_client_kill_on_both_sides(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    prefix = _prefix()
    name = f"aiocelev-kill-{uuid.uuid4().hex[:8]}"
    pub = from_url(redis_url, global_keyprefix=prefix, client_name=name)
    con = from_url(redis_url, global_keyprefix=prefix, client_name=name)
    caplog.set_level(logging.WARNING, logger="aiocelev.brokers.redis")
    try:
        sub = await con.subscribe(["#"])
        await pub.publish([_hb(n=0)])
        await _next(sub)
        assert await _kill_clients(redis_url, name) >= 2
        # the publisher reconnects by itself (a dead pooled connection is replaced)
        await pub.publish([_hb(n=1)])
        # the subscriber notices, reconnects, resubscribes and counts the gap
        with anyio.fail_after(10):
            n = 2
            while True:
                await pub.publish([_hb(n=n)])
                msg = await _nothing(sub, 0.2)
                if msg is not None and sub.reconnects:
                    break
                n += 1
        assert sub.reconnects == 1 and con.reconnects == 1
        assert any("resubscribed" in r.getMessage() for r in caplog.records)
    finally:
        await pub.aclose()
        await con.aclose()


@pytest.mark.redis
async def test_close_semantics(redis_url: str) -> None:
    broker = from_url(redis_url, global_keyprefix=_prefix())
    sub = await broker.subscribe(["#"])
    async with anyio.create_task_group() as tg:

        async def consume() -> None:
            async for _ in sub:
                raise AssertionError("no message expected")

        tg.start_soon(consume)
        await anyio.sleep(0.1)
        await sub.aclose()  # ends the iteration in the other task
    await broker.aclose()
    await broker.aclose()
    with pytest.raises(ClosedError):
        await broker.publish([_hb()])
    with pytest.raises(ClosedError):
        await broker.subscribe(["#"])


# -- private servers: restart, output-buffer cut-off, Sentinel -----------------------


@pytest.mark.redis
async def test_server_restart_under_publisher_and_subscriber() -> None:
    with redis_processes() as spawn:
        server = spawn()
        pub = from_url(server.url, reconnect_max_delay=0.5)
        con = from_url(server.url, reconnect_max_delay=0.5)
        try:
            sub = await con.subscribe(["worker.#"])
            await pub.publish([_hb(n=0)])
            await _next(sub)
            server.stop()
            with pytest.raises(BrokerConnectionError):
                await pub.publish([_hb(n=1)])
            # the subscriber's reader notices too (reading it just makes it try)
            assert await _nothing(sub, 0.5) is None
            server.start()
            with anyio.fail_after(20):
                n = 2
                while True:
                    try:
                        await pub.publish([_hb(n=n)])
                    except BrokerConnectionError:
                        await anyio.sleep(0.1)
                        continue
                    msg = await _nothing(sub, 0.2)
                    if msg is not None:
                        break
                    n += 1
            assert sub.reconnects >= 1 and pub.publish_reconnects >= 1
        finally:
            await pub.aclose()
            await con.aclose()


@pytest.mark.redis
async def test_slow_subscriber_cut_off_by_output_buffer_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="aiocelev.brokers.redis")
    with redis_processes() as spawn:
        server = spawn("--client-output-buffer-limit", "pubsub 256kb 128kb 1")
        pub = from_url(server.url)
        con = from_url(server.url, reconnect_max_delay=0.2)
        try:
            sub = await con.subscribe(["#"])
            big = OutgoingMessage("task.multi", b'["' + b"x" * 8000 + b'"]')
            # nobody reads: Redis buffers for the subscriber until the hard limit cuts it off
            for _ in range(40):
                await pub.publish([big] * 50)
            with anyio.fail_after(20):
                while sub.reconnects == 0:
                    await _nothing(sub, 0.2)
            # the subscription is back and delivers again
            with anyio.fail_after(10):
                while True:
                    await pub.publish([_hb()])
                    msg = await _nothing(sub, 0.2)
                    if msg is not None and msg.routing_key == "worker.heartbeat":
                        break
            assert sub.reconnects == 1
            assert any("client-output-buffer-limit" in r.getMessage() for r in caplog.records)
        finally:
            await pub.aclose()
            await con.aclose()


@pytest.mark.redis
async def test_health_check_detects_a_silent_server() -> None:
    """A server that stops answering (no RST, no FIN) is noticed by the PING health check."""
    import signal

    with redis_processes() as spawn:
        server = spawn()
        pub = from_url(server.url)
        con = from_url(server.url, health_check_interval=0.3, reconnect_max_delay=0.3)
        assert server.proc is not None
        try:
            sub = await con.subscribe(["#"])
            server.proc.send_signal(signal.SIGSTOP)
            try:
                with anyio.fail_after(10):
                    while sub.reconnects == 0:
                        assert await _nothing(sub, 0.2) is None
            finally:
                server.proc.send_signal(signal.SIGCONT)
            with anyio.fail_after(30):
                while True:
                    try:
                        await pub.publish([_hb()])
                    except BrokerConnectionError:
                        await anyio.sleep(0.1)
                        continue
                    if await _nothing(sub, 0.2) is not None:
                        break
            assert sub.reconnects == 1
        finally:
            await pub.aclose()
            await con.aclose()


@pytest.mark.redis
async def test_closing_or_cancelling_while_reconnecting_leaves_no_connection() -> None:
    with redis_processes() as spawn:
        server = spawn()
        con = from_url(server.url, reconnect_delay=0.05, reconnect_max_delay=0.1)
        try:
            closed_sub = await con.subscribe(["#"])
            cancelled_sub = await con.subscribe(["worker.#"])
            server.stop()
            ended: list[str] = []

            async def consume(sub: Any, name: str) -> None:
                async for _ in sub:
                    pass
                ended.append(name)

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(consume, closed_sub, "closed")
                    tg.start_soon(consume, cancelled_sub, "cancelled")
                    while closed_sub.reconnects == 0 or cancelled_sub.reconnects == 0:
                        await anyio.sleep(0.05)
                    server.start()  # reconnects may now succeed at any moment
                    await closed_sub.aclose()
                    while "closed" not in ended:  # the iteration ends promptly
                        await anyio.sleep(0.01)
                    while not cancelled_sub.connected:
                        await anyio.sleep(0.05)
                    tg.cancel_scope.cancel()
            assert ended == ["closed"]
            await cancelled_sub.aclose()
            admin = aioredis.Redis.from_url(server.url, protocol=2)
            try:
                clients = await admin.client_list()
                assert [c for c in clients if c.get("psub") != "0"] == []
            finally:
                await admin.aclose()
        finally:
            await con.aclose()


@pytest.mark.redis
async def test_rediss_with_certificate_verification(tmp_path: Path) -> None:
    from ._redis import make_tls_files

    files = make_tls_files(tmp_path)
    with redis_processes() as spawn:
        server = spawn(
            "--port", "0", "--tls-port", "{port}", "--tls-cert-file", files["server"],
            "--tls-key-file", files["key"], "--tls-ca-cert-file", files["ca"],
            "--tls-auth-clients", "no",
        )  # fmt: skip
        url = (
            f"rediss://127.0.0.1:{server.port}/0?ssl_cert_reqs=required&ssl_ca_certs={files['ca']}"
        )
        await check_broker(lambda: from_url(url), checks=["roundtrip", "topic-routing", "fanout"])
        # without the CA the server's certificate is refused
        untrusted = from_url(f"rediss://127.0.0.1:{server.port}/0", ssl_cert_reqs="required")
        try:
            with pytest.raises(BrokerConnectionError):
                await untrusted.connect()
        finally:
            await untrusted.aclose()


@pytest.mark.redis
async def test_unix_socket() -> None:
    with redis_processes() as spawn:
        probe = spawn()  # only to learn the temp dir
        socket_path = probe.workdir / "redis.sock"
        spawn("--unixsocket", str(socket_path), "--unixsocketperm", "700")
        url = f"redis+socket://{socket_path}?virtual_host=3"
        broker = from_url(url)
        assert broker.channel_for("worker.online") == "/3.celeryev/worker.online"
        await broker.aclose()
        await check_broker(lambda: from_url(url), checks=["roundtrip", "topic-routing", "fanout"])


@pytest.mark.redis
async def test_password_auth_and_masking(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="aiocelev.brokers.redis")
    with redis_processes() as spawn:
        server = spawn("--requirepass", "s3cret-pw")
        good = f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"
        await check_broker(lambda: from_url(good), checks=["roundtrip"])
        bad = from_url(f"redis://:wrong-pw@127.0.0.1:{server.port}/0")
        try:
            with pytest.raises(BrokerConnectionError) as info:
                await bad.connect()
            with pytest.raises(BrokerConnectionError) as info2:
                await bad.subscribe(["#"])
        finally:
            await bad.aclose()
        for text in (str(info.value), str(info2.value), repr(bad), bad.url, caplog.text):
            assert "s3cret-pw" not in text and "wrong-pw" not in text


SENTINEL_CONF = """\
sentinel monitor aiocelevtest 127.0.0.1 {master} 1
sentinel down-after-milliseconds aiocelevtest 1000
sentinel failover-timeout aiocelevtest 4000
sentinel parallel-syncs aiocelevtest 1
"""


@pytest.mark.redis
@pytest.mark.timeout(90)
async def test_sentinel_failover() -> None:
    with redis_processes() as spawn:
        master = spawn()
        replica = spawn("--replicaof", "127.0.0.1", str(master.port))
        sentinel_proc = spawn(config=SENTINEL_CONF.format(master=master.port))
        wait_port(sentinel_proc.port)
        admin = aioredis.Redis(host="127.0.0.1", port=sentinel_proc.port, protocol=2)
        rep = aioredis.Redis(host="127.0.0.1", port=replica.port, protocol=2)
        url = (
            f"sentinel://127.0.0.1:{sentinel_proc.port}/0;sentinel://127.0.0.1:{sentinel_proc.port}"
        )
        pub = from_url(
            url, master_name="aiocelevtest", reconnect_max_delay=0.5, sentinel_check_interval=0.2
        )
        con = from_url(
            f"{url}?master_name=aiocelevtest&sentinel_check_interval=0.2", reconnect_max_delay=0.5
        )
        try:
            with anyio.fail_after(30):  # replica in sync and known to the sentinel
                while (await rep.info("replication")).get("master_link_status") != "up":
                    await anyio.sleep(0.1)
                while not await admin.execute_command("SENTINEL", "REPLICAS", "aiocelevtest"):
                    await anyio.sleep(0.2)
            sub = await con.subscribe(["#"])
            await pub.publish([_hb(n=0)])
            await _next(sub)
            with anyio.fail_after(30):
                while True:
                    try:
                        await admin.execute_command("SENTINEL", "FAILOVER", "aiocelevtest")
                        break
                    except aioredis.ResponseError:
                        await anyio.sleep(0.5)
                while True:
                    addr = await admin.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "aiocelevtest"
                    )
                    if int(addr[1]) == replica.port:
                        break
                    await anyio.sleep(0.1)
                while (await rep.info("replication")).get("role") != "master":
                    await anyio.sleep(0.1)
            # events keep flowing, through the new master: a raw subscriber on the
            # promoted replica sees them, and so does the aiocelev subscription
            marker = uuid.uuid4().hex
            async with RawCapture(replica.url, "*") as raw:
                with anyio.fail_after(30):
                    on_new_master = False
                    while True:
                        try:
                            await pub.publish([_hb(marker)])
                        except BrokerConnectionError:
                            await anyio.sleep(0.2)
                            continue
                        with anyio.move_on_after(0.3):
                            while not on_new_master:
                                _, data = await raw.next()
                                on_new_master = marker.encode() in data or on_new_master
                        msg = await _nothing(sub, 0.3)
                        if (
                            on_new_master
                            and msg is not None
                            and decode_message(msg)[0][0]["hostname"] == marker
                        ):
                            break
            # the subscription moved to the new master by itself, once: it does not
            # flap while Sentinel keeps reporting the same master
            assert sub.reconnects >= 1
            settled = sub.reconnects
            for _ in range(8):  # several sentinel_check_interval periods
                await _nothing(sub, 0.2)
            assert sub.reconnects == settled
            assert sub.connected
        finally:
            await pub.aclose()
            await con.aclose()
            await admin.aclose()
            await rep.aclose()
