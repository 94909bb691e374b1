"""Cancellation and shutdown on both real brokers: no task and no connection left behind,
buffered events flushed on a clean exit within ``close_timeout``."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import anyio
import anyio.to_thread
import pytest
from anyio import wait_all_tasks_blocked

from aiocelev import EventDispatcher, EventReceiver

from .._helpers import wait_until
from ..brokers._redis import free_port
from ._helpers import StallProxy
from .conftest import Target

pytestmark = pytest.mark.timeout(60)


def _name(target: Target) -> str:
    """A unique connection name; counting connections on RabbitMQ needs rabbitmqctl."""
    target.connections("")  # skips the test early when it cannot count
    return f"aiocelev-rel-{uuid.uuid4().hex[:8]}"


async def _no_connections(target: Target, name: str) -> bool:
    """Whether the server soon has no connection named *name* (polled up to ~10 s)."""

    def check() -> bool:
        deadline = time.monotonic() + 10
        while target.connections(name):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    return await anyio.to_thread.run_sync(check)


async def _tasks_back_to(before: set[asyncio.Task[object]], timeout: float = 5.0) -> None:
    """Wait until every task started since *before* ended; fail after *timeout* seconds
    (client libraries may finish their own close handshakes a moment after ``aclose``)."""
    await wait_until(
        lambda: not asyncio.all_tasks() - before,
        timeout=timeout,
        what=f"tasks left behind: {asyncio.all_tasks() - before}",
    )


async def test_cancelling_a_receiver_blocked_in_iteration(target: Target) -> None:
    name = _name(target)
    before = asyncio.all_tasks()
    async with EventReceiver(
        target.url(), routing_keys=["nothing.comes"], broker_options=target.named(name)
    ) as receiver:
        assert await anyio.to_thread.run_sync(target.connections, name) >= 1
        with anyio.move_on_after(0.3) as scope:
            async for _ in receiver:
                raise AssertionError("no event expected")
        assert scope.cancelled_caught
        async with anyio.create_task_group() as tg:  # cancelled from another task
            tg.start_soon(receiver.receive)
            await wait_all_tasks_blocked()  # receive() waits for an event
            tg.cancel_scope.cancel()
    await _tasks_back_to(before)
    assert await _no_connections(target, name)


async def test_cancelling_a_send_blocked_on_a_full_buffer(target: Target) -> None:
    """``block`` policy, buffer full, the broker path stalled: the blocked ``send`` can be
    cancelled; leaving the context then takes at most ``close_timeout``, counts the
    unsent events as dropped, and leaves no task and no connection behind."""
    name = _name(target)
    slow = (
        {"publish_timeout": 30.0, "confirm_publish": True}
        if target.kind == "amqp"
        else {"socket_timeout": 30.0}
    )
    before = asyncio.all_tasks()
    proxy = StallProxy(target.port)
    try:
        dispatcher = EventDispatcher(
            target.url(proxy.port),
            buffer_size=5,
            overflow="block",
            block_timeout=None,
            close_timeout=0.5,
            broker_options=target.named(name, **slow),
        )
        with anyio.fail_after(15):  # close_timeout bounds the exit
            async with dispatcher:
                await dispatcher.send("worker-heartbeat", freq=2.0)
                with anyio.fail_after(10):
                    await dispatcher.flush()
                proxy.stall()  # the next publish hangs: no error, no progress
                blocked = anyio.Event()
                with anyio.fail_after(10):
                    async with anyio.create_task_group() as tg:

                        async def sender() -> None:
                            for i in range(100):
                                if dispatcher.statistics().buffered >= 5:
                                    blocked.set()
                                await dispatcher.send("worker-heartbeat", freq=2.0, n=i)

                        tg.start_soon(sender)
                        await blocked.wait()
                        await wait_all_tasks_blocked()  # nothing here can make progress
                        assert dispatcher.statistics().buffered == 5  # it really blocks
                        tg.cancel_scope.cancel()
        stats = dispatcher.statistics()
        assert stats.dropped >= 4  # whatever was still buffered at the exit
    finally:
        proxy.resume()
        proxy.close()
    await _tasks_back_to(before)
    assert await _no_connections(target, name)


async def test_leaving_the_dispatcher_flushes_buffered_events(target: Target) -> None:
    """A clean exit with work pending: every buffered event is delivered first."""
    name = _name(target)
    before = asyncio.all_tasks()
    async with EventReceiver(
        target.url(), routing_keys=["task.#"], broker_options=target.options
    ) as receiver:
        async with EventDispatcher(
            target.url(), close_timeout=20, broker_options=target.named(name)
        ) as dispatcher:
            for i in range(2000):
                await dispatcher.send("task-started", uuid=f"e{i}")
            pending = dispatcher.statistics().buffered
        stats = dispatcher.statistics()
        with anyio.fail_after(20):
            got = [(await receiver.receive())["uuid"] for _ in range(2000)]
    assert pending > 0  # there was work pending when the context was left
    assert got == [f"e{i}" for i in range(2000)]
    assert (stats.sent, stats.dropped) == (2000, 0)
    await _tasks_back_to(before)
    assert await _no_connections(target, name)


async def test_leaving_with_the_broker_unreachable_is_bounded_by_close_timeout(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aiocelev.dispatcher")
    before = asyncio.all_tasks()
    with anyio.fail_after(10):
        async with EventDispatcher(
            target.url(free_port()),  # nothing listens there
            close_timeout=0.5,
            broker_options=target.fast(),
        ) as dispatcher:
            for i in range(10):
                await dispatcher.send("task-started", uuid=f"e{i}")
    stats = dispatcher.statistics()
    assert (stats.sent, stats.dropped) == (0, 10)
    assert "closing with 10 events not delivered" in caplog.text
    await _tasks_back_to(before)
