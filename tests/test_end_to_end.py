"""Dispatcher -> memory:// -> receiver, at volume: nothing lost, nothing reordered."""

from __future__ import annotations

import anyio
import pytest

from aiocelev import EventDispatcher, EventReceiver, TaskStarted, WorkerHeartbeat

from ._helpers import memory_url

TOTAL = 100_000


async def test_100k_events_none_lost_in_order(request: pytest.FixtureRequest) -> None:
    url = memory_url(request)
    received: list[int] = []
    heartbeats = 0
    async with EventReceiver(url, buffer_size=1000) as receiver:
        async with anyio.create_task_group() as tg:

            async def produce() -> None:
                async with EventDispatcher(
                    url, hostname="e2e@host", max_batch=50, buffer_size=2000
                ) as d:
                    for i in range(TOTAL):
                        if i % 1000 == 0:
                            await d.send("worker-heartbeat", seq=i)
                        else:
                            await d.send("task-started", uuid=f"{i:06d}", seq=i)
                    stats = d.statistics()
                    assert stats.accepted == TOTAL
                assert d.statistics().sent == TOTAL
                assert d.statistics().dropped == 0
                assert d.statistics().batches > 0
                # far fewer messages than events: task events went out batched
                assert d.statistics().messages < TOTAL // 2

            tg.start_soon(produce)
            with anyio.fail_after(60):
                async for event in receiver:
                    if event["seq"] % 1000 == 0:
                        assert isinstance(event, WorkerHeartbeat)
                        heartbeats += 1
                    else:
                        assert isinstance(event, TaskStarted)
                        assert event.uuid == f"{event['seq']:06d}"
                    received.append(event["seq"])
                    if len(received) == TOTAL:
                        break
        stats = receiver.statistics()
    assert received == list(range(TOTAL))
    assert heartbeats == TOTAL // 1000
    assert stats.delivered == TOTAL
    assert stats.dropped == 0
    assert stats.malformed == {}
    assert stats.invalid_clocks == 0


async def test_clocks_increase_along_one_stream(request: pytest.FixtureRequest) -> None:
    url = memory_url(request)
    async with EventReceiver(url) as receiver:
        async with EventDispatcher(url, hostname="a@host") as d:
            for i in range(500):
                await d.send("task-started", uuid=str(i))
        with anyio.fail_after(10):
            clocks = [(await receiver.receive()).clock for _ in range(500)]
    assert clocks == list(range(1, 501))
    assert receiver.clock.value == 501
