"""The memory:// adapter: the conformance suite, plus hub isolation and backpressure."""

from __future__ import annotations

import re

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from aiocelev import BrokerConnectionError, ClosedError, ConfigurationError, OutgoingMessage
from aiocelev.brokers import Broker, Subscription, open_broker
from aiocelev.brokers._topic import compile_bindings, topic_matches
from aiocelev.brokers.memory import MemoryBroker, from_url, memory_hub
from aiocelev.testing import check_broker

from .._helpers import wait_until


@pytest.fixture
def url(request: pytest.FixtureRequest) -> str:
    return "memory://" + re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)


def msg(routing_key: str, body: bytes) -> OutgoingMessage:
    return OutgoingMessage(routing_key, body, headers={"hostname": "t@h"})


async def take(sub: Subscription, count: int) -> list[bytes]:
    with anyio.fail_after(5):
        return [(await sub.__anext__()).body for _ in range(count)]


async def test_conformance(url: str) -> None:
    await check_broker(lambda: MemoryBroker(url), quiet_period=0.02)


async def test_conformance_through_open_broker(url: str) -> None:
    await check_broker(lambda: open_broker(url + "?max_queue=5000"), quiet_period=0.02)


def test_is_a_broker() -> None:
    broker = MemoryBroker()
    assert isinstance(broker, Broker)
    assert "memory://" in repr(broker)


async def test_hubs_are_isolated_by_name(url: str) -> None:
    a, b = MemoryBroker(url + "-a"), MemoryBroker(url + "-b")
    a2 = MemoryBroker(url + "-a")
    sub_a = await a.subscribe(["#"])
    sub_b = await b.subscribe(["#"])
    await a2.publish([msg("task.multi", b"[1]")])
    await b.publish([msg("task.multi", b"[2]")])
    assert await take(sub_a, 1) == [b"[1]"]
    assert await take(sub_b, 1) == [b"[2]"]
    with anyio.move_on_after(0.02):
        await sub_a.__anext__()
        pytest.fail("a message crossed hubs")
    assert a.hub is a2.hub
    assert a.hub is not b.hub
    assert a.hub is memory_hub(url + "-a")
    for broker in (a, a2, b):
        await broker.aclose()


async def test_max_queue_backpressure(url: str) -> None:
    broker = MemoryBroker(url, max_queue=2)
    sub = await broker.subscribe(["#"])
    hub = memory_hub(url)
    done = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def publish() -> None:
            for i in range(6):
                await broker.publish([msg("task.multi", f"[{i}]".encode())])
            done.set()

        tg.start_soon(publish)
        await wait_until(lambda: hub.published == 3)
        await wait_all_tasks_blocked()  # the publisher can go no further by itself
        # two queued, the third waits: the publisher is held back
        assert hub.published == 3
        assert not done.is_set()
        got = await take(sub, 6)
        with anyio.fail_after(5):
            await done.wait()
    assert got == [f"[{i}]".encode() for i in range(6)]
    await broker.aclose()


async def test_closing_a_full_subscription_releases_the_publisher(url: str) -> None:
    broker = MemoryBroker(url, max_queue=1)
    sub = await broker.subscribe(["#"])
    hub = memory_hub(url)
    done = anyio.Event()

    async def publish() -> None:
        await broker.publish([msg("a.b", b"1"), msg("a.b", b"2"), msg("a.b", b"3")])
        done.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(publish)
            await wait_until(lambda: hub.published == 2)
            await wait_all_tasks_blocked()
            assert not done.is_set()  # "1" queued, "2" waits for room
            await sub.aclose()
            await done.wait()  # released: the rest goes nowhere
    assert hub.published == 3
    await broker.aclose()


async def test_unavailable_hub_fails_publishes(url: str) -> None:
    broker = MemoryBroker(url)
    sub = await broker.subscribe(["#"])
    hub = memory_hub(url)
    hub.available = False
    with pytest.raises(BrokerConnectionError, match="unavailable"):
        await broker.publish([msg("task.multi", b"[1]")])
    hub.available = True
    await broker.publish([msg("task.multi", b"[2]")])
    assert await take(sub, 1) == [b"[2]"]
    await broker.aclose()


async def test_closed_broker(url: str) -> None:
    broker = MemoryBroker(url)
    with pytest.raises(ClosedError):
        _ = broker.hub  # not connected yet
    sub = await broker.subscribe(["#"])  # connects implicitly
    await broker.aclose()
    await broker.aclose()
    with anyio.fail_after(5):
        assert [m async for m in sub] == []
    for call in (broker.connect(), broker.publish([]), broker.subscribe(["#"])):
        with pytest.raises(ClosedError):
            await call
    assert memory_hub(url)._subscriptions == []


async def test_content_type_passes_through(url: str) -> None:
    broker = MemoryBroker(url)
    sub = await broker.subscribe(["#"])
    await broker.publish([OutgoingMessage("x.y", b"{}", content_type="application/x-yaml")])
    with anyio.fail_after(5):
        got = await sub.__anext__()
    assert got.content_type == "application/x-yaml"
    await broker.aclose()


def test_from_url_options() -> None:
    assert from_url("memory://x?max_queue=3").url == "memory://x"
    with pytest.raises(ConfigurationError):
        from_url("memory://x?max_queue=no")
    with pytest.raises(ConfigurationError):
        from_url("memory://x", other=1)
    with pytest.raises(ConfigurationError):
        MemoryBroker(max_queue=0)


@pytest.mark.parametrize(
    ("binding", "routing_key", "matches"),
    [
        ("#", "task.multi", True),
        ("task.#", "task.multi", True),
        ("task.#", "task", True),
        ("task.#", "task.a.b", True),
        ("task.#", "worker.heartbeat", False),
        ("task.*", "task.multi", True),
        ("task.*", "task", False),
        ("task.*", "task.a.b", False),
        ("*.heartbeat", "worker.heartbeat", True),
        ("#.heartbeat", "worker.heartbeat", True),
        ("#.heartbeat", "heartbeat", True),
        ("worker.#.ack", "worker.elect.ack", True),
        ("worker.#.ack", "worker.ack", True),
        ("worker.heartbeat", "worker.heartbeat", True),
        ("worker.heartbeat", "worker.heartbeats", False),
        ("task.multi", "task", False),
    ],
)
def test_topic_routing(binding: str, routing_key: str, matches: bool) -> None:
    assert topic_matches(binding, routing_key) is matches
    assert compile_bindings(["nothing.here", binding])(routing_key) is matches
