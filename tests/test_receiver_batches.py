"""EventReceiver.batches() / receive_batch(): lists of events, acknowledgements, end of stream."""

from __future__ import annotations

import json

import anyio
import pytest

from aiocelev import (
    BrokerConnectionError,
    BufferFullError,
    ClosedError,
    ConfigurationError,
    Event,
    EventReceiver,
    IncomingMessage,
)
from aiocelev._exceptions import EndOfStream
from aiocelev._state import ClusterState
from aiocelev.brokers.memory import MemoryBroker

from ._helpers import broker_fixture, hub_fixture, url_fixture, wait_until  # noqa: F401
from .test_receiver import (
    _EndingBroker,
    _GivingUpBroker,
    _ScriptedBroker,
    batch,
    ev,
    single,
    take,
)


async def next_batch(receiver: EventReceiver, max_size: int | None = None) -> list[Event]:
    with anyio.fail_after(5):
        return await receiver.receive_batch(max_size)


def uuids(events: list[Event]) -> list[str]:
    return [e["uuid"] for e in events]


async def test_batches_hold_every_event_in_order(broker: MemoryBroker) -> None:
    async with EventReceiver(broker) as receiver:
        await broker.publish([batch([ev(uuid=str(i)) for i in range(5)]), single(ev(uuid="5"))])
        await wait_until(lambda: receiver.statistics().events == 6)
        got: list[Event] = []
        with anyio.fail_after(5):
            async for chunk in receiver.batches():
                assert chunk  # never an empty list
                got.extend(chunk)
                if len(got) == 6:
                    break
        assert uuids(got) == [str(i) for i in range(6)]
        assert all(e["local_received"] is not None for e in got)
        stats = receiver.statistics()
        assert stats.delivered == 6 and stats.buffered == 0


async def test_max_size_bounds_each_list(broker: MemoryBroker) -> None:
    async with EventReceiver(broker) as receiver:
        await broker.publish([batch([ev(uuid=str(i)) for i in range(5)])])
        await wait_until(lambda: receiver.statistics().events == 5)
        sizes = [len(await next_batch(receiver, 2)) for _ in range(3)]
        assert sizes == [2, 2, 1]
    with pytest.raises(ConfigurationError):
        receiver.batches(0)


async def test_batches_and_single_events_mix(broker: MemoryBroker) -> None:
    async with EventReceiver(broker) as receiver:
        await broker.publish([batch([ev(uuid=str(i)) for i in range(4)])])
        first = await take(receiver, 1)
        rest = await next_batch(receiver)
        assert uuids(first + rest) == ["0", "1", "2", "3"]


async def test_acknowledged_when_the_next_list_is_asked_for() -> None:
    acked: list[str] = []

    def incoming(name: str, body: bytes) -> IncomingMessage:
        return IncomingMessage("task.multi", body, ack=lambda: acked.append(name))

    broker = _ScriptedBroker(
        [
            incoming("a", json.dumps([ev(uuid="1"), ev(uuid="2")]).encode()),
            incoming("bad", b"garbage"),
            incoming("b", json.dumps(ev(uuid="3")).encode()),
        ]
    )
    async with EventReceiver(broker) as receiver:
        await wait_until(lambda: receiver.statistics().messages == 3)
        got = await next_batch(receiver)
        assert uuids(got) == ["1", "2", "3"]
        # every event was handed over, but the caller may still be working on them
        assert acked == []
        with anyio.move_on_after(0.05):
            await receiver.receive_batch()
        assert acked == ["a", "bad", "b"]


async def test_acknowledged_in_order_behind_events_still_waiting() -> None:
    acked: list[str] = []

    def incoming(name: str, body: bytes) -> IncomingMessage:
        return IncomingMessage("task.multi", body, ack=lambda: acked.append(name))

    broker = _ScriptedBroker(
        [
            incoming("a", json.dumps([ev(uuid="1"), ev(uuid="2")]).encode()),
            incoming("bad", b"garbage"),
            incoming("empty", b"[]"),
        ]
    )
    async with EventReceiver(broker) as receiver:
        await wait_until(lambda: receiver.statistics().messages == 3)
        # "bad" and "empty" have no events, but "a" still has events waiting:
        # acknowledging them first would acknowledge "a" too on RabbitMQ.
        assert acked == []
        assert uuids(await next_batch(receiver, 1)) == ["1"]
        assert acked == []
        assert uuids(await next_batch(receiver, 1)) == ["2"]
        assert acked == []
        with anyio.move_on_after(0.05):
            await receiver.receive_batch()
        assert acked == ["a", "bad", "empty"]


async def test_end_of_stream_and_errors() -> None:
    ending = _EndingBroker([IncomingMessage("task.started", json.dumps(ev(uuid="1")).encode())])
    async with EventReceiver(ending) as receiver:
        with anyio.fail_after(5):
            assert [uuids(b) async for b in receiver.batches()] == [["1"]]
            with pytest.raises(EndOfStream, match="ended the subscription"):
                await receiver.receive_batch()
    giving_up = _GivingUpBroker(
        [IncomingMessage("task.multi", json.dumps([ev(uuid="1"), ev(uuid="2")]).encode())]
    )
    async with EventReceiver(giving_up) as receiver:
        await wait_until(lambda: receiver.statistics().events == 2)
        assert uuids(await next_batch(receiver)) == ["1", "2"]
        with anyio.fail_after(5), pytest.raises(BrokerConnectionError, match="gave up"):
            await receiver.receive_batch()
        with pytest.raises(BrokerConnectionError):
            await receiver.receive_batch()  # and stays failed, as receive() does
    never_opened = EventReceiver(ending)
    with pytest.raises(ClosedError):
        await never_opened.receive_batch()


async def test_error_policy_in_batches(broker: MemoryBroker) -> None:
    async with EventReceiver(broker, buffer_size=2, overflow="error") as receiver:
        await broker.publish([batch([ev(uuid=str(i)) for i in range(4)])])
        assert uuids(await next_batch(receiver)) == ["0", "1"]
        with pytest.raises(BufferFullError), anyio.fail_after(5):
            await receiver.receive_batch()


async def test_pause_resumes_when_a_list_is_taken(broker: MemoryBroker) -> None:
    async with EventReceiver(broker, buffer_size=3) as receiver:
        await broker.publish([batch([ev(uuid=str(i)) for i in range(10)])])
        got: list[Event] = []
        with anyio.fail_after(5):
            while len(got) < 10:
                chunk = await receiver.receive_batch()
                assert len(chunk) <= 3
                got.extend(chunk)
        assert uuids(got) == [str(i) for i in range(10)]
        assert receiver.statistics().dropped == 0


async def test_apply_many_of_batches_equals_apply_of_events(broker: MemoryBroker) -> None:
    stream = [
        ev("task-received", uuid="t1", name="add", clock=3),
        ev("task-started", uuid="t1", clock=4),
        ev("worker-heartbeat", clock=5, freq=2.0, active=1, processed=0),
        ev("task-succeeded", uuid="t1", result="3", runtime=0.5, clock=6),
        ev("task-failed", uuid="t2", exception="boom", clock=7),
    ]
    one, many = ClusterState(), ClusterState()
    async with EventReceiver(broker) as receiver:
        await broker.publish([batch(stream)])
        await wait_until(lambda: receiver.statistics().events == len(stream))
        events = await next_batch(receiver)
    for event in events:
        one.apply(event)
    many.apply_many(events)
    for uuid in ("t1", "t2"):
        a, b = one.task(uuid), many.task(uuid)
        assert a is not None and b is not None
        assert (a.state, a.name, a.result, a.worker, a.clock) == (
            b.state,
            b.name,
            b.result,
            b.worker,
            b.clock,
        )
    assert one.event_count == many.event_count == len(stream)
