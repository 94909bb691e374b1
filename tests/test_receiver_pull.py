"""EventReceiver pull mode: the consumer reads the subscription itself while the buffer is empty.

Each test checks which task read each message (the consumer's or the pump's) and
that the receiver's guarantees hold whoever reads: order, ``pause``'s bound, the
drop policies' read-ahead, acknowledgements in delivery order and sent by the pump,
end of stream and broker errors, cancellation safety, connection status.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from aiocelev import (
    BrokerConnectionError,
    BufferFullError,
    EventReceiver,
    IncomingMessage,
    OutgoingMessage,
)
from aiocelev._exceptions import EndOfStream
from aiocelev._link import LinkMonitor

from .test_receiver import ev


def message(*uuids: str, ack: Callable[[], None] | None = None) -> IncomingMessage:
    body = [ev(uuid=u) for u in uuids]
    return IncomingMessage("task.multi", json.dumps(body).encode(), ack=ack)


class _HandSubscription:
    """Hands over messages when the test says so, and records who read each one."""

    def __init__(self) -> None:
        self.queue: list[IncomingMessage | BaseException] = []
        self.readers: list[str] = []
        self.consumer: Any = None
        self.shielded = False
        self.on_read: Callable[[], Any] | None = None
        self.in_read = anyio.Event()
        self.waiting = anyio.Event()
        self.waiter = ""
        self._arrived = anyio.Event()
        self._closed = False
        self.link = LinkMonitor("hand://")

    def push(self, item: IncomingMessage | BaseException) -> None:
        self.queue.append(item)
        self.waiting = anyio.Event()
        self._arrived.set()

    async def deliver(self, *items: IncomingMessage | BaseException) -> None:
        """Push each item once a reader waits for one (as messages trickle in)."""
        for item in items:
            await self.waiting.wait()
            await _settle()
            self.push(item)

    def __aiter__(self) -> _HandSubscription:
        return self

    async def __anext__(self) -> IncomingMessage:
        me = anyio.get_current_task().id
        self.in_read.set()
        if self.on_read is not None:
            await self.on_read()
        while not self.queue:
            if self._closed:
                raise StopAsyncIteration
            self._arrived = anyio.Event()
            self.waiter = "consumer" if me == self.consumer else "pump"
            self.waiting.set()
            # Like the Redis adapter's read: a cancellation waits for the end of
            # a bounded read.
            with anyio.CancelScope(shield=self.shielded), anyio.move_on_after(0.05):
                await self._arrived.wait()
            if not self.queue:
                await anyio.lowlevel.checkpoint()
        item = self.queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        # No checkpoint between taking a message and returning it.
        self.readers.append("consumer" if me == self.consumer else "pump")
        return item

    async def aclose(self) -> None:
        self._closed = True
        self._arrived.set()


class _HandBroker:
    def __init__(self) -> None:
        self.sub = _HandSubscription()

    @property
    def url(self) -> str:
        return "hand://"

    async def connect(self) -> None:
        pass

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        pass

    async def subscribe(self, binding_keys: Sequence[str]) -> _HandSubscription:
        return self.sub

    async def aclose(self) -> None:
        pass


async def _settle() -> None:
    for _ in range(20):
        await anyio.lowlevel.checkpoint()


async def test_a_waiting_consumer_reads_the_message_itself() -> None:
    broker = _HandBroker()
    sub = broker.sub
    sub.consumer = anyio.get_current_task().id
    got = []
    async with EventReceiver(broker) as receiver, anyio.create_task_group() as tg:
        tg.start_soon(sub.deliver, *(message(str(i)) for i in range(3)))
        with anyio.fail_after(5):
            async for event in receiver:
                got.append(event["uuid"])
                if len(got) == 3:
                    break
        assert got == ["0", "1", "2"]
        assert sub.readers == ["consumer"] * 3
        assert receiver.statistics().messages == 3


async def test_batches_read_by_a_waiting_consumer() -> None:
    broker = _HandBroker()
    sub = broker.sub
    sub.consumer = anyio.get_current_task().id
    got = []
    async with EventReceiver(broker) as receiver, anyio.create_task_group() as tg:
        tg.start_soon(sub.deliver, message("0", "1"), message("2"))
        with anyio.fail_after(5):
            async for chunk in receiver.batches():
                got.append([e["uuid"] for e in chunk])
                if len(got) == 2:
                    break
        assert got == [["0", "1"], ["2"]]
        assert sub.readers == ["consumer"] * 2


async def _push_later(sub: _HandSubscription, item: IncomingMessage | BaseException) -> None:
    await _settle()
    sub.push(item)


async def test_the_pump_reads_ahead_while_the_consumer_is_away() -> None:
    broker = _HandBroker()
    sub = broker.sub
    sub.consumer = anyio.get_current_task().id
    async with EventReceiver(broker, buffer_size=2, overflow="drop_newest") as receiver:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_push_later, sub, message("0"))
            with anyio.fail_after(5):
                assert (await receiver.receive())["uuid"] == "0"
        # The consumer is busy elsewhere: the pump keeps reading, and drops.
        for i in range(1, 6):
            sub.push(message(str(i)))
        await _settle()
        stats = receiver.statistics()
        assert stats.messages == 6 and stats.buffered == 2 and stats.dropped == 3
        assert sub.readers == ["consumer"] + ["pump"] * 5
        got = [(await receiver.receive())["uuid"] for _ in range(2)]
        assert got == ["1", "2"]


async def test_pause_bound_and_order_when_the_consumer_reads_a_large_message() -> None:
    broker = _HandBroker()
    sub = broker.sub
    sub.consumer = anyio.get_current_task().id
    async with EventReceiver(broker, buffer_size=3) as receiver:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_push_later, sub, message(*"abcdefg"))
            with anyio.fail_after(5):
                got = [(await receiver.receive())["uuid"]]
        sub.push(message("h"))
        while len(got) < 8:
            assert receiver.statistics().buffered <= 3
            with anyio.fail_after(5):
                got.append((await receiver.receive())["uuid"])
            await _settle()
        assert got == list("abcdefgh")
        # The consumer read the large message; the pump buffered what did not
        # fit, waiting for room, before reading the next one.
        assert sub.readers == ["consumer", "pump"]
        assert receiver.statistics().dropped == 0


async def test_overflow_error_in_the_consumers_read_ends_after_the_buffered_events() -> None:
    broker = _HandBroker()
    sub = broker.sub
    async with EventReceiver(broker, buffer_size=2, overflow="error") as receiver:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_push_later, sub, message("a", "b", "c"))
            with anyio.fail_after(5):
                got = [(await receiver.receive())["uuid"], (await receiver.receive())["uuid"]]
                with pytest.raises(BufferFullError):
                    await receiver.receive()
        assert got == ["a", "b"]


async def test_acknowledgements_in_order_and_sent_from_the_pumps_read() -> None:
    broker = _HandBroker()
    sub = broker.sub
    sub.consumer = anyio.get_current_task().id
    acked: list[str] = []

    def ack(name: str) -> Callable[[], None]:
        return lambda: acked.append(name)

    got = []
    async with EventReceiver(broker) as receiver, anyio.create_task_group() as tg:
        tg.start_soon(sub.deliver, *(message(name, ack=ack(name)) for name in "abc"))
        with anyio.fail_after(5):
            async for event in receiver:
                got.append(event["uuid"])
                assert acked == got[:-1]  # the previous one, once the next is asked for
                if len(got) == 3:
                    break
        # The first read is the consumer's; after an acknowledgement the next read
        # (where an adapter sends pending acknowledgements) is left to the pump.
        assert sub.readers == ["consumer", "pump", "pump"]
        tg.start_soon(_push_later, sub, message("d"))
        with anyio.fail_after(5):
            await receiver.receive()
        assert acked == ["a", "b", "c"]


async def test_end_of_stream_in_the_consumers_read() -> None:
    broker = _HandBroker()
    sub = broker.sub
    sub.consumer = anyio.get_current_task().id
    async with EventReceiver(broker) as receiver, anyio.create_task_group() as tg:
        tg.start_soon(sub.deliver, message("a"))
        with anyio.fail_after(5):
            assert (await receiver.receive())["uuid"] == "a"

        readers = []

        async def end() -> None:
            await sub.waiting.wait()
            readers.append(sub.waiter)
            await sub.aclose()

        tg.start_soon(end)
        with anyio.fail_after(5), pytest.raises(EndOfStream, match="ended the subscription"):
            await receiver.receive()
        assert readers == ["consumer"]
        assert [e async for e in receiver] == []


async def test_broker_error_in_the_consumers_read() -> None:
    broker = _HandBroker()
    sub = broker.sub
    sub.consumer = anyio.get_current_task().id
    error = BrokerConnectionError("gave up reconnecting")
    async with EventReceiver(broker) as receiver, anyio.create_task_group() as tg:
        tg.start_soon(sub.deliver, message("a"), error)
        with anyio.fail_after(5):
            assert (await receiver.receive())["uuid"] == "a"
            with pytest.raises(BrokerConnectionError, match="gave up"):
                await receiver.receive()
        assert sub.waiter == "consumer"
        assert not receiver.connection.connected
        with pytest.raises(BrokerConnectionError):
            await receiver.receive()


@pytest.mark.parametrize("shielded", [False, True], ids=["waiting", "mid-read"])
async def test_a_cancelled_consumer_loses_no_message(shielded: bool) -> None:
    broker = _HandBroker()
    sub = broker.sub
    sub.consumer = anyio.get_current_task().id
    sub.shielded = shielded
    async with EventReceiver(broker) as receiver, anyio.create_task_group() as tg:
        tg.start_soon(sub.deliver, message("x"))
        with anyio.fail_after(5):
            assert (await receiver.receive())["uuid"] == "x"
        got = []
        readers = []
        with anyio.CancelScope() as scope:

            async def cancel_then_deliver() -> None:
                await sub.waiting.wait()
                readers.append(sub.waiter)
                await _settle()
                scope.cancel()
                await _settle()
                # With a shielded read the message arrives after the cancel.
                sub.push(message("a", "b"))

            tg.start_soon(cancel_then_deliver)
            # A read that completes despite the cancellation may still hand over
            # its first event; otherwise the cancellation is raised.
            got.append((await receiver.receive())["uuid"])
            await anyio.lowlevel.checkpoint()
        assert scope.cancel_called
        with anyio.fail_after(5):
            while len(got) < 2:
                got.append((await receiver.receive())["uuid"])
        assert got == ["a", "b"]
        assert readers == ["consumer"]
        assert receiver.statistics().messages == 2


async def test_connection_status_follows_a_recovery_in_the_consumers_read() -> None:
    broker = _HandBroker()
    sub = broker.sub
    sub.consumer = anyio.get_current_task().id
    statuses: list[bool] = []

    async def recover() -> None:
        # What the AMQP adapter does in whichever task iterates: lose, re-subscribe.
        sub.on_read = None
        sub.link.lost("channel closed")
        await _settle()
        sub.link.restored()

    async with EventReceiver(
        broker, on_connection=lambda status: statuses.append(status.connected)
    ) as receiver:
        sub.on_read = recover
        async with anyio.create_task_group() as tg:
            tg.start_soon(_push_later, sub, message("a"))
            with anyio.fail_after(5):
                assert (await receiver.receive())["uuid"] == "a"
        assert sub.readers == ["consumer"]
        assert statuses == [False, True]
        status = receiver.connection
        assert status.connected and status.gaps == 1
