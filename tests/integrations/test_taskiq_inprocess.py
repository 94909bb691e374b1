"""The taskiq middleware in one process (taskiq's InMemoryBroker): broker down, remote control.

* With the event broker unreachable, every task still runs and returns its
  result; events wait in the bounded buffer and the overflow is counted.
* ``revoke --terminate`` cancels a running task, reported as ``task-revoked``
  with the signal number, and the worker goes on running tasks.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

pytest.importorskip("taskiq")

from taskiq import InMemoryBroker

from aiocelev import Control, EventReceiver
from aiocelev.integrations.taskiq import CeleryEventsMiddleware


def _worker_broker(middleware: CeleryEventsMiddleware) -> InMemoryBroker:
    broker = InMemoryBroker().with_middlewares(middleware)
    broker.is_worker_process = True
    return broker


async def test_tasks_run_when_the_event_broker_is_down() -> None:
    pytest.importorskip("redis")
    middleware = CeleryEventsMiddleware(
        "redis://127.0.0.1:1/0",  # nothing listens on port 1
        hostname="tq-down@test",
        buffer_size=4,
        shield_timeout=0.5,
        start_timeout=5,
    )
    broker = _worker_broker(middleware)

    @broker.task(task_name="tq.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @broker.task(task_name="tq.boom")
    async def boom() -> None:
        raise ValueError("boom")

    await broker.startup()
    try:
        node = middleware.node
        assert node is not None and node.worker is not None  # online, events buffered
        handles = [await add.kiq(i, 1) for i in range(20)]
        failing = await boom.kiq()
        results = [await handle.wait_result(timeout=10) for handle in handles]
        assert [r.return_value for r in results] == [i + 1 for i in range(20)]
        assert not any(r.is_err for r in results)
        failed = await failing.wait_result(timeout=10)
        assert failed.is_err and isinstance(failed.error, ValueError)
        stats = node.statistics()
        assert stats is not None
        assert stats.sent == 0 and stats.buffered == 4
        assert stats.dropped == stats.accepted - 4 > 0
        assert node.errors == 0
        assert node.worker.processed == 21
    finally:
        with anyio.fail_after(10):
            await broker.shutdown()
    assert middleware.node is None


async def test_revoke_terminate_cancels_a_running_task() -> None:
    url = "memory://aiocelev-taskiq-inprocess"
    middleware = CeleryEventsMiddleware(url, hostname="tq-mem@test", freq=0.5)
    broker = _worker_broker(middleware)
    started = asyncio.Event()

    @broker.task(task_name="tq.hold")
    async def hold() -> str:
        started.set()
        await asyncio.sleep(3600)
        return "never"

    @broker.task(task_name="tq.add")
    async def add(x: int, y: int) -> int:
        return x + y

    events: list[Any] = []
    async with EventReceiver(url) as receiver, Control(url, timeout=2.0) as control:
        await broker.startup()
        try:
            handle = await hold.kiq()
            with anyio.fail_after(10):
                await started.wait()
            active = await control.active(destination=["tq-mem@test"])
            assert [t["id"] for t in active[0].payload] == [handle.task_id]
            replies = await control.revoke(
                handle.task_id, terminate=True, signal="SIGKILL", destination=["tq-mem@test"]
            )
            assert [r.payload for r in replies] == [{"ok": f"terminate: {handle.task_id}"}]
            result = await handle.wait_result(timeout=10)
            assert result.is_err and isinstance(result.error, asyncio.CancelledError)
            after = await (await add.kiq(1, 2)).wait_result(timeout=10)  # the worker goes on
            assert after.return_value == 3
            registered = await control.registered(destination=["tq-mem@test"])
            assert {"tq.add", "tq.hold"} <= set(registered[0].payload)
        finally:
            await broker.shutdown()
        with anyio.fail_after(10):
            async for event in receiver:
                events.append(event)
                if event.type == "worker-offline":
                    break
    revoked = [e for e in events if e.type == "task-revoked"]
    assert [(e.uuid, e.get("terminated"), e.get("signum")) for e in revoked] == [
        (handle.task_id, True, 9)
    ]
    assert [e.type for e in events if e.get("uuid") == handle.task_id] == [
        "task-received",
        "task-started",
        "task-revoked",
    ]
