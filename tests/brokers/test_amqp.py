"""The RabbitMQ adapter: options, wire properties, conformance, reconnects, failover."""

from __future__ import annotations

import json
import logging
import time
import traceback
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import aio_pika
import anyio
import pytest

from aiocelev import (
    BrokerConnectionError,
    BrokerError,
    ClosedError,
    ConfigurationError,
    DuplicateNodeError,
    OutgoingMessage,
    PublishError,
)
from aiocelev._codec import decode_message, encode_event
from aiocelev._control import (
    ControlReply,
    ControlRequest,
    build_control_body,
    encode_control_body,
)
from aiocelev.brokers import ControlSubscription, ControlTransport, open_broker
from aiocelev.brokers.amqp import AmqpBroker, from_url
from aiocelev.testing import check_broker

from ._rabbitmq import (
    close_connections,
    connection_pids,
    delete_exchanges,
    list_json,
    need_rabbitmqctl,
    rabbitmq_stopped,
    wait_amqp_ready,
)

# -- options and URLs (no broker needed) -------------------------------------------


def test_defaults_match_celery() -> None:
    opts = from_url("amqp://guest:guest@localhost//").options
    assert opts.exchange == "celeryev"
    assert opts.queue_prefix == "celeryev"
    assert (opts.message_ttl, opts.expires) == (5.0, 60.0)
    assert opts.no_ack is True and opts.prefetch_count is None
    assert opts.confirm_publish is False
    assert opts.durable is False and opts.queue_name is None


def test_query_options_and_keyword_options() -> None:
    broker = from_url(
        "amqp://u:p@h:1234/vh?confirm_publish=1&prefetch_count=100&heartbeat=30&message_ttl=2.5"
        "&exchange=ev2&reconnect_max_delay=3",
        message_ttl=7,
    )
    opts = broker.options
    assert opts.confirm_publish is True
    assert opts.prefetch_count == 100
    assert opts.heartbeat == 30
    assert opts.message_ttl == 7.0  # keyword wins over the query
    assert opts.exchange == "ev2"
    assert opts.reconnect_max_delay == 3.0
    endpoint = broker._endpoints[0]
    assert endpoint.url.startswith("amqp://u:p@h:1234/vh?")
    assert "heartbeat=30" in endpoint.url
    assert "confirm_publish" not in endpoint.url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "amqp://guest:guest@127.0.0.1:5672//",
            "amqp://guest:guest@127.0.0.1:5672/%2F?name=aiocelev",
        ),
        ("amqp://127.0.0.1", "amqp://guest:guest@127.0.0.1:5672/%2F?name=aiocelev"),
        ("pyamqp://a:b@host/", "amqp://a:b@host:5672/%2F?name=aiocelev"),
        ("librabbitmq://a:b@host/prod", "amqp://a:b@host:5672/prod?name=aiocelev"),
        ("amqps://a:b@host/prod", "amqps://a:b@host:5671/prod?name=aiocelev"),
        ("amqp://a:p%40ss@host/v%2Fh", "amqp://a:p%40ss@host:5672/v%2Fh?name=aiocelev"),
    ],
)
def test_url_forms(url: str, expected: str) -> None:
    assert from_url(url)._endpoints[0].url == expected


def test_registry_routes_kombu_schemes() -> None:
    for scheme in ("amqp", "amqps", "pyamqp", "librabbitmq"):
        assert isinstance(open_broker(f"{scheme}://guest:guest@localhost//"), AmqpBroker)


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("amqp://localhost//?bogus=1", {}),
        ("amqp://localhost//", {"bogus": 1}),
        ("amqp://localhost//?prefetch_count=lots", {}),
        ("amqp://localhost//", {"durable": True}),  # durable needs queue_name
        ("amqp://localhost//", {"expires": 0}),
        ("redis://localhost", {}),
        ("", {}),
    ],
)
def test_bad_configuration(url: str, options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        from_url(url, **options)


def test_durable_queue_defaults() -> None:
    opts = from_url("amqp://localhost//", queue_name="monitor", durable=True).options
    assert opts.no_ack is False
    assert opts.prefetch_count == 100
    assert opts.message_ttl is None and opts.expires is None


def test_passwords_masked_in_url_and_repr() -> None:
    broker = from_url("amqp://user:s3cret@127.0.0.1:1//;amqp://user:t0psecret@127.0.0.1:2//")
    assert "s3cret" not in broker.url and "t0psecret" not in broker.url
    assert "s3cret" not in repr(broker) and "t0psecret" not in repr(broker)
    assert broker.url == "amqp://user:***@127.0.0.1:1//;amqp://user:***@127.0.0.1:2//"


def test_backoff_is_jittered_and_capped() -> None:
    broker = from_url("amqp://localhost//", reconnect_delay=0.5, reconnect_max_delay=4)
    backoff = broker._connection.backoff
    assert (backoff.initial, backoff.maximum) == (0.5, 4.0)
    for attempt in range(1, 20):
        delay = backoff.next_delay()
        base = min(4.0, 0.5 * 2 ** (attempt - 1))
        assert base / 2 <= delay <= base
    backoff.attempts = 5000  # a very long outage stays capped (no overflow)
    assert 2.0 <= backoff.next_delay() <= 4.0
    backoff.reset()
    assert 0.25 <= backoff.next_delay() <= 0.5


# -- against the real server ---------------------------------------------------------

amqp_only = [pytest.mark.amqp]


def _event_message(event: dict[str, Any]) -> OutgoingMessage:
    """One event as Celery's dispatcher sends it (body and ``hostname`` header)."""
    return OutgoingMessage("", encode_event(event), {"hostname": event["hostname"]})


def _unique(prefix: str = "t") -> str:
    return f"aiocelevtest.{prefix}.{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def private_exchange(amqp_url: str) -> AsyncIterator[str]:
    """A throw-away event exchange: the conformance checks subscribe to ``#`` and
    must not see other people's events on the shared ``celeryev``."""
    name = _unique("celeryev")
    yield name
    conn = await aio_pika.connect(from_url(amqp_url)._endpoints[0].url)
    async with conn:
        channel = await conn.channel()
        await channel.exchange_delete(name)


@pytest.mark.amqp
async def test_conformance(amqp_url: str, private_exchange: str) -> None:
    await check_broker(lambda: from_url(amqp_url, exchange=private_exchange))


@pytest.mark.amqp
async def test_conformance_with_confirms_and_failover(amqp_url: str, private_exchange: str) -> None:
    url = f"amqp://guest:guest@127.0.0.1:1//;{amqp_url}"
    await check_broker(
        lambda: from_url(url, confirm_publish=True, exchange=private_exchange),
        checks=["roundtrip", "ordering"],
    )


@pytest.mark.amqp
async def test_wire_properties_and_declarations_match_celery(amqp_url: str) -> None:
    """Exchange flags, queue flags/arguments and message properties as Celery uses them."""
    need_rabbitmqctl()
    key = _unique("props")
    async with from_url(amqp_url) as broker:
        sub = await broker.subscribe([key])
        event = {"hostname": "w1@h", "type": "worker-heartbeat", "timestamp": 1.0, "clock": 3}
        message = _event_message(event)
        await broker.publish([OutgoingMessage(key, message.body, message.headers)])

        # Read the same message with a plain aio-pika consumer to see every property.
        conn = await aio_pika.connect(broker._endpoints[0].url)
        async with conn:
            channel = await conn.channel()
            queue = await channel.declare_queue(exclusive=True)
            exchange = await channel.get_exchange("celeryev")
            await queue.bind(exchange, routing_key=key)
            await broker.publish([OutgoingMessage(key, message.body, message.headers)])
            with anyio.fail_after(10):
                raw = await queue.get(timeout=5, fail=False)
                while raw is None:
                    await anyio.sleep(0.05)
                    raw = await queue.get(timeout=5, fail=False)
            assert raw.content_type == "application/json"
            assert raw.content_encoding == "utf-8"
            assert raw.delivery_mode == 1
            assert raw.priority == 0
            assert raw.headers == {"hostname": "w1@h"}
            assert raw.body == message.body
            assert raw.routing_key == key
            await raw.ack()

        with anyio.fail_after(10):
            got = await sub.__anext__()
        assert decode_message(got)[0] == [event]
        assert got.ack is None  # no-ack consumption by default

        exchanges = {
            e["name"]: e for e in list_json("exchanges", "name", "type", "durable", "auto_delete")
        }
        assert exchanges["celeryev"]["type"] == "topic"
        assert exchanges["celeryev"]["durable"] is True
        assert exchanges["celeryev"]["auto_delete"] is False

        queues = {
            q["name"]: q
            for q in list_json("queues", "name", "durable", "auto_delete", "exclusive", "arguments")
        }
        assert sub.queue_name is not None and sub.queue_name.startswith("celeryev.")
        uuid.UUID(sub.queue_name.split(".", 1)[1])
        mine = queues[sub.queue_name]
        assert mine["durable"] is False
        assert mine["auto_delete"] is True
        assert mine["exclusive"] is True
        raw_args = mine["arguments"]
        # rabbitmqctl's JSON gives [name, type, value] triples (or a mapping)
        args = dict(raw_args) if isinstance(raw_args, dict) else {a[0]: a[-1] for a in raw_args}
        assert args == {"x-message-ttl": 5000, "x-expires": 60000}
        name = sub.queue_name
        await sub.aclose()
    # auto-delete queue is gone once its consumer left
    assert name not in {q["name"] for q in list_json("queues", "name")}


@pytest.mark.amqp
async def test_publisher_confirms_and_nack(amqp_url: str) -> None:
    """confirm_publish: publish returns once confirmed; a nack becomes PublishError."""
    key = _unique("nack")
    async with from_url(amqp_url, confirm_publish=True) as broker:
        # A queue that rejects every publish routed to it: the broker nacks.
        conn = await aio_pika.connect(broker._endpoints[0].url)
        async with conn:
            channel = await conn.channel()
            queue = await channel.declare_queue(
                _unique("full"),
                exclusive=True,
                arguments={"x-max-length": 0, "x-overflow": "reject-publish"},
            )
            await queue.bind("celeryev", routing_key=key)
            with pytest.raises(PublishError):
                await broker.publish([OutgoingMessage(key, b"[]")])
            # the adapter is still usable afterwards
            await broker.publish([OutgoingMessage(_unique("ok"), b"[]")])


@pytest.mark.amqp
async def test_durable_queue_with_acks_loses_nothing_across_consumer_restarts(
    amqp_url: str,
) -> None:
    queue_name = _unique("durable")
    key = _unique("dkey")
    try:
        consumer = from_url(amqp_url, queue_name=queue_name, durable=True)
        sub = await consumer.subscribe([key])
        async with from_url(amqp_url, confirm_publish=True) as publisher:
            await publisher.publish([OutgoingMessage(key, f"[{i}]".encode()) for i in range(3)])
            with anyio.fail_after(10):
                first = await sub.__anext__()
                second = await sub.__anext__()
            assert (first.body, second.body) == (b"[0]", b"[1]")
            assert first.ack is not None
            first.ack()  # processed; [1] was received but not acknowledged
            await consumer.aclose()  # consumer goes away (acks pending acks first)

            # published while no consumer is connected: kept by the durable queue
            await publisher.publish([OutgoingMessage(key, b"[3]")])

        consumer = from_url(amqp_url, queue_name=queue_name, durable=True)
        sub = await consumer.subscribe([key])
        bodies: list[bytes] = []
        with anyio.fail_after(10):
            while len(bodies) < 3:
                message = await sub.__anext__()
                bodies.append(message.body)
                assert message.ack is not None
                message.ack()
        assert bodies == [b"[1]", b"[2]", b"[3]"]
        await consumer.aclose()
    finally:
        conn = await aio_pika.connect(from_url(amqp_url)._endpoints[0].url)
        async with conn:
            channel = await conn.channel()
            await channel.queue_delete(queue_name)


@pytest.mark.amqp
async def test_failover_skips_dead_url(amqp_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aiocelev.brokers.amqp")
    url = f"amqp://guest:hunter2@127.0.0.1:1//;{amqp_url}"
    async with from_url(url) as broker:
        assert broker.connected
        sub = await broker.subscribe([key := _unique("failover")])
        await broker.publish([OutgoingMessage(key, b"[1]")])
        with anyio.fail_after(10):
            assert (await sub.__anext__()).body == b"[1]"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "127.0.0.1:1" in logged
    assert "hunter2" not in logged


@pytest.mark.amqp
async def test_unreachable_broker_raises_aiocelev_error_without_password(amqp_url: str) -> None:
    broker = from_url("amqp://guest:hunter2@127.0.0.1:1//;amqp://guest:hunter2@127.0.0.1:2//")
    with pytest.raises(BrokerConnectionError) as info:
        await broker.connect()
    text = "".join(traceback.format_exception(info.value))
    assert "hunter2" not in text
    assert "127.0.0.1:1" in str(info.value) and "127.0.0.1:2" in str(info.value)
    with pytest.raises(BrokerConnectionError):
        await broker.publish([OutgoingMessage("x", b"[]")])
    await broker.aclose()
    with pytest.raises(ClosedError):
        await broker.publish([OutgoingMessage("x", b"[]")])

    bad_login = from_url(amqp_url.replace("guest:guest", "guest:wrong-hunter2"))
    with pytest.raises(BrokerConnectionError) as info:
        await bad_login.connect()
    assert "wrong-hunter2" not in "".join(traceback.format_exception(info.value))


@pytest.mark.amqp
async def test_exchange_declared_differently_is_a_broker_error(amqp_url: str) -> None:
    name = _unique("ex")
    conn = await aio_pika.connect(from_url(amqp_url)._endpoints[0].url)
    async with conn:
        channel = await conn.channel()
        await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, auto_delete=True)
        broker = from_url(amqp_url, exchange=name)
        with pytest.raises(BrokerError) as info:
            await broker.connect()
        assert not isinstance(info.value, BrokerConnectionError)
        assert "PRECONDITION_FAILED" in str(info.value)
        await broker.aclose()


async def _drain_into(sub, bucket: list[bytes], seen: anyio.Event) -> None:
    async for message in sub:
        bucket.append(message.body)
        seen.set()


async def _publish_until_seen(
    broker: AmqpBroker,
    key: str,
    seen_count,
    published: list[bytes],
    *,
    tag: str,
    timeout: float = 30,
) -> None:
    """Publish ``tag-N`` every 50 ms until the subscriber saw one of them (retrying errors)."""
    start = seen_count()
    with anyio.fail_after(timeout):
        n = 0
        while seen_count() == start:
            body = f'"{tag}-{n}"'.encode()
            n += 1
            try:
                await broker.publish([OutgoingMessage(key, body)])
            except BrokerConnectionError:
                pass
            else:
                published.append(body)
            await anyio.sleep(0.05)


async def _publish_tail(broker: AmqpBroker, key: str, received: list[bytes]) -> list[bytes]:
    """Publish ``tail-0`` .. ``tail-19`` and wait until the last one was received; their bodies."""
    tail = [f'"tail-{i}"'.encode() for i in range(20)]
    await broker.publish([OutgoingMessage(key, b) for b in tail])
    with anyio.fail_after(10):
        while received[-1:] != tail[-1:]:
            await anyio.sleep(0.02)
    return tail


@pytest.mark.amqp
async def test_recovers_from_server_side_connection_kill(amqp_url: str) -> None:
    """Connections closed by the server: publisher and subscription recover by themselves.

    May be lost: messages published after the kill and before the subscription
    re-declared its queue.  Checked: nothing published before the kill and
    nothing published after the subscription is back is lost or reordered.
    """
    need_rabbitmqctl()
    name = f"aiocelev-test-{uuid.uuid4().hex[:8]}"
    key = _unique("kill")
    async with from_url(amqp_url, connection_name=name, reconnect_delay=0.1) as pub_broker:
        sub_broker = from_url(amqp_url, connection_name=name, reconnect_delay=0.1)
        sub = await sub_broker.subscribe([key])
        first_queue = sub.queue_name
        received: list[bytes] = []
        seen = anyio.Event()
        published: list[bytes] = []
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_drain_into, sub, received, seen)
                await pub_broker.publish([OutgoingMessage(key, b'"before"')])
                with anyio.fail_after(10):
                    await seen.wait()
                assert received == [b'"before"']

                assert await close_connections(name) == 2

                await _publish_until_seen(
                    pub_broker, key, lambda: len(received), published, tag="gap"
                )
                tail = await _publish_tail(pub_broker, key, received)
                tg.cancel_scope.cancel()
        finally:
            await sub_broker.aclose()
    assert received[0] == b'"before"'
    gap = [b for b in received if b.startswith(b'"gap')]
    assert gap and set(gap) <= set(published)
    assert received[-20:] == tail
    assert sub.reconnects == 1
    assert sub.queue_name != first_queue


@pytest.mark.amqp
async def test_recovers_from_rabbitmq_restart(amqp_url: str) -> None:
    """``rabbitmqctl stop_app`` / ``start_app`` under a live publisher and subscription.

    While the app is down, publish() fails fast with BrokerConnectionError.
    May be lost: messages published between the stop and the moment the
    subscription re-declared its (new, empty) queue.  Checked: the message
    published before the stop arrived; once the subscriber sees post-restart
    messages, everything published afterwards arrives, in order.
    """
    need_rabbitmqctl()
    key = _unique("restart")
    async with from_url(amqp_url, reconnect_delay=0.1, reconnect_max_delay=1) as pub_broker:
        sub_broker = from_url(amqp_url, reconnect_delay=0.1, reconnect_max_delay=1)
        sub = await sub_broker.subscribe([key])
        received: list[bytes] = []
        seen = anyio.Event()
        published: list[bytes] = []
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_drain_into, sub, received, seen)
                await pub_broker.publish([OutgoingMessage(key, b'"before"')])
                with anyio.fail_after(10):
                    await seen.wait()

                async with rabbitmq_stopped(amqp_url):
                    errors = 0
                    for _ in range(3):
                        with anyio.fail_after(5):  # fails fast, does not hang
                            try:
                                await pub_broker.publish([OutgoingMessage(key, b'"down"')])
                            except BrokerConnectionError:
                                errors += 1
                    assert errors == 3
                    assert not pub_broker.connected

                await _publish_until_seen(
                    pub_broker, key, lambda: len(received), published, tag="gap"
                )
                tail = await _publish_tail(pub_broker, key, received)
                tg.cancel_scope.cancel()
        finally:
            await sub_broker.aclose()
    assert received[0] == b'"before"'
    assert b'"down"' not in received
    assert received[-20:] == tail
    assert sub.reconnects >= 1


@pytest.mark.amqp
async def test_broadcast_without_workers_and_body_format(amqp_url: str) -> None:
    """control().broadcast() publishes Celery's pidbox request; no workers -> no replies."""
    need_rabbitmqctl()
    namespace = _unique("ctl")
    try:
        async with from_url(amqp_url, control_exchange=namespace) as broker:
            assert await broker.control().broadcast("ping", timeout=0.2) == []
            assert await broker.control().broadcast("enable_events", reply=False) == []
            exchanges = {e["name"]: e for e in list_json("exchanges", "name", "type", "durable")}
            pidbox = exchanges[f"{namespace}.pidbox"]
            assert pidbox["type"] == "fanout" and pidbox["durable"] is False
            reply = exchanges[f"reply.{namespace}.pidbox"]
            assert reply["type"] == "direct" and reply["durable"] is False
    finally:
        await delete_exchanges(amqp_url, f"{namespace}.pidbox", f"reply.{namespace}.pidbox")
    body, headers = build_control_body(
        "enable_events", ticket="t", reply_to={"exchange": "e", "routing_key": "k"}
    )
    assert encode_control_body(body).startswith(b'{"method": "enable_events", "arguments": {}, ')
    assert headers == {"clock": 0, "expires": 0}


@pytest.mark.amqp
async def test_acked_consumption_bounds_memory_with_prefetch(amqp_url: str) -> None:
    """no_ack=False: at most prefetch_count messages are in the adapter; the rest wait
    in RabbitMQ; nothing is lost or reordered (the backpressure path for slow consumers)."""
    need_rabbitmqctl()
    key = _unique("slow")
    async with from_url(amqp_url, no_ack=False, prefetch_count=10, message_ttl=60) as broker:
        sub = await broker.subscribe([key])
        bodies = [f"[{i}]".encode() for i in range(200)]
        await broker.publish([OutgoingMessage(key, b) for b in bodies])

        def ready_in_rabbitmq() -> int:
            for queue in list_json("queues", "name", "messages_ready"):
                if queue["name"] == sub.queue_name:
                    return int(queue["messages_ready"])
            return 0

        with anyio.fail_after(10):
            while ready_in_rabbitmq() < 190:
                await anyio.sleep(0.05)
        assert len(sub._buffer) <= 10
        got = []
        with anyio.fail_after(20):
            for _ in bodies:
                message = await sub.__anext__()
                assert message.ack is not None
                message.ack()
                got.append(message.body)
        assert got == bodies


@pytest.mark.amqp
async def test_event_receiver_acks_durable_queue_deliveries(amqp_url: str) -> None:
    """EventReceiver on a durable queue: processed events are acked; the rest come back."""
    from aiocelev import EventReceiver

    queue_name = _unique("recv-durable")
    key = _unique("recv")
    events = [
        {"hostname": "w@h", "type": "worker-heartbeat", "timestamp": float(i), "clock": i}
        for i in range(1, 6)
    ]
    try:
        consumer = from_url(amqp_url, queue_name=queue_name, durable=True, prefetch_count=1)
        async with EventReceiver(consumer, routing_keys=[key]) as receiver:
            async with from_url(amqp_url, confirm_publish=True) as publisher:
                for event in events:
                    message = _event_message(event)
                    await publisher.publish([OutgoingMessage(key, message.body, message.headers)])
            with anyio.fail_after(10):
                first = await receiver.receive()
                second = await receiver.receive()
            assert (first.clock, second.clock) == (1, 2)
        await consumer.aclose()

        consumer = from_url(amqp_url, queue_name=queue_name, durable=True)
        async with EventReceiver(consumer, routing_keys=[key]) as receiver:
            with anyio.fail_after(10):
                rest = [(await receiver.receive()).timestamp for _ in range(4)]
        await consumer.aclose()
        # The receiver acks a message once the caller comes back for the next
        # event: event 1 was processed (acked); event 2 was handed out but the
        # caller never came back, so it is delivered again (at least once).
        assert rest == [2.0, 3.0, 4.0, 5.0]
    finally:
        conn = await aio_pika.connect(from_url(amqp_url)._endpoints[0].url)
        async with conn:
            channel = await conn.channel()
            await channel.queue_delete(queue_name)


@pytest.mark.amqp
async def test_no_connection_left_behind(amqp_url: str) -> None:
    """aclose() (also after a cancelled iteration and a reconnect) closes every connection."""
    need_rabbitmqctl()
    name = f"aiocelev-test-{uuid.uuid4().hex[:8]}"
    broker = from_url(amqp_url, connection_name=name, heartbeat=7)
    sub = await broker.subscribe([_unique("leak")])
    with anyio.move_on_after(0.2):
        await sub.__anext__()  # cancelled while waiting
    timeouts = [
        c["timeout"]
        for c in list_json("connections", "client_properties", "timeout")
        if ["connection_name", "longstr", name] in c["client_properties"]
    ]
    assert timeouts == [7]  # the heartbeat option reached the connection
    await close_connections(name)
    await broker.publish([OutgoingMessage("x.y", b"[]")])  # reconnects on this call
    await broker.aclose()
    assert await anyio.to_thread.run_sync(lambda: connection_pids(name)) == []


def test_adapter_satisfies_the_broker_protocol() -> None:
    from aiocelev.brokers import Broker, ControlTransport, PidboxTransport, Subscription
    from aiocelev.brokers.amqp import AmqpControl, AmqpSubscription

    broker = from_url("amqp://localhost//")
    assert isinstance(broker, Broker)
    assert isinstance(AmqpSubscription(broker._connection, ["#"]), Subscription)
    control = broker.control()
    assert control is broker.control()
    assert isinstance(control, AmqpControl) and isinstance(control, PidboxTransport)
    assert isinstance(control, ControlTransport)
    assert control.namespace == "celery"


def test_control_identity_is_the_masked_url_with_vhost() -> None:
    assert (
        from_url("amqp://guest:s3cret@127.0.0.1:5672//").control().identity
        == "amqp://guest:***@127.0.0.1:5672/%2F"
    )
    # the same vhost however it is written; another vhost is another namespace
    assert from_url("amqp://127.0.0.1").control().identity == (
        "amqp://guest:***@127.0.0.1:5672/%2F"
    )
    assert from_url("amqp://u:p@h/prod?heartbeat=5").control().identity == (
        "amqp://u:***@h:5672/prod"
    )
    assert "s3cret" not in repr(from_url("amqp://guest:s3cret@h//").control())


@pytest.mark.amqp
async def test_tls_to_a_plain_port_is_a_connection_error(amqp_url: str) -> None:
    broker = from_url("amqps://guest:hunter2@127.0.0.1:5672//", connect_timeout=3)
    with pytest.raises(BrokerConnectionError) as info:
        await broker.connect()
    assert "hunter2" not in "".join(traceback.format_exception(info.value))
    await broker.aclose()


@pytest.mark.amqp
async def test_dispatcher_and_receiver_ride_out_a_killed_connection(amqp_url: str) -> None:
    """EventDispatcher -> EventReceiver over AMQP survive a server-side connection kill.

    The dispatcher buffers while the connection is down and resends; the
    receiver's subscription re-creates its queue.  Lost at most: events that
    reached RabbitMQ after the kill and before the new queue was bound.
    Checked: everything sent once the receiver saw a post-kill event arrives.
    """
    from aiocelev import EventDispatcher, EventReceiver

    need_rabbitmqctl()
    name = f"aiocelev-test-{uuid.uuid4().hex[:8]}"
    node = f"aiocelev-{uuid.uuid4().hex[:8]}@kill"
    options = {"connection_name": name, "reconnect_delay": 0.1}
    seen: list[int] = []
    async with (
        EventReceiver(amqp_url, routing_keys=["worker.#"], broker_options=options) as receiver,
        EventDispatcher(amqp_url, hostname=node, broker_options=options) as dispatcher,
    ):

        async def collect() -> None:
            async for event in receiver:
                if event.hostname == node:
                    seen.append(int(event.to_dict()["n"]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            await dispatcher.send("worker-heartbeat", n=0, freq=2.0)
            with anyio.fail_after(10):
                while not seen:
                    await anyio.sleep(0.02)
            assert await close_connections(name) == 2
            n = 1
            with anyio.fail_after(30):
                while seen[-1] == 0:
                    await dispatcher.send("worker-heartbeat", n=n, freq=2.0)
                    n += 1
                    await anyio.sleep(0.05)
            tail = list(range(1000, 1050))
            for i in tail:
                await dispatcher.send("worker-heartbeat", n=i, freq=2.0)
            with anyio.fail_after(15):
                while seen[-1] != tail[-1]:
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
    assert seen[0] == 0
    assert seen[-len(tail) :] == tail
    assert seen == sorted(seen)  # in order (a resent event may repeat, never go back)


# -- remote control (AmqpControl) on the real server ---------------------------------


@pytest.fixture
async def control_namespace(amqp_url: str) -> AsyncIterator[str]:
    """A private control namespace (other users' broadcasts stay out); exchanges removed."""
    namespace = _unique("ctl")
    yield namespace
    await delete_exchanges(amqp_url, f"{namespace}.pidbox", f"reply.{namespace}.pidbox")


async def _serve(
    pidbox: ControlSubscription,
    control: ControlTransport,
    node: str,
    handled: list[ControlRequest],
    *,
    before_reply: anyio.Event | None = None,
) -> None:
    """A minimal node: answer ``ping`` with pong, anything else with its method name."""
    async for request in pidbox:
        if not request.addressed_to(node):
            continue
        handled.append(request)
        if before_reply is not None:
            await before_reply.wait()
        payload = {"ok": "pong"} if request.method == "ping" else {"ok": request.method}
        await control.reply(request, node, payload)


def _queue_args(raw: Any) -> dict[str, Any]:
    # rabbitmqctl's JSON gives [name, type, value] triples (or a mapping)
    return dict(raw) if isinstance(raw, dict) else {a[0]: a[-1] for a in raw}


@pytest.mark.amqp
async def test_control_ping_round_trip_with_celery_wire_format(
    amqp_url: str, control_namespace: str
) -> None:
    """A client and a node in two connections: ping -> pong; exchanges, queues and
    message properties as kombu's Mailbox uses them."""
    need_rabbitmqctl()
    ns = control_namespace
    node = f"aiocelev-{uuid.uuid4().hex[:8]}@ctl"
    handled: list[ControlRequest] = []
    async with (
        from_url(amqp_url, control_exchange=ns) as client,
        from_url(amqp_url, control_exchange=ns) as server,
    ):
        node_control = server.control()
        pidbox = await node_control.consume_control(node)
        # A spy queue on the pidbox exchange sees the request as every node does.
        spy_conn = await aio_pika.connect(client._endpoints[0].url)
        async with spy_conn, anyio.create_task_group() as tg:
            spy_channel = await spy_conn.channel()
            spy = await spy_channel.declare_queue(exclusive=True)
            await spy.bind(f"{ns}.pidbox", routing_key="")
            tg.start_soon(_serve, pidbox, node_control, node, handled)

            replies = await client.control().broadcast("ping", destination=[node], timeout=10)
            assert replies == [ControlReply(node, {"ok": "pong"})]
            assert (replies[0].node, replies[0].payload) == (node, {"ok": "pong"})
            assert [r.method for r in handled[:1]] == ["ping"]
            # the node merged the client's clock, the client merged the node's
            assert handled[0].clock is not None
            assert client.control().clock.value > handled[0].clock

            before = time.time()
            assert await client.control().broadcast("ping", destination=[node], timeout=1) == [
                ControlReply(node, {"ok": "pong"})
            ]
            # The expiry survives the AMQP table: never earlier than asked, at most 1 s later
            # (a 32-bit float would round it to 128 s and often into the past).
            assert handled[-1].expires is not None
            assert before + 1 <= handled[-1].expires <= time.time() + 2
            with anyio.fail_after(10):  # basic.get polls: the message may still be in flight
                while (request := await spy.get(timeout=5, fail=False)) is None:
                    await anyio.sleep(0.05)
            assert request.delivery_mode == 2
            assert request.content_type == "application/json"
            assert request.content_encoding == "utf-8"
            assert request.priority == 0
            assert request.routing_key == ""
            assert set(request.headers) == {"clock", "expires"}
            assert request.body.startswith(
                b'{"method": "ping", "arguments": {}, "destination": ["' + node.encode()
            )
            sent = json.loads(request.body)
            assert sent["reply_to"]["exchange"] == f"reply.{ns}.pidbox"
            assert sent["ticket"] == handled[0].ticket

            # a reply as kombu's Node sends it: delivery mode 1, ticket and clock headers
            reply_spy = await spy_channel.declare_queue(exclusive=True)
            await reply_spy.bind(f"reply.{ns}.pidbox", routing_key=reply_spy.name)
            fake = ControlRequest(
                "ping",
                ticket="t-1",
                reply_to={"exchange": f"reply.{ns}.pidbox", "routing_key": reply_spy.name},
                clock=10_000,
            )
            await node_control.reply(fake, node, {"ok": "pong"})
            with anyio.fail_after(10):  # basic.get polls: the reply may still be in flight
                while (reply := await reply_spy.get(timeout=5, fail=False)) is None:
                    await anyio.sleep(0.05)
            assert reply.body == json.dumps({node: {"ok": "pong"}}).encode()
            assert reply.delivery_mode == 1
            assert reply.content_type == "application/json"
            assert reply.headers["ticket"] == "t-1"
            assert int(reply.headers["clock"]) > 10_000

            exchanges = {e["name"]: e for e in list_json("exchanges", "name", "type", "durable")}
            assert exchanges[f"{ns}.pidbox"]["type"] == "fanout"
            assert exchanges[f"{ns}.pidbox"]["durable"] is False
            assert exchanges[f"reply.{ns}.pidbox"]["type"] == "direct"
            queues = {
                q["name"]: q
                for q in list_json(
                    "queues", "name", "durable", "auto_delete", "exclusive", "arguments"
                )
            }
            mine = queues[f"{node}.{ns}.pidbox"]
            assert (mine["durable"], mine["auto_delete"], mine["exclusive"]) == (False, True, True)
            assert _queue_args(mine["arguments"]) == {"x-message-ttl": 300000, "x-expires": 10000}
            tg.cancel_scope.cancel()
        await pidbox.aclose()


@pytest.mark.amqp
async def test_control_replies_stream_and_stop_early(amqp_url: str, control_namespace: str) -> None:
    """The first reply is yielded while the second node still waits for it (so before
    the timeout); the block ends as soon as every destination answered."""
    ns = control_namespace
    first, second = (f"aiocelev-{uuid.uuid4().hex[:8]}@{n}" for n in ("one", "two"))
    took_first = anyio.Event()
    handled: list[ControlRequest] = []
    async with (
        from_url(amqp_url, control_exchange=ns) as client,
        from_url(amqp_url, control_exchange=ns) as server,
    ):
        control = server.control()
        box_one = await control.consume_control(first)
        box_two = await control.consume_control(second)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_serve, box_one, control, first, handled)
            # the second node answers only once the client has taken the first reply
            tg.start_soon(
                partial(_serve, box_two, control, second, handled, before_reply=took_first)
            )
            got: list[str] = []
            # 60 s timeout, 30 s deadline: only streaming + early stop can pass
            with anyio.fail_after(30):
                async with client.control().broadcast(
                    "ping", destination=[first, second], timeout=60
                ) as replies:
                    async for reply in replies:
                        got.append(reply.node)
                        took_first.set()
            assert got == [first, second]
            assert replies.missing == [] and replies.received == 2

            # a destination that never answers: the ones that did, and who is missing
            ghost = f"ghost-{uuid.uuid4().hex[:8]}@nowhere"
            async with client.control().broadcast(
                "ping", destination=[first, ghost], timeout=1
            ) as replies:
                nodes = [reply.node async for reply in replies]
            assert nodes == [first]
            assert replies.missing == [ghost]
            tg.cancel_scope.cancel()
        await box_one.aclose()
        await box_two.aclose()


@pytest.mark.amqp
async def test_control_reply_queue_is_gone_after_the_block(
    amqp_url: str, control_namespace: str
) -> None:
    need_rabbitmqctl()
    ns = control_namespace

    def reply_queues() -> list[str]:
        return [
            q["name"]
            for q in list_json("queues", "name")
            if q["name"].endswith(f".reply.{ns}.pidbox")
        ]

    async with from_url(amqp_url, control_exchange=ns) as client:
        async with client.control().broadcast("ping", timeout=60) as replies:
            (name,) = await anyio.to_thread.run_sync(reply_queues)
            assert name.endswith(f".reply.{ns}.pidbox")
            assert replies.received == 0
        with anyio.fail_after(10):
            while await anyio.to_thread.run_sync(reply_queues):
                await anyio.sleep(0.05)

        # also when the waiting task is cancelled
        async with anyio.create_task_group() as tg:
            entered = anyio.Event()

            async def wait_forever() -> None:
                async with client.control().broadcast("ping", timeout=60) as replies:
                    entered.set()
                    async for _ in replies:
                        pass

            tg.start_soon(wait_forever)
            with anyio.fail_after(10):
                await entered.wait()
            assert len(await anyio.to_thread.run_sync(reply_queues)) == 1
            tg.cancel_scope.cancel()
        with anyio.fail_after(10):
            while await anyio.to_thread.run_sync(reply_queues):
                await anyio.sleep(0.05)


@pytest.mark.amqp
async def test_control_duplicate_node_name_is_refused(
    amqp_url: str, control_namespace: str
) -> None:
    """Two connections consuming one node name: DuplicateNodeError, in this process
    (the transport's registry) and from RabbitMQ (RESOURCE_LOCKED on the exclusive queue)."""
    ns = control_namespace
    node = f"aiocelev-{uuid.uuid4().hex[:8]}@dup"
    async with (
        from_url(amqp_url, control_exchange=ns) as one,
        from_url(amqp_url, control_exchange=ns) as two,
    ):
        pidbox = await one.control().consume_control(node)
        with pytest.raises(DuplicateNodeError):
            await two.control().consume_control(node)
        # past the registry, straight to the server: RabbitMQ refuses the exclusive queue
        with pytest.raises(DuplicateNodeError) as info:
            await two.control().consume_pidbox(node)
        assert "RESOURCE_LOCKED" in repr(info.value.__cause__) or "locked" in str(
            info.value.__cause__
        )
        # the refused connection is still usable
        assert await two.control().broadcast("ping", destination=["nobody@x"], timeout=0.2) == []
        await pidbox.aclose()
        # once the first node has gone, the name is free again
        with anyio.fail_after(10):
            while True:
                try:
                    again = await two.control().consume_control(node)
                except DuplicateNodeError:
                    await anyio.sleep(0.05)
                else:
                    break
        await again.aclose()


@pytest.mark.amqp
async def test_wait_amqp_ready_helper(amqp_url: str) -> None:
    """The helper restart tests end with: returns on a serving broker, fails on a dead one."""
    with anyio.fail_after(60):
        await wait_amqp_ready(amqp_url, deadline=30)
    with pytest.raises(TimeoutError):
        await wait_amqp_ready("amqp://guest:guest@127.0.0.1:1//", deadline=0.5)


@pytest.mark.amqp
async def test_control_after_a_killed_connection(amqp_url: str, control_namespace: str) -> None:
    """A node's pidbox ends with BrokerConnectionError when its connection is killed;
    consuming again and broadcasting again work on the new connection."""
    need_rabbitmqctl()
    ns = control_namespace
    name = f"aiocelev-test-{uuid.uuid4().hex[:8]}"
    node = f"aiocelev-{uuid.uuid4().hex[:8]}@killed"
    handled: list[ControlRequest] = []
    options = {"control_exchange": ns, "connection_name": name, "reconnect_delay": 0.1}
    async with from_url(amqp_url, **options) as broker:
        control = broker.control()
        pidbox = await control.consume_control(node)
        # nobody serves the pidbox yet: no reply, the request waits in it
        assert await control.broadcast("ping", destination=[node], timeout=0.2) == []
        assert await close_connections(name) == 1
        with anyio.fail_after(10):
            # what arrived before the loss is handed out first
            assert (await pidbox.__anext__()).method == "ping"
            with pytest.raises(BrokerConnectionError):
                await pidbox.__anext__()
        await pidbox.aclose()
        with anyio.fail_after(20):
            while True:  # the old exclusive queue may linger a moment on the server
                try:
                    pidbox = await control.consume_control(node)
                except (DuplicateNodeError, BrokerConnectionError):
                    await anyio.sleep(0.1)
                else:
                    break
        async with anyio.create_task_group() as tg:
            tg.start_soon(_serve, pidbox, control, node, handled)
            replies = await control.broadcast("ping", destination=[node], timeout=10)
            assert [r.as_dict() for r in replies] == [{node: {"ok": "pong"}}]
            tg.cancel_scope.cancel()
        await pidbox.aclose()
    assert [r.method for r in handled] == ["ping"]
