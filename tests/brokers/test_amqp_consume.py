"""The lean AMQP consume path against the real RabbitMQ (and its fallback, aiormq's)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aio_pika
import anyio
import pytest

from aiocelev import OutgoingMessage
from aiocelev.brokers._amqp_consume import delivery_protocol, supported
from aiocelev.brokers.amqp import AmqpSubscription, from_url
from aiocelev.testing import check_broker

from ._rabbitmq import list_json, need_rabbitmqctl


def _unique(prefix: str) -> str:
    return f"aiocelevtest.{prefix}.{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def private_exchange(amqp_url: str) -> AsyncIterator[str]:
    name = _unique("celeryev")
    yield name
    with anyio.CancelScope(shield=True):
        conn = await aio_pika.connect(from_url(amqp_url)._endpoints[0].url)
        async with conn:
            channel = await conn.channel()
            await channel.exchange_delete(name)


def _lean(sub: AmqpSubscription) -> bool:
    """Whether *sub* takes its deliveries from the connection's demux."""
    return sub._attached is not None


@pytest.fixture(autouse=True)
def _lean_path_available(request: pytest.FixtureRequest) -> None:
    if "fast" not in request.fixturenames and not supported():
        pytest.skip("this aiormq has no transport factory: only aiormq's path exists")


def test_fast_consume_option() -> None:
    assert from_url("amqp://h//").options.fast_consume is True
    assert from_url("amqp://h//?fast_consume=0").options.fast_consume is False
    assert from_url("amqp://h//", fast_consume=False).options.fast_consume is False


@pytest.mark.amqp
async def test_conformance_on_aiormqs_consumer(amqp_url: str, private_exchange: str) -> None:
    """``fast_consume=False`` keeps aiormq's own delivery path, which still conforms."""
    await check_broker(lambda: from_url(amqp_url, exchange=private_exchange, fast_consume=False))


@pytest.mark.amqp
@pytest.mark.parametrize("fast", [True, False], ids=["lean", "aiormq"])
async def test_both_paths_hand_up_the_same_messages(
    amqp_url: str, private_exchange: str, fast: bool
) -> None:
    """Bodies over several frames, empty bodies, headers of every common type,
    no properties at all: the same ``IncomingMessage`` on both paths, in order."""
    key = "task.multi"
    messages = [
        OutgoingMessage(key, b'[{"type": "task-started"}]', {"hostname": "w@h"}),
        OutgoingMessage(key, b"x" * 400_000, {"hostname": "w@h", "n": 3, "l": [1, "a"]}),
        OutgoingMessage(key, b"", {}),
        OutgoingMessage(key, "é".encode(), {"nested": {"a": True}}, content_type="text/plain"),
    ]
    async with from_url(amqp_url, exchange=private_exchange, fast_consume=fast) as broker:
        sub = await broker.subscribe(["task.#"])
        assert _lean(sub) is (fast and supported())
        await broker.publish(messages)
        with anyio.fail_after(10):
            got = [await sub.__anext__() for _ in messages]
    for message, incoming in zip(messages, got, strict=True):
        assert incoming.routing_key == key
        assert incoming.body == message.body
        assert incoming.content_type == message.content_type
        assert incoming.content_encoding == message.content_encoding
        assert dict(incoming.headers) == dict(message.headers)
        assert incoming.ack is None
    got[0].headers["mutated"] = 1  # type: ignore[index]
    assert "mutated" not in got[1].headers  # every message has its own headers


@pytest.mark.amqp
async def test_acks_on_the_lean_path_reach_the_broker(amqp_url: str, private_exchange: str) -> None:
    """``no_ack=False``: with a prefetch of 5, 50 messages arrive only if the acks
    sent for the lean deliveries are taken by RabbitMQ."""
    async with from_url(
        amqp_url, exchange=private_exchange, no_ack=False, prefetch_count=5, message_ttl=60
    ) as broker:
        sub = await broker.subscribe(["k.#"])
        assert _lean(sub)
        await broker.publish([OutgoingMessage("k.x", b"[%d]" % i) for i in range(50)])
        got = []
        with anyio.fail_after(20):
            for _ in range(50):
                message = await sub.__anext__()
                assert message.ack is not None
                assert len(sub._buffer) <= 5
                message.ack()
                got.append(message.body)
    assert got == [b"[%d]" % i for i in range(50)]


@pytest.mark.amqp
async def test_channel_closed_by_the_broker_mid_stream(
    amqp_url: str, private_exchange: str
) -> None:
    """The broker closes the subscription's channel (an ack of a tag it never
    delivered is a PRECONDITION_FAILED): the lean path lets go of the channel
    number, the subscription re-subscribes on a new channel and messages flow again
    while the connection (and its publisher) stays up."""
    async with from_url(amqp_url, exchange=private_exchange, reconnect_delay=0.05) as broker:
        sub = await broker.subscribe(["k.#"])
        await broker.publish([OutgoingMessage("k.x", b"[1]")])
        with anyio.fail_after(10):
            assert (await sub.__anext__()).body == b"[1]"
        demux, number, _ = sub._attached or (None, 0, None)
        assert demux is not None
        assert sub._underlay is not None
        await sub._underlay.basic_ack(999_999)  # the broker answers with channel.close
        with anyio.fail_after(10):
            while demux.attached:
                await anyio.sleep(0.01)
        with anyio.fail_after(20):
            n = 2
            while True:
                await broker.publish([OutgoingMessage("k.x", b"[%d]" % n)])
                with anyio.move_on_after(0.2):
                    if (await sub.__anext__()).body != b"[1]":
                        break
                n += 1
        assert sub.reconnects == 1
        assert _lean(sub) and demux.attached == 1
        assert broker.connected


@pytest.mark.amqp
async def test_closing_detaches_and_closes_the_connection(amqp_url: str) -> None:
    broker = from_url(amqp_url)
    sub = await broker.subscribe([_unique("close")])
    assert sub._attached is not None
    demux = sub._attached[0]
    with anyio.move_on_after(0.1):
        await sub.__anext__()  # cancelled while waiting
    await broker.aclose()
    assert demux.attached == 0 and sub._attached is None
    conn = broker._connection._conn
    assert conn is None


@pytest.mark.amqp
async def test_only_subscriptions_attach(amqp_url: str) -> None:
    """The publisher's and remote control's channels keep aiormq's reader."""
    async with from_url(amqp_url) as broker:
        conn = broker._connection._conn
        assert conn is not None
        protocol = delivery_protocol(conn)
        assert protocol is not None and protocol.demux.attached == 0
        await broker.control().broadcast("ping", timeout=0.2)
        assert protocol.demux.attached == 0
        sub = await broker.subscribe([_unique("one")])
        assert protocol.demux.attached == 1
        await sub.aclose()
        assert protocol.demux.attached == 0


@pytest.mark.amqp
async def test_every_ack_of_a_read_reaches_the_broker(amqp_url: str, private_exchange: str) -> None:
    """Ten deliveries taken in one read, each acknowledged after it was handed out:
    all ten acknowledgements reach RabbitMQ (none is left in a list already sent)."""
    need_rabbitmqctl()
    async with from_url(
        amqp_url, exchange=private_exchange, no_ack=False, prefetch_count=20, message_ttl=60
    ) as broker:
        sub = await broker.subscribe(["k.#"])
        await broker.publish([OutgoingMessage("k.x", b"[%d]" % i) for i in range(10)])
        with anyio.fail_after(10):
            while len(sub._buffer) < 10:
                await anyio.sleep(0.01)
            for _ in range(10):
                message = await sub.__anext__()
                assert message.ack is not None
                message.ack()
            await broker.publish([OutgoingMessage("k.x", b"[10]")])
            assert (await sub.__anext__()).body == b"[10]"  # sends the pending acks first

        def unacknowledged() -> int:
            for queue in list_json("queues", "name", "messages_unacknowledged"):
                if queue["name"] == sub.queue_name:
                    return int(queue["messages_unacknowledged"])
            raise AssertionError(f"queue {sub.queue_name} not found")

        with anyio.fail_after(10):
            while await anyio.to_thread.run_sync(unacknowledged) != 1:
                await anyio.sleep(0.05)


@pytest.mark.amqp
@pytest.mark.parametrize("fast", [True, False], ids=["lean", "aiormq"])
async def test_publishing_writes_to_the_transport_directly(
    amqp_url: str, private_exchange: str, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the adapter's protocol a publish never waits for aiormq's writer task: with
    that task's queue refusing frames, 300 messages in 3 calls still arrive in order.
    A transport over its write limit makes ``publish()`` wait until it has room."""
    async with from_url(amqp_url, exchange=private_exchange, fast_consume=fast) as broker:
        sub = await broker.subscribe(["k.#"])
        conn = broker._connection._conn
        assert conn is not None
        protocol = delivery_protocol(conn)
        assert (protocol is not None) is (fast and supported())
        if protocol is None:
            await broker.publish([OutgoingMessage("k.x", b"[0]")])
            with anyio.fail_after(10):
                assert (await sub.__anext__()).body == b"[0]"
            return
        channel = broker._publisher._channel
        assert channel is not None
        aiormq_conn = (await channel.get_underlay_channel()).connection

        async def refuse(frame: object) -> None:
            raise AssertionError("publish went through aiormq's writer queue")

        monkeypatch.setattr(aiormq_conn.write_queue, "put", refuse)
        for start in range(0, 300, 100):
            await broker.publish(
                [OutgoingMessage("k.x", b"[%d]" % i) for i in range(start, start + 100)]
            )
        with anyio.fail_after(10):
            got = [(await sub.__anext__()).body for _ in range(300)]
        assert got == [b"[%d]" % i for i in range(300)]

        # Over its limit (as if the socket did not take the bytes): the publish waits.
        protocol.pause_writing()
        done = anyio.Event()

        async def publish() -> None:
            await broker.publish([OutgoingMessage("k.x", b"[300]")])
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(publish)
            await anyio.sleep(0.2)
            assert not done.is_set()
            protocol.resume_writing()
            with anyio.fail_after(5):
                await done.wait()
        with anyio.fail_after(10):
            assert (await sub.__anext__()).body == b"[300]"
