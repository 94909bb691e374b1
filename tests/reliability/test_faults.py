"""Broker faults under a live EventDispatcher / EventReceiver, on both real brokers.

Adapter-level recovery is tested in tests/brokers/ (server-side kills, restarts,
health checks, Sentinel failover); these tests check what a user of the
dispatcher and the receiver relies on: ``send`` never hangs, events are
buffered and delivered in order once the broker is back, the receiver gives up
(or not) within ``connect_timeout``, and what the docs say may be lost is all
that is lost.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread
import pytest
import redis.asyncio as aioredis

from aiocelev import BrokerConnectionError, EventDispatcher, EventReceiver

from ..brokers._rabbitmq import delete_exchanges, need_rabbitmqctl, rabbitmq_stopped
from ..brokers._redis import free_port, redis_processes
from ._helpers import StallProxy, unique, wait_until
from .conftest import Target

pytestmark = pytest.mark.timeout(90)

SECRET = "Sup3rS3cretPw"


def _uuids(events: list[Any]) -> list[str]:
    return [e["uuid"] for e in events]


async def _take(receiver: EventReceiver, count: int, timeout: float = 20) -> list[Any]:
    with anyio.fail_after(timeout):
        return [await receiver.receive() for _ in range(count)]


@contextlib.contextmanager
def proxy_to(target_port: int, port: int = 0) -> Iterator[StallProxy]:
    proxy = StallProxy(target_port, port)
    try:
        yield proxy
    finally:
        proxy.close()


# -- broker down at start ---------------------------------------------------------


async def test_dispatcher_started_while_the_broker_is_down_buffers_then_delivers_in_order(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    """The dispatcher opens anyway, logs, buffers, retries with backoff, and once the
    broker is reachable delivers every buffered event, in order, none dropped."""
    caplog.set_level(logging.INFO, logger="aiocelev.dispatcher")
    port = free_port()  # nothing listens there yet
    node = f"rel-{uuid.uuid4().hex[:8]}@down"
    async with (
        EventReceiver(
            target.url(), routing_keys=["task.#"], broker_options=target.options
        ) as receiver,
        EventDispatcher(
            target.url(port), hostname=node, broker_options=target.fast()
        ) as dispatcher,
    ):
        with anyio.fail_after(10):  # send never waits for the broker
            for i in range(30):
                await dispatcher.send("task-started", uuid=f"e{i}")
        assert dispatcher.statistics().buffered == 30
        await wait_until(lambda: dispatcher.statistics().publish_errors >= 2)
        with proxy_to(target.port, port):  # the broker becomes reachable on that port
            with anyio.fail_after(30):
                await dispatcher.flush()
            got = await _take(receiver, 30)
        stats = dispatcher.statistics()
    assert _uuids(got) == [f"e{i}" for i in range(30)]
    assert (stats.sent, stats.dropped, stats.buffered) == (30, 0, 0)
    text = caplog.text
    assert "unavailable at start" in text
    assert "retrying in" in text
    assert "publishing to" in text and "again" in text


async def test_receiver_started_while_the_broker_is_down_gives_up_after_connect_timeout(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    port = free_port()
    url = target.url(port, password=SECRET)
    receiver = EventReceiver(url, connect_timeout=1.0, broker_options=target.fast())
    with anyio.fail_after(15), pytest.raises(BrokerConnectionError) as info:
        async with receiver:
            raise AssertionError("connected to nothing")
    assert "retrying in" in caplog.text  # it did retry, and said so
    assert SECRET not in str(info.value) and SECRET not in caplog.text
    assert SECRET not in repr(receiver)
    assert str(port) in str(info.value)


async def test_receiver_started_while_the_broker_is_down_connects_when_it_comes_up(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aiocelev.receiver")
    port = free_port()
    proxies: list[StallProxy] = []

    async def come_up_later() -> None:
        await anyio.sleep(0.8)
        proxies.append(StallProxy(target.port, port))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(come_up_later)
            with anyio.fail_after(20):
                async with (
                    EventReceiver(
                        target.url(port), connect_timeout=15, broker_options=target.fast()
                    ) as receiver,
                    EventDispatcher(target.url(), broker_options=target.options) as dispatcher,
                ):
                    await dispatcher.send("worker-heartbeat", freq=2.0, n=1)
                    (event,) = await _take(receiver, 1)
        assert event["n"] == 1
        assert "retrying in" in caplog.text
    finally:
        for proxy in proxies:
            proxy.close()


# -- a stalled connection -----------------------------------------------------------


async def test_stalled_connection_send_never_blocks_flush_is_boundable_nothing_lost(
    target: Target,
) -> None:
    """Packets stop flowing (no RST, no FIN).  ``send`` keeps returning; ``flush`` can be
    bounded with ``anyio.fail_after``; the adapter's timeouts (Redis ``socket_timeout``,
    AMQP publisher confirms with ``publish_timeout``) turn the stall into publish errors,
    and the events are retried: once the path flows again every one arrives (an event
    in flight when the stall began may arrive twice)."""
    if target.kind == "amqp":
        options = target.fast(confirm_publish=True, publish_timeout=1.0, connect_timeout=1.0)
    else:
        options = target.fast(socket_timeout=1.0, socket_connect_timeout=1.0)
    node = f"rel-{uuid.uuid4().hex[:8]}@stall"
    with proxy_to(target.port) as proxy:
        async with (
            EventReceiver(
                target.url(), routing_keys=["task.#"], broker_options=target.options
            ) as receiver,
            EventDispatcher(
                target.url(proxy.port), hostname=node, broker_options=options
            ) as dispatcher,
        ):
            await dispatcher.send("task-started", uuid="e0")
            with anyio.fail_after(10):
                await dispatcher.flush()
            assert _uuids(await _take(receiver, 1)) == ["e0"]

            proxy.stall()
            with anyio.fail_after(10):
                for i in range(1, 21):
                    await dispatcher.send("task-started", uuid=f"e{i}")
            with pytest.raises(TimeoutError), anyio.fail_after(0.5):
                await dispatcher.flush()
            await wait_until(lambda: dispatcher.statistics().publish_errors >= 1, timeout=15)
            assert dispatcher.statistics().buffered > 0

            proxy.resume()
            with anyio.fail_after(30):
                await dispatcher.flush()
            seen: set[str] = set()
            with anyio.fail_after(20):
                while len(seen) < 20:
                    seen.add((await receiver.receive())["uuid"])
            stats = dispatcher.statistics()
    assert seen == {f"e{i}" for i in range(1, 21)}
    assert stats.dropped == 0


# -- restarts and killed connections --------------------------------------------------


async def _send_until_seen(
    dispatcher: EventDispatcher, seen: list[int], start: int, timeout: float = 30
) -> int:
    """Send heartbeats n=start, start+1... until the receiver saw one >= start."""
    n = start
    with anyio.fail_after(timeout):
        while not seen or seen[-1] < start:
            await dispatcher.send("worker-heartbeat", freq=2.0, n=n)
            n += 1
            await anyio.sleep(0.05)
    return n


async def _ride_out(
    receiver: EventReceiver, dispatcher: EventDispatcher, node: str, fault: Any
) -> list[int]:
    """Send n=0; run *fault*; send during and after it; then a tail of 50: the heartbeats seen."""
    seen: list[int] = []

    async def collect() -> None:
        async for event in receiver:
            if event.hostname == node:
                seen.append(int(event["n"]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        await dispatcher.send("worker-heartbeat", freq=2.0, n=0)
        await wait_until(lambda: seen == [0])
        await fault(dispatcher)
        await _send_until_seen(dispatcher, seen, 100)
        for n in range(1000, 1050):
            await dispatcher.send("worker-heartbeat", freq=2.0, n=n)
        await wait_until(lambda: seen[-1] == 1049, timeout=20)
        tg.cancel_scope.cancel()
    return seen


@pytest.mark.redis
async def test_redis_restart_under_dispatcher_and_receiver(redis_url: str) -> None:
    """Own redis-server killed and restarted.  The dispatcher buffers during the outage
    (nothing dropped on its side); the receiver resubscribes.  Lost at most: events
    published while the subscription was not re-established (pub/sub keeps nothing)."""
    node = f"rel-{uuid.uuid4().hex[:8]}@restart"
    with redis_processes() as spawn:
        server = spawn()
        options = {"reconnect_delay": 0.05, "reconnect_max_delay": 0.3}

        async def restart(dispatcher: EventDispatcher) -> None:
            server.stop()
            with anyio.fail_after(10):  # send never blocks while the server is gone
                for n in range(1, 11):
                    await dispatcher.send("worker-heartbeat", freq=2.0, n=n)
            await wait_until(lambda: dispatcher.statistics().publish_errors >= 1)
            await anyio.to_thread.run_sync(server.start)

        async with (
            EventReceiver(
                server.url, routing_keys=["worker.#"], broker_options=options
            ) as receiver,
            EventDispatcher(server.url, hostname=node, broker_options=options) as dispatcher,
        ):
            seen = await _ride_out(receiver, dispatcher, node, restart)
            stats = dispatcher.statistics()
    assert seen[0] == 0
    assert seen[-50:] == list(range(1000, 1050))
    assert seen == sorted(seen)
    assert stats.dropped == 0


@pytest.mark.redis
async def test_redis_client_kill_under_dispatcher_and_receiver(redis_url: str) -> None:
    """CLIENT KILL of every connection (publisher and subscriber) on an own server."""
    node = f"rel-{uuid.uuid4().hex[:8]}@kill"
    with redis_processes() as spawn:
        server = spawn()
        options = {"reconnect_delay": 0.05, "reconnect_max_delay": 0.3}
        killed: list[int] = []

        async def kill(dispatcher: EventDispatcher) -> None:
            admin = aioredis.Redis(port=server.port, protocol=2)
            try:
                for kind in ("normal", "pubsub"):
                    killed.append(int(await admin.execute_command("CLIENT", "KILL", "TYPE", kind)))
            finally:
                await admin.aclose()

        async with (
            EventReceiver(
                server.url, routing_keys=["worker.#"], broker_options=options
            ) as receiver,
            EventDispatcher(server.url, hostname=node, broker_options=options) as dispatcher,
        ):
            seen = await _ride_out(receiver, dispatcher, node, kill)
            stats = dispatcher.statistics()
    assert killed[1] >= 1  # the subscriber's connection was killed
    assert seen[0] == 0
    assert seen[-50:] == list(range(1000, 1050))
    assert seen == sorted(seen)
    assert stats.dropped == 0


@pytest.mark.amqp
async def test_rabbitmq_restart_under_dispatcher_and_receiver(amqp_url: str) -> None:
    """``rabbitmqctl stop_app`` / ``start_app`` with the default (exclusive, auto-delete)
    subscription queue: the dispatcher buffers and resends; the receiver re-creates
    its queue.  Lost at most: events that reached RabbitMQ before the new queue was bound."""
    need_rabbitmqctl()
    exchange = unique("ex")
    node = f"rel-{uuid.uuid4().hex[:8]}@restart"
    options = {"exchange": exchange, "reconnect_delay": 0.1, "reconnect_max_delay": 0.5}

    async def restart(dispatcher: EventDispatcher) -> None:
        async with rabbitmq_stopped(amqp_url):
            with anyio.fail_after(10):
                for n in range(1, 11):
                    await dispatcher.send("worker-heartbeat", freq=2.0, n=n)
            await wait_until(lambda: dispatcher.statistics().publish_errors >= 1)

    try:
        async with (
            EventReceiver(amqp_url, routing_keys=["worker.#"], broker_options=options) as receiver,
            EventDispatcher(amqp_url, hostname=node, broker_options=options) as dispatcher,
        ):
            seen = await _ride_out(receiver, dispatcher, node, restart)
            stats = dispatcher.statistics()
    finally:
        await delete_exchanges(amqp_url, exchange)
    assert seen[0] == 0
    assert seen[-50:] == list(range(1000, 1050))
    assert seen == sorted(seen)
    assert stats.dropped == 0


@pytest.mark.amqp
async def test_rabbitmq_restart_with_durable_queue_and_confirms(amqp_url: str) -> None:
    """Durable queue + publisher confirms across a receiver restart *and* a broker restart.

    * Events published while no receiver is consuming wait in the durable queue.
    * Events sent while RabbitMQ is down wait in the dispatcher and, confirmed once it
      is back, are all delivered in order: nothing lost.
    * But Celery events are transient (``delivery_mode`` 1, as Celery sends them):
      events *sitting in the queue* when RabbitMQ restarts are discarded by RabbitMQ.
    """
    import aio_pika

    from aiocelev.brokers.amqp import from_url

    need_rabbitmqctl()
    exchange = unique("ex")
    queue = unique("durable")
    node = f"rel-{uuid.uuid4().hex[:8]}@durable"
    consumer = {"exchange": exchange, "queue_name": queue, "durable": True,
                "reconnect_delay": 0.1, "reconnect_max_delay": 0.5}  # fmt: skip
    producer = {"exchange": exchange, "confirm_publish": True,
                "reconnect_delay": 0.1, "reconnect_max_delay": 0.5}  # fmt: skip

    async def uuids_of(receiver: EventReceiver, count: int) -> list[str]:
        got = _uuids(await _take(receiver, count))
        # Come back once more: the receiver acks a message when the caller asks for
        # the next event (otherwise the last message is redelivered: at least once).
        with anyio.move_on_after(0.3):
            got.append((await receiver.receive())["uuid"])
        return got

    try:
        async with EventDispatcher(amqp_url, hostname=node, broker_options=producer) as dispatcher:
            async with EventReceiver(
                amqp_url, routing_keys=["task.#"], broker_options=consumer
            ) as receiver:
                for i in range(3):
                    await dispatcher.send("task-started", uuid=f"a{i}")
                assert await uuids_of(receiver, 3) == ["a0", "a1", "a2"]
            # no receiver now: these wait in the durable queue
            for i in range(3):
                await dispatcher.send("task-started", uuid=f"q{i}")
            with anyio.fail_after(10):
                await dispatcher.flush()
            async with EventReceiver(
                amqp_url, routing_keys=["task.#"], broker_options=consumer
            ) as receiver:
                assert await uuids_of(receiver, 3) == ["q0", "q1", "q2"]
            for i in range(3):
                await dispatcher.send("task-started", uuid=f"s{i}")  # will sit in the queue
            with anyio.fail_after(10):
                await dispatcher.flush()
            async with rabbitmq_stopped(amqp_url):
                with anyio.fail_after(10):
                    for i in range(10):
                        await dispatcher.send("task-started", uuid=f"d{i}")
                await wait_until(lambda: dispatcher.statistics().publish_errors >= 1)
            with anyio.fail_after(30):
                await dispatcher.flush()
            for i in range(3):
                await dispatcher.send("task-started", uuid=f"t{i}")
            async with EventReceiver(
                amqp_url, routing_keys=["task.#"], broker_options=consumer
            ) as receiver:
                got = await uuids_of(receiver, 13)
            stats = dispatcher.statistics()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            conn = await aio_pika.connect(from_url(amqp_url)._endpoints[0].url)
            async with conn:
                channel = await conn.channel()
                await channel.queue_delete(queue)
        await delete_exchanges(amqp_url, exchange)
    assert got == [f"d{i}" for i in range(10)] + ["t0", "t1", "t2"]  # s0..s2: discarded
    assert stats.dropped == 0


@pytest.mark.amqp
async def test_amqp_heartbeat_detects_a_stalled_receiver_connection(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver whose path to RabbitMQ silently stalls: with ``heartbeat`` set, the
    dead connection is detected (after a few missed heartbeats), the subscription is
    re-created once the path flows again, and events arrive again.  (On Redis the
    same is done by ``health_check_interval``: tests/brokers/test_redis.py::
    test_health_check_detects_a_silent_server.)"""
    caplog.set_level(logging.WARNING, logger="aiocelev.brokers.amqp")
    exchange = unique("ex")
    node = f"rel-{uuid.uuid4().hex[:8]}@hb"
    options = {"exchange": exchange, "heartbeat": 1, "reconnect_delay": 0.1,
               "reconnect_max_delay": 0.5, "connect_timeout": 1}  # fmt: skip
    try:
        with proxy_to(5672) as proxy:
            async with (
                EventReceiver(
                    f"amqp://guest:guest@127.0.0.1:{proxy.port}//",
                    routing_keys=["worker.#"],
                    broker_options=options,
                ) as receiver,
                EventDispatcher(
                    amqp_url, hostname=node, broker_options={"exchange": exchange}
                ) as dispatcher,
            ):
                await dispatcher.send("worker-heartbeat", freq=2.0, n=0)
                assert (await _take(receiver, 1))[0]["n"] == 0
                proxy.stall()
                with anyio.move_on_after(20):
                    while "lost its channel" not in caplog.text:
                        with anyio.move_on_after(0.2):
                            await receiver.receive()
                assert "lost its channel" in caplog.text
                proxy.resume()
                with anyio.fail_after(20):
                    n = 1
                    while True:
                        await dispatcher.send("worker-heartbeat", freq=2.0, n=n)
                        with anyio.move_on_after(0.2):
                            if (await receiver.receive())["n"] >= 1:
                                break
                        n += 1
    finally:
        await delete_exchanges(amqp_url, exchange)
    assert "re-created" in caplog.text


@pytest.mark.amqp
async def test_amqp_without_confirms_loses_what_was_written_to_a_dying_connection(
    amqp_url: str,
) -> None:
    """The documented limit of the default (no publisher confirms): ``publish`` returns
    once the frames are written to the socket, so events written to a connection whose
    path then dies are counted as sent and never arrive.  With ``confirm_publish=True``
    they are retried instead (see the stalled-connection test above)."""
    exchange = unique("ex")
    node = f"rel-{uuid.uuid4().hex[:8]}@noconfirm"
    try:
        with proxy_to(5672) as proxy:
            async with (
                EventReceiver(
                    amqp_url, routing_keys=["task.#"], broker_options={"exchange": exchange}
                ) as receiver,
                EventDispatcher(
                    f"amqp://guest:guest@127.0.0.1:{proxy.port}//",
                    hostname=node,
                    close_timeout=0.5,
                    broker_options={"exchange": exchange, "connect_timeout": 1},
                ) as dispatcher,
            ):
                await dispatcher.send("task-started", uuid="e0")
                assert _uuids(await _take(receiver, 1)) == ["e0"]
                proxy.stall()
                for i in range(1, 21):
                    await dispatcher.send("task-started", uuid=f"e{i}")
                with anyio.fail_after(10):
                    await dispatcher.flush()  # "sent": written to the socket
                assert dispatcher.statistics().sent == 21
                proxy.close()  # the path dies with the frames still in it
                with anyio.move_on_after(1.0):
                    late = await receiver.receive()
                    raise AssertionError(f"unexpected {late['uuid']}")
            stats = dispatcher.statistics()
    finally:
        await delete_exchanges(amqp_url, exchange)
    assert (stats.sent, stats.dropped) == (21, 0)  # 20 of them silently lost
