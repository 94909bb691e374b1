"""EventReceiver: live subscription, expansion, clocks/timestamps, overflow, malformed input, cancellation."""

from __future__ import annotations

import asyncio
import json
import pickle
import time
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from aiocelev import (
    BrokerConnectionError,
    BufferFullError,
    ClosedError,
    ConfigurationError,
    DecodeError,
    Event,
    EventReceiver,
    IncomingMessage,
    OutgoingMessage,
    Overflow,
    TaskStarted,
    TaskSucceeded,
    WorkerHeartbeat,
)
from aiocelev._clock import utcoffset
from aiocelev._codec import validate_event
from aiocelev._exceptions import EndOfStream
from aiocelev.brokers.memory import MemoryBroker, MemoryHub, memory_hub

from ._helpers import broker_fixture, hub_fixture, url_fixture, wait_until  # noqa: F401


def ev(type_: str = "task-started", **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"hostname": "w@h", "utcoffset": 0, "pid": 1, "clock": 1}
    data.update(extra)
    data.setdefault("timestamp", 1000.0)
    data["type"] = type_
    return data


def single(data: dict[str, Any]) -> OutgoingMessage:
    return OutgoingMessage(data["type"].replace("-", "."), json.dumps(data).encode())


def batch(events: list[Any]) -> OutgoingMessage:
    return OutgoingMessage("task.multi", json.dumps(events).encode())


async def take(receiver: EventReceiver, count: int, timeout: float = 5.0) -> list[Event]:
    with anyio.fail_after(timeout):
        return [await receiver.receive() for _ in range(count)]


# -- basics ----------------------------------------------------------------------


async def test_live_when_enter_returns(url: str) -> None:
    publisher = MemoryBroker(url)
    async with EventReceiver(url) as receiver:
        await publisher.publish([single(ev("worker-heartbeat", freq=2.0))])
        (event,) = await take(receiver, 1)
    assert isinstance(event, WorkerHeartbeat)
    assert event.freq == 2.0
    await publisher.aclose()


async def test_batches_expanded_in_order(broker: MemoryBroker) -> None:
    async with EventReceiver(broker) as receiver:
        await broker.publish(
            [
                batch([ev(uuid="1"), ev("task-succeeded", uuid="2", result="x")]),
                single(ev("worker-heartbeat", uuid="3")),
                batch([]),
                batch([ev(uuid="4")]),
            ]
        )
        got = await take(receiver, 4)
        stats = receiver.statistics()
    assert [e["uuid"] for e in got] == ["1", "2", "3", "4"]
    assert [type(e) for e in got] == [TaskStarted, TaskSucceeded, WorkerHeartbeat, TaskStarted]
    assert stats.messages == 4
    assert stats.events == 4
    assert stats.delivered == 4
    assert stats.malformed == {}


async def test_all_fields_kept_and_local_received_set(broker: MemoryBroker) -> None:
    data = ev("task-progress", uuid="u", custom={"k": [1, None]})
    async with EventReceiver(broker) as receiver:
        before = time.time()
        await broker.publish([single(data)])
        (event,) = await take(receiver, 1)
        after = time.time()
    assert event.local_received is not None
    assert before <= event.local_received <= after
    wire = event.to_dict()
    del wire["local_received"]
    assert wire == data


async def test_timestamps_unchanged_by_default(broker: MemoryBroker) -> None:
    async with EventReceiver(broker) as receiver:
        await broker.publish([single(ev(utcoffset=-5.5, timestamp=1_000_000.0))])
        (event,) = await take(receiver, 1)
    assert event.timestamp == 1_000_000.0
    assert event.utcoffset == -5.5


async def test_localize_uses_celery_formula(broker: MemoryBroker) -> None:
    async with EventReceiver(broker, localize=True) as receiver:
        await broker.publish(
            [
                single(ev(uuid="a", utcoffset=-5.5, timestamp=1_000_000.0)),
                single(ev(uuid="b", utcoffset=3, timestamp=1_000_000.0)),
                single({"type": "task-x", "hostname": "h", "timestamp": 5.0, "uuid": "c"}),
                single(ev(uuid="d", utcoffset=None, timestamp=7.0)),
            ]
        )
        a, b, c, d = await take(receiver, 4)
    here = utcoffset()
    assert a.timestamp == 1_000_000.0 - (-5.5 - here) * 3600
    assert b.timestamp == 1_000_000.0 - (3 - here) * 3600
    assert c.timestamp == 5.0  # no utcoffset: nothing to do
    assert d.timestamp == 7.0  # a null offset does not crash the stream


async def test_routing_keys_filter(broker: MemoryBroker) -> None:
    async with EventReceiver(broker, routing_keys=["task.#"]) as receiver:
        await broker.publish(
            [
                single(ev("worker-heartbeat", uuid="w1")),
                batch([ev(uuid="t1")]),
                single(ev("worker-online", uuid="w2")),
                single(ev("task-succeeded", uuid="t2")),
            ]
        )
        got = await take(receiver, 2)
        await broker.publish([single(ev("worker-offline")), batch([ev(uuid="t3")])])
        got += await take(receiver, 1)
        assert receiver.statistics().messages == 3
    assert [e["uuid"] for e in got] == ["t1", "t2", "t3"]


async def test_routing_keys_as_a_string(broker: MemoryBroker) -> None:
    async with EventReceiver(broker, routing_keys="worker.*") as receiver:
        assert receiver.routing_keys == ("worker.*",)
        await broker.publish([batch([ev()]), single(ev("worker-heartbeat"))])
        (event,) = await take(receiver, 1)
    assert event.type == "worker-heartbeat"


# -- capture -----------------------------------------------------------------------


async def test_capture_dispatches_with_fallback_and_async_handlers(broker: MemoryBroker) -> None:
    seen: list[tuple[str, str]] = []

    async def on_succeeded(event: Event) -> None:
        await anyio.sleep(0)
        seen.append(("succeeded", event["uuid"]))

    def fallback(event: Event) -> None:
        seen.append(("*", event["uuid"]))

    async with EventReceiver(broker) as receiver:
        await broker.publish(
            [
                batch([ev(uuid="1"), ev("task-succeeded", uuid="2")]),
                single(ev("worker-heartbeat", uuid="3")),
                batch([ev("task-succeeded", uuid="4"), ev(uuid="5")]),
            ]
        )
        with anyio.fail_after(5):
            handled = await receiver.capture(
                {"task-succeeded": on_succeeded, "*": fallback}, limit=4
            )
        assert handled == 4
        (rest,) = await take(receiver, 1)
    assert seen == [("*", "1"), ("succeeded", "2"), ("*", "3"), ("succeeded", "4")]
    assert rest["uuid"] == "5"


async def test_capture_skips_events_without_handler_and_times_out(broker: MemoryBroker) -> None:
    seen: list[str] = []
    async with EventReceiver(broker) as receiver:
        await broker.publish([batch([ev(uuid="1"), ev("task-succeeded", uuid="2")])])
        await wait_until(lambda: receiver.statistics().buffered == 2)
        with anyio.fail_after(5):
            handled = await receiver.capture(
                {"task-succeeded": lambda e: seen.append(e["uuid"])}, timeout=0.05
            )
    assert handled == 1
    assert seen == ["2"]


# -- overflow ----------------------------------------------------------------------


async def test_pause_loses_nothing_and_bounds_memory(url: str) -> None:
    broker = MemoryBroker(url, max_queue=2)
    count = 200
    async with EventReceiver(broker, buffer_size=5) as receiver, anyio.create_task_group() as tg:

        async def publish() -> None:
            for i in range(count):
                await broker.publish([batch([ev(uuid=str(i)), ev(uuid=f"{i}b")])])

        tg.start_soon(publish)
        hub = memory_hub(url)
        await wait_until(lambda: receiver.statistics().buffered >= 5)
        for _ in range(50):
            await anyio.sleep(0)
        # nobody reads: the receiver stopped reading, the publisher waits
        assert receiver.statistics().buffered <= 5
        assert hub.published < count
        got = await take(receiver, 2 * count, timeout=10)
        stats = receiver.statistics()
    assert [e["uuid"] for e in got] == [x for i in range(count) for x in (str(i), f"{i}b")]
    assert stats.dropped == 0
    await broker.aclose()


@pytest.mark.parametrize(
    ("policy", "kept"), [("drop_oldest", range(15, 20)), ("drop_newest", range(5))]
)
async def test_drop_policies(broker: MemoryBroker, policy: str, kept: range) -> None:
    async with EventReceiver(broker, buffer_size=5, overflow=policy) as receiver:
        await broker.publish([batch([ev(uuid=str(i)) for i in range(10)])])
        await broker.publish([single(ev(uuid=str(i))) for i in range(10, 20)])
        await wait_until(lambda: receiver.statistics().events == 20)
        stats = receiver.statistics()
        assert stats.buffered == 5
        assert stats.dropped == 15
        got = await take(receiver, 5)
        # afterwards the stream goes on normally
        await broker.publish([single(ev(uuid="next"))])
        (nxt,) = await take(receiver, 1)
    assert [e["uuid"] for e in got] == [str(i) for i in kept]
    assert nxt["uuid"] == "next"


async def test_error_policy_ends_the_stream_with_buffer_full(broker: MemoryBroker) -> None:
    async with EventReceiver(broker, buffer_size=2, overflow="error") as receiver:
        await broker.publish([batch([ev(uuid=str(i)) for i in range(4)])])
        got = await take(receiver, 2)
        with pytest.raises(BufferFullError), anyio.fail_after(5):
            await receiver.receive()
    assert [e["uuid"] for e in got] == ["0", "1"]


# -- malformed input ------------------------------------------------------------------


class _SideEffect:
    triggered: list[str] = []

    def __reduce__(self) -> tuple[Any, ...]:
        return (_SideEffect.triggered.append, ("unpickled!",))


def _bad_messages() -> list[tuple[OutgoingMessage, str]]:
    return [
        (OutgoingMessage("task.multi", b"not json"), "json"),
        (
            OutgoingMessage(
                "task.multi",
                pickle.dumps(_SideEffect()),
                content_type="application/x-python-serialize",
                content_encoding="binary",
            ),
            "content-type",
        ),
        (OutgoingMessage("task.multi", b"- x", content_type="application/x-yaml"), "content-type"),
        (OutgoingMessage("task.multi", b"\xff\xfe"), "encoding"),
        (OutgoingMessage("task.multi", b"3"), "not-an-event"),
        (OutgoingMessage("task.multi", b'{"type": "task-x"}'), "not-an-event"),
        (OutgoingMessage("task.multi", b"[" * 2000 + b"]" * 2000), "json"),
        (OutgoingMessage("task.multi", b'["' + b"x" * 5000 + b'"]'), "too-large"),
    ]


async def test_malformed_messages_counted_and_reported(broker: MemoryBroker) -> None:
    _SideEffect.triggered.clear()
    errors: list[tuple[DecodeError, IncomingMessage]] = []
    bad = _bad_messages()
    outgoing: list[OutgoingMessage] = []
    for i, (message, _reason) in enumerate(bad):
        outgoing.append(single(ev(uuid=str(i))))
        outgoing.append(message)
    # a batch mixing valid events and non-objects: the valid ones still arrive
    outgoing.append(batch([ev(uuid="m1"), 42, "x", ev(uuid="m2"), {"type": "t"}]))
    outgoing.append(single(ev(uuid="end")))

    def on_error(error: DecodeError, message: IncomingMessage) -> None:
        errors.append((error, message))

    async with EventReceiver(broker, on_error=on_error, max_message_size=4096) as receiver:
        await broker.publish(outgoing)
        expected = [str(i) for i in range(len(bad))] + ["m1", "m2", "end"]
        got = await take(receiver, len(expected))
        stats = receiver.statistics()
    assert [e["uuid"] for e in got] == expected
    reasons: dict[str, int] = {}
    for _, reason in bad:
        reasons[reason] = reasons.get(reason, 0) + 1
    reasons["not-an-event"] += 3  # the three bad batch elements
    assert stats.malformed == reasons
    assert [e.reason for e, _ in errors] == [r for _, r in bad] + ["not-an-event"] * 3
    assert all(isinstance(e, DecodeError) for e, _ in errors)
    assert all(isinstance(m, IncomingMessage) for _, m in errors)
    assert errors[0][1].body == b"not json"
    assert _SideEffect.triggered == []


async def test_on_error_that_raises_does_not_kill_the_stream(broker: MemoryBroker) -> None:
    calls: list[str] = []

    def on_error(error: DecodeError, message: IncomingMessage) -> None:
        calls.append(error.reason)
        raise RuntimeError("handler bug")

    async with EventReceiver(broker, on_error=on_error) as receiver:
        await broker.publish(
            [
                OutgoingMessage("task.multi", b"nope"),
                single(ev(uuid="1")),
                OutgoingMessage("task.multi", b"[1]"),
                single(ev(uuid="2")),
            ]
        )
        got = await take(receiver, 2)
        assert receiver.statistics().malformed == {"json": 1, "not-an-event": 1}
    assert [e["uuid"] for e in got] == ["1", "2"]
    assert calls == ["json", "not-an-event"]


# -- lifecycle and cancellation ---------------------------------------------------------


async def test_break_out_and_leave_leaves_nothing_behind(
    broker: MemoryBroker, hub: MemoryHub
) -> None:
    before = asyncio.all_tasks()
    async with EventReceiver(broker) as receiver:
        assert len(hub._subscriptions) == 1
        await broker.publish([batch([ev(uuid=str(i)) for i in range(10)])])
        seen = []
        with anyio.fail_after(5):
            async for event in receiver:
                seen.append(event["uuid"])
                if len(seen) == 3:
                    break
    assert seen == ["0", "1", "2"]
    assert hub._subscriptions == []
    await anyio.sleep(0)
    assert asyncio.all_tasks() == before
    # iteration after close ends instead of hanging
    with anyio.fail_after(5):
        assert [e async for e in receiver] == []


async def test_cancelling_a_task_blocked_in_async_for(broker: MemoryBroker, hub: MemoryHub) -> None:
    before = asyncio.all_tasks()
    started = anyio.Event()
    async with EventReceiver(broker) as receiver:

        async def consume() -> None:
            started.set()
            async for _ in receiver:
                pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await started.wait()
            await anyio.sleep(0)
            tg.cancel_scope.cancel()
        # the receiver still works after a consumer was cancelled
        await broker.publish([single(ev(uuid="after"))])
        (event,) = await take(receiver, 1)
        assert event["uuid"] == "after"
    assert hub._subscriptions == []
    await anyio.sleep(0)
    assert asyncio.all_tasks() == before


async def test_cancelling_the_owner_while_paused(url: str) -> None:
    before = asyncio.all_tasks()
    broker = MemoryBroker(url, max_queue=1)
    with anyio.move_on_after(0.1):
        async with (
            EventReceiver(broker, buffer_size=1) as receiver,
            anyio.create_task_group() as tg,
        ):

            async def publish() -> None:
                for i in range(100):
                    await broker.publish([single(ev(uuid=str(i)))])

            tg.start_soon(publish)
            await anyio.sleep_forever()
    assert receiver.statistics().buffered == 0
    assert memory_hub(url)._subscriptions == []
    await broker.aclose()
    await anyio.sleep(0)
    assert asyncio.all_tasks() == before


async def test_lifecycle_errors(broker: MemoryBroker) -> None:
    receiver = EventReceiver(broker)
    with pytest.raises(ClosedError):
        await receiver.receive()
    async with receiver:
        with pytest.raises(ClosedError):
            async with receiver:
                pass
    with pytest.raises(EndOfStream, match="closed"):
        await receiver.receive()
    with pytest.raises(ClosedError):
        async with receiver:
            pass
    assert "closed" in repr(receiver)


async def test_owns_broker_opened_from_url(url: str) -> None:
    async with EventReceiver(url) as receiver:
        broker = receiver.broker
        assert isinstance(broker, MemoryBroker)
    with pytest.raises(ClosedError):
        await broker.publish([])


class _UnreachableBroker:
    """A broker that can never be reached."""

    def __init__(self) -> None:
        self.attempts = 0
        self.closed = False

    @property
    def url(self) -> str:
        return "fake://nowhere"

    async def connect(self) -> None:
        self.attempts += 1
        raise BrokerConnectionError("connection refused")

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        raise BrokerConnectionError("connection refused")

    async def subscribe(self, binding_keys: Sequence[str]) -> Any:
        raise BrokerConnectionError("connection refused")

    async def aclose(self) -> None:
        self.closed = True


async def test_connect_timeout_raises_broker_connection_error() -> None:
    broker = _UnreachableBroker()
    receiver = EventReceiver(broker, connect_timeout=0.3)
    with anyio.fail_after(5), pytest.raises(BrokerConnectionError, match="fake://nowhere"):
        async with receiver:
            pass
    assert broker.attempts >= 1
    assert not broker.closed  # not owned: left to its owner
    with pytest.raises(ClosedError):
        async with receiver:
            pass


class _RefusingBroker(_UnreachableBroker):
    """Refuses as an adapter does: the URL in its message, the reason without it."""

    def __init__(self, url: str, reason: str | None) -> None:
        super().__init__()
        self._url = url
        self._reason = reason

    @property
    def url(self) -> str:
        return self._url

    async def connect(self) -> None:
        self.attempts += 1
        error = BrokerConnectionError(f"connecting to {self._url}: connection refused")
        error.reason = self._reason
        raise error


async def test_subscribe_error_names_the_url_once_with_the_reason() -> None:
    url = "fake://user:secret@nowhere:1/"
    broker = _RefusingBroker(url, "connection refused by nowhere:1 (is the broker running there?)")
    with anyio.fail_after(5), pytest.raises(BrokerConnectionError) as info:
        async with EventReceiver(broker, connect_timeout=0.1):
            pass
    assert str(info.value) == (
        "cannot subscribe to fake://user:***@nowhere:1/: "
        "connection refused by nowhere:1 (is the broker running there?)"
    )
    assert info.value.reason == "connection refused by nowhere:1 (is the broker running there?)"


async def test_subscribe_error_without_a_reason_names_the_url_once() -> None:
    url = "fake://user:secret@nowhere:1/"
    with anyio.fail_after(5), pytest.raises(BrokerConnectionError) as info:
        async with EventReceiver(_RefusingBroker(url, None), connect_timeout=0.1):
            pass
    message = str(info.value)
    assert (
        message == "cannot subscribe: connecting to fake://user:***@nowhere:1/: connection refused"
    )
    assert "secret" not in message


@pytest.mark.parametrize("scheme", ["amqp://guest:secret@", "redis://:secret@"])
async def test_subscribe_error_of_a_real_adapter_is_one_line(scheme: str) -> None:
    url = f"{scheme}127.0.0.1:1/"
    with anyio.fail_after(10), pytest.raises(BrokerConnectionError) as info:
        async with EventReceiver(url, connect_timeout=0.1):
            pass
    message = str(info.value)
    assert message.count("127.0.0.1:1/") == 1 and "secret" not in message
    assert "\n" not in message and info.value.reason is not None
    assert message.endswith(f": {info.value.reason}")
    assert "refused" in info.value.reason


class _ScriptedSubscription:
    def __init__(self, messages: list[IncomingMessage]) -> None:
        self._messages = list(messages)
        self._closed = anyio.Event()

    def __aiter__(self) -> _ScriptedSubscription:
        return self

    async def __anext__(self) -> IncomingMessage:
        if self._messages:
            await anyio.sleep(0)
            return self._messages.pop(0)
        await self._closed.wait()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._closed.set()


class _ScriptedBroker:
    """Delivers a fixed list of messages (with acknowledgements), then waits."""

    def __init__(self, messages: list[IncomingMessage]) -> None:
        self.messages = messages

    @property
    def url(self) -> str:
        return "scripted://"

    async def connect(self) -> None:
        pass

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        pass

    async def subscribe(self, binding_keys: Sequence[str]) -> _ScriptedSubscription:
        return _ScriptedSubscription(self.messages)

    async def aclose(self) -> None:
        pass


async def test_messages_acknowledged_once_their_events_were_taken() -> None:
    acked: list[str] = []

    def incoming(name: str, body: bytes) -> IncomingMessage:
        return IncomingMessage("task.multi", body, ack=lambda: acked.append(name))

    broker = _ScriptedBroker(
        [
            incoming("a", json.dumps([ev(uuid="1"), ev(uuid="2")]).encode()),
            incoming("bad", b"garbage"),
            incoming("empty", b"[]"),
            incoming("b", json.dumps(ev(uuid="3")).encode()),
        ]
    )
    async with EventReceiver(broker) as receiver:
        first = await take(receiver, 1)
        assert "a" not in acked  # one event of "a" still waits for the caller
        rest = await take(receiver, 2)
        assert acked[:3] == ["a", "bad", "empty"]
        await wait_until(lambda: receiver.statistics().messages == 4)
    assert [e["uuid"] for e in first + rest] == ["1", "2", "3"]


async def test_buffered_counts_events_not_acknowledgement_markers() -> None:
    broker = _ScriptedBroker(
        [
            IncomingMessage(
                "task.multi", json.dumps([ev(uuid="1"), ev(uuid="2")]).encode(), ack=dict
            ),
            IncomingMessage("task.started", json.dumps(ev(uuid="3")).encode(), ack=dict),
        ]
    )
    async with EventReceiver(broker) as receiver:
        await wait_until(lambda: receiver.statistics().messages == 2)
        assert receiver.statistics().buffered == 3
        await take(receiver, 2)
        assert receiver.statistics().buffered == 1
        await take(receiver, 1)
        assert receiver.statistics().buffered == 0


@pytest.mark.parametrize(
    "kwargs", [{"routing_keys": []}, {"buffer_size": 0}, {"overflow": "sideways"}]
)
def test_configuration_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        EventReceiver(MemoryBroker(), **kwargs)


@pytest.mark.parametrize("policy", ["block", Overflow.BLOCK, "sideways"])
def test_overflow_policies_of_the_receiver_only(policy: Any) -> None:
    valid = "valid policies: 'pause', 'drop_oldest', 'drop_newest', 'error'"
    with pytest.raises(ConfigurationError, match=valid) as info:
        EventReceiver(MemoryBroker(), overflow=policy)
    assert isinstance(info.value, ValueError)  # ConfigurationError is also a ValueError


@pytest.mark.parametrize("policy", ["pause", "drop_oldest", "drop_newest", "error"])
def test_every_receiver_policy_is_accepted(policy: str) -> None:
    assert repr(EventReceiver(MemoryBroker(), overflow=policy)).endswith("unopened>")


# -- closing -------------------------------------------------------------------------


async def test_aclose_is_leaving_the_context(broker: MemoryBroker, hub: MemoryHub) -> None:
    receiver = EventReceiver(broker)
    await receiver.__aenter__()
    await broker.publish([single(ev(uuid="1"))])
    await wait_until(lambda: receiver.statistics().buffered == 1)
    await receiver.aclose()
    assert "closed" in repr(receiver)
    assert hub._subscriptions == []  # the subscription ended
    assert receiver.statistics().buffered == 0  # buffered events were discarded
    with pytest.raises(EndOfStream):
        await receiver.receive()
    await receiver.aclose()  # idempotent
    await receiver.__aexit__(None, None, None)  # and so is leaving afterwards
    with pytest.raises(ClosedError):
        await receiver.__aenter__()


async def test_aclose_inside_the_context(url: str) -> None:
    async with EventReceiver(url) as receiver:
        broker = receiver.broker
        await receiver.aclose()
        assert [event async for event in receiver] == []
    with pytest.raises(ClosedError):
        await broker.publish([single(ev())])  # the owned broker was closed once


async def test_aclose_of_a_receiver_never_opened(broker: MemoryBroker) -> None:
    receiver = EventReceiver(broker)
    await receiver.aclose()
    with pytest.raises(EndOfStream):
        await receiver.receive()
    with pytest.raises(ClosedError):
        await receiver.__aenter__()


async def test_end_of_subscription_is_end_of_stream() -> None:
    broker = _EndingBroker([IncomingMessage("task.started", json.dumps(ev(uuid="1")).encode())])
    async with EventReceiver(broker) as receiver:
        with anyio.fail_after(5):
            assert [e["uuid"] async for e in receiver] == ["1"]  # ends normally
            with pytest.raises(EndOfStream, match="ended the subscription"):
                await receiver.receive()
            with pytest.raises(EndOfStream):
                await receiver.receive()  # and stays ended


class _GivingUpSubscription(_ScriptedSubscription):
    async def __anext__(self) -> IncomingMessage:
        if self._messages:
            return await super().__anext__()
        raise BrokerConnectionError("gave up reconnecting")


class _GivingUpBroker(_ScriptedBroker):
    async def subscribe(self, binding_keys: Sequence[str]) -> _ScriptedSubscription:
        return _GivingUpSubscription(self.messages)


class _EndingSubscription(_ScriptedSubscription):
    async def __anext__(self) -> IncomingMessage:
        if self._messages:
            return await super().__anext__()
        raise StopAsyncIteration  # the broker ended the subscription


class _EndingBroker(_ScriptedBroker):
    async def subscribe(self, binding_keys: Sequence[str]) -> _ScriptedSubscription:
        return _EndingSubscription(self.messages)


async def test_adapter_giving_up_surfaces_after_buffered_events() -> None:
    broker = _GivingUpBroker(
        [IncomingMessage("task.multi", json.dumps([ev(uuid="1"), ev(uuid="2")]).encode())]
    )
    async with EventReceiver(broker) as receiver:
        got = await take(receiver, 2)
        with anyio.fail_after(5), pytest.raises(BrokerConnectionError, match="gave up"):
            await receiver.receive()
        with pytest.raises(BrokerConnectionError):
            await receiver.receive()
    assert [e["uuid"] for e in got] == ["1", "2"]


async def test_closing_ends_iteration_in_other_tasks(broker: MemoryBroker) -> None:
    got: list[str] = []
    receiver = EventReceiver(broker)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await receiver.__aenter__()

            async def consume() -> None:
                async for event in receiver:
                    got.append(event["uuid"])

            tg.start_soon(consume)
            await broker.publish([single(ev(uuid="1"))])
            await wait_until(lambda: got == ["1"])
            await receiver.__aexit__(None, None, None)
        # the task group only exits because consume() finished
    assert got == ["1"]


async def test_batch_elements_are_checked_like_validate_event(broker: MemoryBroker) -> None:
    # Near misses of the common case (a built-in type, a numeric timestamp, a
    # string hostname) are refused with validate_event's reason; a custom
    # type is accepted; what is valid still arrives, in order.
    elements: list[Any] = [
        ev(uuid="ok1"),
        {**ev(uuid="x1"), "hostname": None},
        {k: v for k, v in ev(uuid="x2").items() if k != "hostname"},
        {**ev(uuid="x3"), "timestamp": "1.0"},
        {**ev(uuid="x4"), "timestamp": True},
        {k: v for k, v in ev(uuid="x5").items() if k != "timestamp"},
        {**ev(uuid="x6"), "type": ""},
        {**ev(uuid="x7"), "type": ["task-started"]},
        {**ev(uuid="x8"), "type": 7},
        ev("task-progress", uuid="ok2", timestamp=5),
        ev("task-sent", uuid="ok3"),
        [ev(uuid="x9")],
        ev(uuid="ok4"),
    ]
    errors: list[str] = []

    def on_error(error: DecodeError, message: IncomingMessage) -> None:
        errors.append(error.detail)

    async with EventReceiver(broker, on_error=on_error) as receiver:
        await broker.publish([batch(elements)])
        got = await take(receiver, 4)
        stats = receiver.statistics()
    assert [e["uuid"] for e in got] == ["ok1", "ok2", "ok3", "ok4"]
    assert type(got[1]).__name__ == "TaskEvent" and got[1].type == "task-progress"
    assert stats.malformed == {"not-an-event": 9}
    expected = [validate_event(e) for e in elements]
    assert all(expected[i] is not None for i in (1, 2, 3, 4, 5, 6, 7, 8, 11))
    # every refused element reported with validate_event's reason, in order
    assert errors == [r for r in expected if r is not None]
