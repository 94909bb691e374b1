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


# -- batches(dicts=True): wire dicts instead of typed events --------------------


async def test_dict_batches_hold_the_fields_typed_events_would(broker: MemoryBroker) -> None:
    stream = [ev(uuid=str(i), clock=10 + i) for i in range(4)]
    async with EventReceiver(broker) as typed, EventReceiver(broker) as wire:
        await broker.publish([batch(stream)])
        await wait_until(lambda: typed.statistics().events == wire.statistics().events == 4)
        events = await next_batch(typed)
        with anyio.fail_after(5):
            dicts = await wire.receive_batch(dicts=True)
    assert all(type(d) is dict for d in dicts)
    assert [d["uuid"] for d in dicts] == ["0", "1", "2", "3"]
    for event, data in zip(events, dicts, strict=True):
        # prepared the same way: clock merged, local_received set
        assert data["local_received"] is not None
        assert {k: v for k, v in data.items() if k != "local_received"} == {
            k: v for k, v in event.items() if k != "local_received"
        }
    assert wire.statistics().delivered == 4


async def test_switching_between_dicts_and_events_loses_nothing(broker: MemoryBroker) -> None:
    async with EventReceiver(broker) as receiver:
        await broker.publish([batch([ev(uuid=str(i)) for i in range(9)])])
        await wait_until(lambda: receiver.statistics().events == 9)
        # buffered as typed events, handed over as dicts
        with anyio.fail_after(5):
            first = await receiver.receive_batch(3, dicts=True)
        assert [type(d) for d in first] == [dict] * 3
        # the rest is buffered as dicts now, and handed over as events again
        [fourth] = await take(receiver, 1)
        assert isinstance(fourth, Event)
        rest = await next_batch(receiver, 2)
        assert all(isinstance(e, Event) for e in rest)
        with anyio.fail_after(5):
            last = await receiver.receive_batch(dicts=True)
        assert [type(d) for d in last] == [dict] * 3
        got = [d["uuid"] for d in first] + [fourth["uuid"]] + uuids(rest)
        assert got + [d["uuid"] for d in last] == [str(i) for i in range(9)]
        # later messages come in the form last asked for
        await broker.publish([single(ev(uuid="9"))])
        with anyio.fail_after(5):
            async for chunk in receiver.batches(dicts=True):
                assert [(type(d), d["uuid"]) for d in chunk] == [(dict, "9")]
                break


async def test_dict_form_reaches_events_waiting_for_room(broker: MemoryBroker) -> None:
    # pause: the events of a message that did not fit wait for room; they are
    # converted too when the caller switches form.
    async with EventReceiver(broker, buffer_size=2) as receiver:
        await broker.publish([batch([ev(uuid=str(i)) for i in range(7)])])
        got: list[object] = []
        with anyio.fail_after(5):
            got.extend(await receiver.receive_batch())
            while len(got) < 7:
                chunk = await receiver.receive_batch(dicts=True)
                assert chunk and all(type(d) is dict for d in chunk)
                got.extend(chunk)
        assert [e["uuid"] for e in got] == [str(i) for i in range(7)]  # type: ignore[index]
        assert receiver.statistics().dropped == 0


async def test_dict_batches_feed_a_state_as_events_do(broker: MemoryBroker) -> None:
    stream = [
        ev("task-received", uuid="t1", name="add", clock=3),
        ev("task-started", uuid="t1", clock=4),
        ev("task-succeeded", uuid="t1", result="3", runtime=0.5, clock=5),
    ]
    typed, wire = ClusterState(), ClusterState()
    async with EventReceiver(broker) as a, EventReceiver(broker) as b:
        await broker.publish([batch(stream)])
        await wait_until(lambda: a.statistics().events == b.statistics().events == 3)
        typed.apply_many(await next_batch(a))
        with anyio.fail_after(5):
            async for chunk in b.batches(dicts=True):
                wire.apply_many(chunk)
                if wire.event_count == 3:
                    break
    x, y = typed.task("t1"), wire.task("t1")
    assert x is not None and y is not None
    assert x.to_dict() == y.to_dict()
    assert (x.state, x.result, x.runtime) == ("SUCCESS", "3", 0.5)


async def test_delivered_counts_what_was_handed_over(broker: MemoryBroker) -> None:
    # events = delivered + buffered + dropped, whatever the way out of the buffer
    receiver = EventReceiver(broker, buffer_size=3, overflow="drop_oldest")
    async with receiver:
        await broker.publish([batch([ev(uuid=str(i)) for i in range(10)])])
        await wait_until(lambda: receiver.statistics().events == 10)
        stats = receiver.statistics()
        assert (stats.delivered, stats.buffered, stats.dropped) == (0, 3, 7)
        assert uuids(await take(receiver, 1)) == ["7"]
        assert uuids(await next_batch(receiver, 1)) == ["8"]
        with anyio.fail_after(5):
            assert [d["uuid"] for d in await receiver.receive_batch(dicts=True)] == ["9"]
        stats = receiver.statistics()
        assert (stats.delivered, stats.buffered, stats.dropped) == (3, 0, 7)
        await broker.publish([single(ev(uuid="10")), single(ev(uuid="11"))])
        await wait_until(lambda: receiver.statistics().events == 12)
        assert receiver.statistics().delivered == 3
    # closing discards what was buffered: it was not handed over
    stats = receiver.statistics()
    assert (stats.delivered, stats.buffered, stats.events) == (3, 0, 12)
