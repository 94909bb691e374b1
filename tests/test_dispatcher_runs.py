"""EventDispatcher internals seen from outside: message boundaries, drops, restamping.

Accepted events wait in runs (one per future message); these tests pin down
what that must look like on the wire: where batches start and end, which
events an overflow drops, and when the stamped fields are re-read.
"""

from __future__ import annotations

import json
import os

import anyio
import pytest

from aiocelev import EventDispatcher, IncomingMessage, _dispatcher as dispatcher_module
from aiocelev.brokers import Subscription
from aiocelev.brokers.memory import MemoryBroker, MemoryHub

from ._helpers import broker_fixture, hub_fixture, url_fixture, wait_until  # noqa: F401


async def _messages(sub: Subscription, d: EventDispatcher) -> list[IncomingMessage]:
    with anyio.fail_after(5):
        return [await sub.__anext__() for _ in range(d.statistics().messages)]


def _shape(messages: list[IncomingMessage]) -> list[tuple[str, list[str]]]:
    """(routing key, uuids) per message."""
    out = []
    for m in messages:
        body = json.loads(m.body)
        events = body if isinstance(body, list) else [body]
        out.append((m.routing_key, [e.get("uuid", "?") for e in events]))
    return out


async def test_events_sent_without_yielding_fill_batches_of_max_batch(broker: MemoryBroker) -> None:
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker, max_batch=4) as d:
        for i in range(10):
            await d.send("task-started", uuid=str(i))
        await d.flush()
    assert _shape(await _messages(sub, d)) == [
        ("task.multi", ["0", "1", "2", "3"]),
        ("task.multi", ["4", "5", "6", "7"]),
        ("task.multi", ["8", "9"]),
    ]
    assert d.statistics().batches == 3


async def test_another_event_ends_the_batch(broker: MemoryBroker) -> None:
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker, max_batch=10, batch_groups=("task", "custom")) as d:
        for uuid in "abc":
            await d.send("task-started", uuid=uuid)
        await d.send("worker-heartbeat", uuid="w")
        for uuid in "de":
            await d.send("task-succeeded", uuid=uuid)
        await d.send("custom-thing", uuid="x")
        await d.send("task-failed", uuid="f")
        await d.flush()
    assert _shape(await _messages(sub, d)) == [
        ("task.multi", ["a", "b", "c"]),
        ("worker.heartbeat", ["w"]),
        ("task.multi", ["d", "e"]),
        ("custom.multi", ["x"]),
        ("task.multi", ["f"]),
    ]


async def test_max_batch_one_sends_one_event_per_batch(broker: MemoryBroker) -> None:
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker, max_batch=1) as d:
        for i in range(3):
            await d.send("task-started", uuid=str(i))
        await d.flush()
    assert _shape(await _messages(sub, d)) == [("task.multi", [str(i)]) for i in range(3)]


async def test_a_batch_taken_by_the_publisher_is_not_appended_to(broker: MemoryBroker) -> None:
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker, max_batch=100) as d:
        await d.send("task-started", uuid="0")
        await d.send("task-started", uuid="1")
        await wait_until(lambda: d.statistics().sent == 2)
        await d.send("task-started", uuid="2")
        await d.flush()
    assert _shape(await _messages(sub, d)) == [
        ("task.multi", ["0", "1"]),
        ("task.multi", ["2"]),
    ]


async def test_reassigning_batch_groups_applies_to_the_next_event(broker: MemoryBroker) -> None:
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker) as d:
        await d.send("task-started", uuid="0")
        d.batch_groups = ()
        assert d.batch_groups == frozenset()
        await d.send("task-started", uuid="1")
        d.batch_groups = ["task"]
        await d.send("task-started", uuid="2")
        await d.send("task-started", uuid="3")
        await d.flush()
    assert _shape(await _messages(sub, d)) == [
        ("task.multi", ["0"]),
        ("task.started", ["1"]),
        ("task.multi", ["2", "3"]),
    ]


async def test_drop_oldest_takes_from_the_front_across_batches(
    broker: MemoryBroker, hub: MemoryHub
) -> None:
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(
        broker, max_batch=3, buffer_size=5, overflow="drop_oldest", close_timeout=5
    ) as d:
        hub.available = False
        await d.send("task-started", uuid="0")
        await wait_until(lambda: d.statistics().publish_errors >= 1)
        for i in range(1, 4):
            await d.send("task-started", uuid=str(i))
        await d.send("worker-heartbeat", uuid="w")
        for i in range(4, 8):  # each drops the oldest left
            await d.send("task-started", uuid=str(i))
        stats = d.statistics()
        assert (stats.accepted, stats.dropped, stats.buffered) == (9, 4, 5)
        hub.available = True
        with anyio.fail_after(10):
            await d.flush()
        stats = d.statistics()
        assert (stats.sent, stats.dropped, stats.buffered) == (5, 4, 0)
    shape = _shape(await _messages(sub, d))
    assert [u for _, uuids in shape for u in uuids] == ["w", "4", "5", "6", "7"]
    assert shape[0] == ("worker.heartbeat", ["w"])
    assert all(key == "task.multi" and len(uuids) <= 3 for key, uuids in shape[1:])


async def test_buffered_counts_waiting_and_in_flight(url: str) -> None:
    broker = MemoryBroker(url, max_queue=1)
    sub = await broker.subscribe(["#"])  # never read: the second publish blocks
    async with EventDispatcher(broker, batch_groups=(), close_timeout=0.1) as d:
        await d.send("task-started", uuid="0")
        await wait_until(lambda: d.statistics().sent == 1)
        await d.send("task-started", uuid="1")
        await wait_until(lambda: memory_published(url) == 2)  # "1" in flight
        for i in range(2, 5):
            await d.send("task-started", uuid=str(i))
        assert d.statistics().buffered == 4
    assert d.statistics().dropped == 4
    await sub.aclose()
    await broker.aclose()


def memory_published(url: str) -> int:
    from aiocelev.brokers.memory import memory_hub

    return memory_hub(url).published


# -- stamping ------------------------------------------------------------------


class _Clock:
    """Stands in for time.time()."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    clock = _Clock(1_800_000_000.0)
    monkeypatch.setattr(dispatcher_module.time, "time", clock)
    return clock


@pytest.fixture
def offsets(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The utcoffset values the dispatcher reads, one per read (the last one repeats)."""
    values = [-1.0, -2.0, -3.0, -4.0]
    reads: list[float] = []

    def fake() -> float:
        value = values[min(len(reads), len(values) - 1)]
        reads.append(value)
        return value

    monkeypatch.setattr(dispatcher_module, "utcoffset", fake)
    return reads


async def test_utcoffset_is_reread_every_minute_of_wall_time(
    broker: MemoryBroker, wall: _Clock, offsets: list[float]
) -> None:
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker, batch_groups=()) as d:
        await d.send("task-started", uuid="a")
        wall.now += 59.0
        await d.send("task-started", uuid="b")  # same minute: not re-read
        wall.now += 2.0
        await d.send("task-started", uuid="c")  # a minute later: re-read
        wall.now -= 3600.0
        await d.send("task-started", uuid="d")  # the clock went back: re-read
        await d.flush()
    events = [json.loads(m.body) for m in await _messages(sub, d)]
    assert [e["utcoffset"] for e in events] == [-1.0, -1.0, -2.0, -3.0]
    assert offsets == [-1.0, -2.0, -3.0]
    assert [e["timestamp"] for e in events] == [
        1_800_000_000.0,
        1_800_000_059.0,
        1_800_000_061.0,
        1_800_000_061.0 - 3600.0,
    ]


async def test_reassigned_hostname_and_pid_are_stamped_from_the_next_event(
    broker: MemoryBroker,
) -> None:
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker, hostname="first@h", batch_groups=()) as d:
        await d.send("task-started", uuid="a")
        d.hostname = "second@h"
        await d.send("task-started", uuid="b")
        d.pid = 4242
        await d.send("task-started", uuid="c")
        assert (d.hostname, d.pid) == ("second@h", 4242)
        await d.flush()
    events = [json.loads(m.body) for m in await _messages(sub, d)]
    assert [(e["hostname"], e["pid"]) for e in events] == [
        ("first@h", os.getpid()),
        ("second@h", os.getpid()),
        ("second@h", 4242),
    ]
    assert [list(e)[:4] for e in events] == [["hostname", "utcoffset", "pid", "clock"]] * 3
