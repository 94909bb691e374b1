"""EventDispatcher: stamping, batching, ordering, offline buffering, overflow, lifecycle."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import anyio
import pytest

from aiocelev import (
    BrokerConnectionError,
    BufferFullError,
    ClosedError,
    ConfigurationError,
    Event,
    EventDispatcher,
    IncomingMessage,
    LamportClock,
    Overflow,
)
from aiocelev._clock import utcoffset
from aiocelev._dispatcher import anon_nodename
from aiocelev.brokers import Subscription
from aiocelev.brokers.memory import MemoryBroker, MemoryHub, memory_hub

from ._helpers import broker_fixture, hub_fixture, url_fixture, wait_until  # noqa: F401


async def take(sub: Subscription, count: int, timeout: float = 5.0) -> list[IncomingMessage]:
    with anyio.fail_after(timeout):
        return [await sub.__anext__() for _ in range(count)]


def expand(messages: list[IncomingMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        body = json.loads(m.body)
        out.extend(body if isinstance(body, list) else [body])
    return out


async def take_events(sub: Subscription, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    with anyio.fail_after(timeout):
        while len(events) < count:
            events.extend(expand([await sub.__anext__()]))
    return events


# -- stamping ------------------------------------------------------------------


async def test_stamps_fields_in_celery_order(broker: MemoryBroker) -> None:
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker, hostname="celery@w1", batch_groups=()) as d:
        await d.send("task-succeeded", uuid="u1", result="4", runtime=0.5)
        await d.send("worker-heartbeat", freq=2.0, active=0, processed=1)
    first, second = await take(sub, 2)
    assert first.routing_key == "task.succeeded"
    data = json.loads(first.body)
    assert list(data) == [
        "hostname",
        "utcoffset",
        "pid",
        "clock",
        "uuid",
        "result",
        "runtime",
        "timestamp",
        "type",
    ]
    assert data["hostname"] == "celery@w1"
    assert data["pid"] == os.getpid()
    assert data["utcoffset"] == utcoffset()
    assert data["clock"] == 1
    assert data["type"] == "task-succeeded"
    assert isinstance(data["timestamp"], float)
    assert (data["uuid"], data["result"], data["runtime"]) == ("u1", "4", 0.5)
    assert dict(first.headers) == {"hostname": "celery@w1"}
    assert first.content_type == "application/json"
    assert first.content_encoding == "utf-8"
    # the body is exactly what Celery (kombu's JSON) would produce for that dict
    assert first.body == json.dumps(data).encode()
    hb = json.loads(second.body)
    assert second.routing_key == "worker.heartbeat"
    assert hb["clock"] == 2
    assert list(hb)[4:7] == ["freq", "active", "processed"]


async def test_default_hostname_and_caller_timestamp(broker: MemoryBroker) -> None:
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker, batch_groups=()) as d:
        assert d.hostname == anon_nodename()
        assert d.hostname.startswith(f"gen{os.getpid()}@")
        await d.send("task-started", uuid="u", timestamp=1234.5)
    (msg,) = await take(sub, 1)
    data = json.loads(msg.body)
    assert data["timestamp"] == 1234.5
    assert list(data)[-2:] == ["timestamp", "type"]
    assert data["hostname"] == anon_nodename()


async def test_shared_clock_is_forwarded(broker: MemoryBroker) -> None:
    clock = LamportClock(100)
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker, clock=clock, batch_groups=()) as d:
        for _ in range(3):
            await d.send("worker-heartbeat")
    assert [e["clock"] for e in expand(await take(sub, 3))] == [101, 102, 103]
    assert clock.value == 103


async def test_non_json_field_raises_type_error_from_send(broker: MemoryBroker) -> None:
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker) as d:
        with pytest.raises(TypeError):
            await d.send("task-started", uuid=object())
        await d.send("task-started", uuid="ok")
        await d.flush()
        assert d.statistics().accepted == 1
    assert [e["uuid"] for e in expand(await take(sub, 1))] == ["ok"]


async def test_send_event_replays_unchanged(broker: MemoryBroker) -> None:
    original = {
        "hostname": "celery@other",
        "utcoffset": -1,
        "pid": 7,
        "clock": 55,
        "uuid": "u",
        "timestamp": 99.5,
        "type": "task-started",
        "extra": [1, 2],
    }
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker, hostname="me@here") as d:
        await d.send_event(Event.from_dict(original))
        await d.send_event(original)
        with pytest.raises(ConfigurationError):
            await d.send_event({"hostname": "x"})
    assert d.clock.value == 57  # adjusted to the replayed clock twice
    assert expand(await take(sub, 1)) == [original, original]


# -- groups, enable / disable -------------------------------------------------


async def test_groups_filter(broker: MemoryBroker, hub: MemoryHub) -> None:
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker, groups=["worker"]) as d:
        await d.send("task-started", uuid="u")
        await d.send("worker-heartbeat")
        await d.flush()
        stats = d.statistics()
    assert stats.filtered == 1
    assert stats.accepted == 1
    assert stats.sent == 1
    (msg,) = await take(sub, 1)
    assert msg.routing_key == "worker.heartbeat"
    assert hub.published == 1


async def test_enable_disable(broker: MemoryBroker) -> None:
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker, enabled=False, batch_groups=()) as d:
        assert not d.enabled
        await d.send("task-started", uuid="1")
        d.enable()
        assert d.enabled
        await d.send("task-started", uuid="2")
        d.disable()
        await d.send("task-started", uuid="3")
        await d.send_event({"type": "task-started", "hostname": "h", "timestamp": 1.0, "uuid": "4"})
        d.enable()
        await d.send("task-started", uuid="5")
        assert d.statistics().filtered == 3
    assert [e["uuid"] for e in expand(await take(sub, 2))] == ["2", "5"]


# -- batching and ordering ------------------------------------------------------


async def test_task_events_are_batched_on_task_multi(broker: MemoryBroker) -> None:
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker, max_batch=4) as d:
        for i in range(10):
            await d.send("task-started", uuid=str(i))
        await d.flush()
        stats = d.statistics()
    messages = await take(sub, stats.messages)
    assert stats.sent == 10
    assert stats.batches == stats.messages
    for m in messages:
        assert m.routing_key == "task.multi"
        body = json.loads(m.body)
        assert isinstance(body, list)
        assert 1 <= len(body) <= 4
    assert [e["uuid"] for e in expand(messages)] == [str(i) for i in range(10)]
    # the batch body is the Celery JSON array of the single bodies
    first = messages[0].body
    assert first.startswith(b'[{"hostname": ') and first.endswith(b"}]")


async def test_worker_events_never_batched(broker: MemoryBroker) -> None:
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker) as d:
        for i in range(5):
            await d.send("worker-heartbeat", processed=i)
        await d.flush()
        stats = d.statistics()
    assert stats.messages == 5
    assert stats.batches == 0
    messages = await take(sub, 5)
    assert {m.routing_key for m in messages} == {"worker.heartbeat"}
    assert all(isinstance(json.loads(m.body), dict) for m in messages)


async def test_no_batch_groups_sends_singles(broker: MemoryBroker) -> None:
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker, batch_groups=()) as d:
        for i in range(5):
            await d.send("task-succeeded", uuid=str(i))
    messages = await take(sub, 5)
    assert {m.routing_key for m in messages} == {"task.succeeded"}
    assert [json.loads(m.body)["uuid"] for m in messages] == [str(i) for i in range(5)]


async def test_ordering_across_mixed_groups(broker: MemoryBroker) -> None:
    sub = await broker.subscribe(["#"])
    sent: list[str] = []
    async with EventDispatcher(broker, max_batch=3) as d:
        for i in range(60):
            kind = ("task-started", "worker-heartbeat", "task-succeeded", "custom-thing")[i % 7 % 4]
            await d.send(kind, uuid=str(i))
            sent.append(str(i))
            if i % 11 == 0:
                await anyio.sleep(0)  # let the publisher interleave
        await d.flush()
        stats = d.statistics()
    messages = await take(sub, stats.messages)
    assert [e["uuid"] for e in expand(messages)] == sent
    for m in messages:
        body = json.loads(m.body)
        if m.routing_key == "task.multi":
            assert isinstance(body, list) and len(body) <= 3
        else:
            assert isinstance(body, dict)
            assert m.routing_key == body["type"].replace("-", ".")
            assert not body["type"].startswith("task-")


async def test_flush_waits_for_the_broker(broker: MemoryBroker, hub: MemoryHub) -> None:
    async with EventDispatcher(broker, max_batch=10) as d:
        for i in range(25):
            await d.send("task-started", uuid=str(i))
        await d.flush()
        stats = d.statistics()
        assert stats.sent == 25
        assert stats.buffered == 0
        assert hub.published == stats.messages
        await d.flush()  # nothing pending: returns at once


async def test_leaving_the_context_flushes(broker: MemoryBroker) -> None:
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker, max_batch=7) as d:
        for i in range(1000):
            await d.send("task-started", uuid=str(i))
    stats = d.statistics()
    assert stats.sent == 1000
    assert stats.dropped == 0
    assert [e["uuid"] for e in await take_events(sub, 1000)] == [str(i) for i in range(1000)]


# -- offline buffering and overflow ----------------------------------------------


async def test_offline_buffering_loses_nothing(broker: MemoryBroker, hub: MemoryHub) -> None:
    sub = await broker.subscribe(["#"])
    hub.available = False
    async with EventDispatcher(broker, max_batch=3) as d:
        for i in range(10):
            await d.send("task-started", uuid=str(i))
            await d.send("worker-heartbeat", uuid=f"w{i}")
        await wait_until(lambda: d.statistics().publish_errors >= 1)
        stats = d.statistics()
        assert stats.buffered == 20
        assert stats.sent == 0
        await d.send("task-started", uuid="late")
        assert d.statistics().buffered == 21
        hub.available = True
        with anyio.fail_after(10):
            await d.flush()
        stats = d.statistics()
        assert stats.sent == 21
        assert stats.buffered == 0
        assert stats.dropped == 0
    expected = [x for i in range(10) for x in (str(i), f"w{i}")] + ["late"]
    assert [e["uuid"] for e in await take_events(sub, 21)] == expected


async def _fill_while_down(d: EventDispatcher, hub: MemoryHub, count: int) -> None:
    """Make the publisher fail once (so it is backing off), then send *count* events."""
    hub.available = False
    await d.send("task-started", uuid="0")
    await wait_until(lambda: d.statistics().publish_errors >= 1)
    for i in range(1, count):
        await d.send("task-started", uuid=str(i))


async def _recover(d: EventDispatcher, hub: MemoryHub, sub: Subscription) -> list[str]:
    hub.available = True
    with anyio.fail_after(10):
        await d.flush()
    sent = d.statistics().sent
    return [e["uuid"] for e in await take_events(sub, sent)]


@pytest.mark.parametrize("policy", [Overflow.DROP_OLDEST, "drop_oldest", Overflow.BLOCK])
async def test_overflow_drop_oldest(broker: MemoryBroker, hub: MemoryHub, policy: Any) -> None:
    # ``block`` does not wait while the broker is away: it drops the oldest at once.
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker, buffer_size=3, overflow=policy, block_timeout=None) as d:
        with anyio.fail_after(5):
            await _fill_while_down(d, hub, 6)
        assert d.statistics().dropped == 3
        assert d.statistics().buffered == 3
        assert await _recover(d, hub, sub) == ["3", "4", "5"]


async def test_overflow_drop_newest(broker: MemoryBroker, hub: MemoryHub) -> None:
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker, buffer_size=3, overflow="drop_newest") as d:
        await _fill_while_down(d, hub, 6)
        stats = d.statistics()
        assert (stats.dropped, stats.buffered, stats.accepted) == (3, 3, 3)
        assert await _recover(d, hub, sub) == ["0", "1", "2"]


async def test_overflow_error(broker: MemoryBroker, hub: MemoryHub) -> None:
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker, buffer_size=3, overflow=Overflow.ERROR) as d:
        await _fill_while_down(d, hub, 3)
        with pytest.raises(BufferFullError):
            await d.send("task-started", uuid="3")
        assert d.statistics().dropped == 0
        assert d.statistics().accepted == 3
        assert await _recover(d, hub, sub) == ["0", "1", "2"]


async def _stall_publisher(d: EventDispatcher) -> None:
    """With a max_queue=1 subscription nobody reads, the second publish blocks."""
    hub = memory_hub(d.broker.url)
    await d.send("task-started", uuid="0")
    await wait_until(lambda: d.statistics().sent == 1)
    await d.send("task-started", uuid="1")
    await wait_until(lambda: hub.published == 2)
    assert d.statistics().buffered == 1  # "1" is in flight, stuck on backpressure


async def test_block_waits_for_room_then_loses_nothing(url: str) -> None:
    broker = MemoryBroker(url, max_queue=1)
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(
        broker, buffer_size=2, batch_groups=(), block_timeout=None, close_timeout=5
    ) as d:
        await _stall_publisher(d)
        await d.send("task-started", uuid="2")  # buffer now full
        done = anyio.Event()

        async def blocked_send() -> None:
            await d.send("task-started", uuid="3")
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(blocked_send)
            for _ in range(20):
                await anyio.sleep(0)
            assert not done.is_set()  # the buffer is full and the broker is slow: it waits
            got = [json.loads(m.body)["uuid"] for m in await take(sub, 4)]
        assert done.is_set()
        assert got == ["0", "1", "2", "3"]
        assert d.statistics().dropped == 0
    await broker.aclose()


async def test_block_timeout_drops_oldest(url: str) -> None:
    broker = MemoryBroker(url, max_queue=1)
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(
        broker, buffer_size=2, batch_groups=(), block_timeout=0.05, close_timeout=5
    ) as d:
        await _stall_publisher(d)
        await d.send("task-started", uuid="2")
        with anyio.fail_after(5):
            await d.send("task-started", uuid="3")  # waits block_timeout, then drops "2"
        assert d.statistics().dropped == 1
        got = [json.loads(m.body)["uuid"] for m in await take(sub, 3)]
    assert got == ["0", "1", "3"]
    await broker.aclose()


async def test_close_timeout_with_broker_down(broker: MemoryBroker, hub: MemoryHub) -> None:
    hub.available = False
    with anyio.fail_after(5):
        async with EventDispatcher(broker, close_timeout=0.1) as d:
            for i in range(5):
                await d.send("task-started", uuid=str(i))
    stats = d.statistics()
    assert stats.dropped == 5
    assert stats.buffered == 0
    assert stats.sent == 0


async def test_flush_blocked_by_broker_down_ends_at_close(
    broker: MemoryBroker, hub: MemoryHub
) -> None:
    hub.available = False
    async with EventDispatcher(broker, close_timeout=0.05) as d:
        await d.send("task-started", uuid="0")
        with anyio.move_on_after(0.05):
            await d.flush()
        assert d.statistics().buffered == 1


# -- cancellation and lifecycle ---------------------------------------------------


async def test_cancelling_a_blocked_send_leaves_nothing_running(url: str) -> None:
    before = asyncio.all_tasks()
    broker = MemoryBroker(url, max_queue=1)
    sub = await broker.subscribe(["#"])
    d = EventDispatcher(
        broker, buffer_size=2, batch_groups=(), block_timeout=None, close_timeout=0.1
    )
    async with d:
        await _stall_publisher(d)
        await d.send("task-started", uuid="2")
        async with anyio.create_task_group() as tg:
            tg.start_soon(d.send, "task-started")
            for _ in range(10):
                await anyio.sleep(0)
            tg.cancel_scope.cancel()
        assert d.statistics().accepted == 3
    assert d.statistics().dropped >= 1  # "1"/"2" were never delivered: close gave up
    await sub.aclose()
    await broker.aclose()
    await anyio.sleep(0)
    assert asyncio.all_tasks() == before
    with pytest.raises(ClosedError):
        await d.send("task-started")


async def test_cancelling_a_send_blocked_when_broker_went_down(
    broker: MemoryBroker, hub: MemoryHub
) -> None:
    before = asyncio.all_tasks()
    d = EventDispatcher(broker, buffer_size=1, block_timeout=None, close_timeout=0.1)
    async with d:
        hub.available = False
        await d.send("task-started", uuid="0")  # fills the buffer before the publisher ran
        async with anyio.create_task_group() as tg:
            tg.start_soon(d.send, "task-started")
            await wait_until(lambda: d.statistics().publish_errors >= 1)
            tg.cancel_scope.cancel()
    await anyio.sleep(0)
    assert asyncio.all_tasks() == before


async def test_send_blocked_before_broker_went_down_stops_waiting(
    broker: MemoryBroker, hub: MemoryHub
) -> None:
    # "block" never waits while the broker is away, even if it started waiting before.
    async with EventDispatcher(broker, buffer_size=1, block_timeout=None, close_timeout=0.1) as d:
        hub.available = False
        await d.send("task-started", uuid="0")  # fills the buffer before the publisher ran
        with anyio.fail_after(5):
            await d.send("task-started", uuid="1")
        assert d.statistics().dropped == 1


async def test_lifecycle_errors(broker: MemoryBroker) -> None:
    d = EventDispatcher(broker)
    with pytest.raises(ClosedError):
        await d.send("task-started")
    with pytest.raises(ClosedError):
        await d.flush()
    async with d:
        with pytest.raises(ClosedError):
            async with d:
                pass
    with pytest.raises(ClosedError):
        await d.send("task-started")
    with pytest.raises(ClosedError):
        await d.send_event({"type": "task-started", "hostname": "h", "timestamp": 1.0})
    with pytest.raises(ClosedError):
        async with d:
            pass
    assert "closed" in repr(d)


async def test_owns_broker_opened_from_url(url: str) -> None:
    async with EventDispatcher(url) as d:
        assert isinstance(d.broker, MemoryBroker)
        await d.send("worker-heartbeat")
    with pytest.raises(ClosedError):
        await d.broker.publish([])


async def test_borrowed_broker_is_not_closed(broker: MemoryBroker) -> None:
    async with EventDispatcher(broker) as d:
        await d.send("worker-heartbeat")
    await broker.publish([])  # still usable


@pytest.mark.parametrize(
    "kwargs",
    [{"max_batch": 0}, {"buffer_size": 0}, {"overflow": "bogus"}, {"overflow": "pause"}],
)
def test_configuration_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        EventDispatcher(MemoryBroker(), **kwargs)


@pytest.mark.parametrize("policy", ["pause", Overflow.PAUSE, "sideways"])
def test_overflow_policies_of_the_dispatcher_only(policy: Any) -> None:
    valid = "valid policies: 'block', 'drop_oldest', 'drop_newest', 'error'"
    with pytest.raises(ConfigurationError, match=valid) as info:
        EventDispatcher(MemoryBroker(), overflow=policy)
    assert isinstance(info.value, ValueError)  # ConfigurationError is also a ValueError


@pytest.mark.parametrize("policy", ["block", "drop_oldest", "drop_newest", "error"])
def test_every_dispatcher_policy_is_accepted(policy: str) -> None:
    assert repr(EventDispatcher(MemoryBroker(), overflow=policy)).endswith("unopened>")


async def test_aclose_flushes_and_closes(broker: MemoryBroker) -> None:
    sub = await broker.subscribe(["#"])
    d = EventDispatcher(broker, batch_groups=())
    await d.__aenter__()
    await d.send("task-started", uuid="1")
    await d.aclose()
    assert "closed" in repr(d)
    assert d.statistics().sent == 1
    assert [e["uuid"] for e in await take_events(sub, 1)] == ["1"]
    with pytest.raises(ClosedError):
        await d.send("task-started", uuid="2")
    await d.aclose()  # idempotent
    await d.__aexit__(None, None, None)  # and so is leaving afterwards
    assert d.statistics().sent == 1
    with pytest.raises(ClosedError):
        await d.__aenter__()


async def test_aclose_drops_what_it_cannot_flush(broker: MemoryBroker, hub: MemoryHub) -> None:
    d = EventDispatcher(broker, close_timeout=0.05)
    await d.__aenter__()
    hub.available = False
    await d.send("task-started", uuid="1")
    await wait_until(lambda: d.statistics().publish_errors >= 1)
    await d.aclose()  # not under a cancel scope entered after opening: anyio forbids it
    assert (d.statistics().dropped, d.statistics().buffered) == (1, 0)


async def test_aclose_inside_the_context(url: str) -> None:
    async with EventDispatcher(url) as d:
        broker = d.broker
        await d.aclose()
        with pytest.raises(ClosedError):
            await d.flush()
    with pytest.raises(ClosedError):
        await broker.publish([])  # the owned broker was closed


async def test_aclose_of_a_dispatcher_never_opened(broker: MemoryBroker) -> None:
    d = EventDispatcher(broker)
    await d.aclose()
    assert "closed" in repr(d)
    with pytest.raises(ClosedError):
        await d.__aenter__()


async def test_send_event_ignores_absurd_clocks(broker: MemoryBroker) -> None:
    sub = await broker.subscribe(["#"])
    replayed = {"type": "task-started", "hostname": "h", "timestamp": 1.0, "clock": 10**30}
    async with EventDispatcher(broker, clock=LamportClock(5)) as d:
        await d.send_event(replayed)
        await d.send_event({**replayed, "clock": None})
        await d.send_event({**replayed, "clock": True})
        assert d.clock.value == 5  # not dragged to 10**30
        await d.send("task-started", uuid="next")
    events = expand(await take(sub, 1))
    assert events[0]["clock"] == 10**30  # the replayed event itself is sent unchanged
    assert events[-1]["clock"] == 6


class _FlakyBroker:
    """A memory broker that cannot be reached until ``down`` is cleared."""

    def __init__(self, url: str) -> None:
        self.inner = MemoryBroker(url)
        self.down = True
        self.connects = 0

    @property
    def url(self) -> str:
        return self.inner.url

    async def connect(self) -> None:
        self.connects += 1
        if self.down:
            raise BrokerConnectionError("connection refused")
        await self.inner.connect()

    async def publish(self, messages: Any) -> None:
        await self.connect()
        await self.inner.publish(messages)

    async def subscribe(self, binding_keys: Any) -> Any:
        await self.connect()
        return await self.inner.subscribe(binding_keys)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_broker_unreachable_at_start_buffers(url: str) -> None:
    flaky = _FlakyBroker(url)
    observer = MemoryBroker(url)
    sub = await observer.subscribe(["#"])
    async with EventDispatcher(flaky, hostname="w@h") as d:  # does not raise
        for i in range(5):
            await d.send("task-started", uuid=str(i))
        await wait_until(lambda: d.statistics().publish_errors >= 1)
        assert d.statistics().buffered == 5
        flaky.down = False
        with anyio.fail_after(10):
            await d.flush()
    assert [e["uuid"] for e in await take_events(sub, 5)] == [str(i) for i in range(5)]
    await observer.aclose()
    await flaky.aclose()


class _GateBroker:
    """The first publish waits for ``gate`` and then fails; later ones succeed."""

    def __init__(self) -> None:
        self.gate = anyio.Event()
        self.calls = 0
        self.published: list[str] = []

    @property
    def url(self) -> str:
        return "gate://"

    async def connect(self) -> None:
        pass

    async def publish(self, messages: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            await self.gate.wait()
            raise BrokerConnectionError("connection lost mid-publish")
        self.published.extend(json.loads(m.body)["uuid"] for m in messages)

    async def subscribe(self, binding_keys: Any) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


async def test_flush_completes_after_a_drop_during_a_failed_publish() -> None:
    # A drop while a publish is in flight, then that publish fails and is retried:
    # flush must still see every event settled (sent or dropped) and return.
    broker = _GateBroker()
    async with EventDispatcher(
        broker, buffer_size=3, overflow="drop_oldest", batch_groups=(), close_timeout=5
    ) as d:
        await d.send("task-started", uuid="1")
        await wait_until(lambda: broker.calls == 1)  # "1" is in flight
        for uuid in "234":
            await d.send("task-started", uuid=uuid)  # "4" drops "2"
        broker.gate.set()
        with anyio.fail_after(5):
            await d.flush()
        stats = d.statistics()
    assert broker.published == ["1", "3", "4"]
    assert (stats.sent, stats.dropped, stats.buffered) == (3, 1, 0)


async def test_sender_blocked_at_close_gets_closed_error(url: str) -> None:
    broker = MemoryBroker(url, max_queue=1)
    sub = await broker.subscribe(["#"])
    outcome: list[BaseException] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            d = EventDispatcher(
                broker, buffer_size=2, batch_groups=(), block_timeout=None, close_timeout=0.05
            )
            await d.__aenter__()
            await _stall_publisher(d)
            await d.send("task-started", uuid="2")

            async def blocked_send() -> None:
                try:
                    await d.send("task-started", uuid="3")
                except ClosedError as exc:
                    outcome.append(exc)

            tg.start_soon(blocked_send)
            for _ in range(10):
                await anyio.sleep(0)
            await d.__aexit__(None, None, None)
    assert len(outcome) == 1
    assert d.statistics().dropped == 2  # "1" (in flight) and "2" never reached the broker
    await sub.aclose()
    await broker.aclose()
