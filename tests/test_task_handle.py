"""TaskHandle over memory://: a task reported by calls, as a framework's hooks report it."""

from __future__ import annotations

import asyncio
import functools
import itertools
import signal
from typing import Any

import anyio
import pytest

from aiocelev import (
    ClosedError,
    Control,
    EventDispatcher,
    EventReceiver,
    TaskHandle,
    TaskStateError,
    WorkerInstrument,
    worker_events,
)
from aiocelev._events import Event

NODE = "hooks@testhost"
WAIT = 5.0  # generous bound for "eventually"; nothing here should take near that long

_names = itertools.count()


@pytest.fixture
def url() -> str:
    return f"memory://task-handle-test-{next(_names)}"


async def events_until(receiver: EventReceiver, type_: str) -> list[Event]:
    """Every event up to and including the first of *type_*."""
    seen: list[Event] = []
    with anyio.fail_after(WAIT):
        async for event in receiver:
            seen.append(event)
            if event.type == type_:
                return seen
    raise AssertionError("receiver closed")


def task_events(events: list[Event], uuid: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``(type, fields)`` of the task events (of *uuid*), without the common fields."""
    common = {"hostname", "utcoffset", "pid", "clock", "timestamp", "type", "local_received"}
    return [
        (e.type, {k: v for k, v in e.to_dict().items() if k not in common})
        for e in events
        if e.type.startswith("task-") and (uuid is None or e.get("uuid") == uuid)
    ]


async def test_started_then_succeeded(url: str) -> None:
    async with EventReceiver(url) as receiver:
        async with EventDispatcher(url, hostname=NODE) as d, worker_events(d) as worker:
            handle = worker.begin_task("h1", "app.add", (2, 2), {"z": 1}, retries=2, parent_id="p")
            assert handle.state == "PENDING" and worker.processed == 0
            await handle.started()
            assert handle.state == "STARTED"
            assert (worker.processed, worker.active) == (1, 1)
            assert worker.running_tasks == (handle,)
            assert handle.info()["id"] == "h1" and handle.info()["time_start"] is not None
            await handle.succeeded(4, runtime=1.5)
            assert (handle.state, handle.done, handle.result, handle.runtime) == (
                "SUCCESS",
                True,
                4,
                1.5,
            )
            assert (worker.active, len(worker.running_tasks), dict(worker.totals)) == (
                0,
                0,
                {"app.add": 1},
            )
        events = await events_until(receiver, "worker-offline")
    assert task_events(events) == [
        (
            "task-received",
            {
                "uuid": "h1",
                "name": "app.add",
                "args": "(2, 2)",
                "kwargs": "{'z': 1}",
                "root_id": "h1",
                "parent_id": "p",
                "retries": 2,
                "eta": None,
                "expires": None,
            },
        ),
        ("task-started", {"uuid": "h1"}),
        ("task-succeeded", {"uuid": "h1", "result": "4", "runtime": 1.5}),
    ]
    assert (handle.root_id, handle.parent_id, handle.retries) == ("h1", "p", 2)


async def test_same_events_as_a_task_scope(url: str) -> None:
    """TaskScope is an ``async with`` over a handle: same events, same counters."""
    async with EventReceiver(url) as receiver:
        async with EventDispatcher(url, hostname=NODE) as d, worker_events(d) as worker:
            async with worker.task("s", "app.t", args=(1,), root_id="r") as scope:
                assert worker.running_tasks == (scope.handle,)
                scope.set_result("x")
            handle = worker.begin_task("h", "app.t", args=(1,), root_id="r")
            await handle.started()
            await handle.succeeded("x")
            try:
                async with worker.task("s2", "app.t") as scope:
                    raise ValueError("bad")
            except ValueError:
                pass
            handle2 = worker.begin_task("h2", "app.t")
            await handle2.started()
            try:
                raise ValueError("bad")
            except ValueError as exc:
                await handle2.failed(exc)
            assert (worker.processed, worker.active) == (4, 0)
        events = await events_until(receiver, "worker-offline")

    def shape(uuid: str) -> list[tuple[str, list[str]]]:
        return [(t, sorted(f)) for t, f in task_events(events, uuid)]

    assert shape("s") == shape("h") and len(shape("s")) == 3
    assert shape("s2") == shape("h2")
    [failed] = [f for t, f in task_events(events, "h2") if t == "task-failed"]
    assert failed["exception"] == "ValueError('bad')" and "Traceback" in failed["traceback"]


async def test_received_then_started_and_every_outcome(url: str) -> None:
    async with EventReceiver(url) as receiver:
        async with EventDispatcher(url, hostname=NODE) as d, worker_events(d) as worker:
            taken = worker.begin_task("r1", "app.t")
            await taken.received()  # prefetched, not running yet
            assert (taken.state, worker.processed, worker.active) == ("RECEIVED", 1, 0)
            await taken.started()
            await taken.retried(RuntimeError("again"), traceback="tb")

            dropped = worker.begin_task("r2", "app.t")
            await dropped.received()
            await dropped.revoked(expired=True)  # never ran: not terminated

            refused = worker.begin_task("r3", "app.t")
            await refused.rejected(requeue=True)  # nothing before: only task-rejected

            running = worker.begin_task("r4", "app.t")
            await running.started()
            await running.revoked()  # cancelled while running: terminated
            assert running.runtime is not None
            assert (worker.processed, worker.active) == (3, 0)
        events = await events_until(receiver, "worker-offline")
    assert [(t, f.get("uuid")) for t, f in task_events(events)] == [
        ("task-received", "r1"),
        ("task-started", "r1"),
        ("task-retried", "r1"),
        ("task-received", "r2"),
        ("task-revoked", "r2"),
        ("task-rejected", "r3"),
        ("task-received", "r4"),
        ("task-started", "r4"),
        ("task-revoked", "r4"),
    ]
    fields = {(t, f["uuid"]): f for t, f in task_events(events)}
    assert fields["task-retried", "r1"] == {
        "uuid": "r1",
        "exception": "RuntimeError('again')",
        "traceback": "tb",
    }
    assert fields["task-revoked", "r2"] == {
        "uuid": "r2",
        "terminated": False,
        "signum": None,
        "expired": True,
    }
    assert fields["task-rejected", "r3"] == {"uuid": "r3", "requeue": True}
    assert fields["task-revoked", "r4"]["terminated"] is True


async def test_misuse_raises_task_state_error(url: str) -> None:
    async with EventDispatcher(url, hostname=NODE) as d:
        worker = worker_events(d)
        early = worker.begin_task("m0", "app.t")
        with pytest.raises(ClosedError, match="async with"):
            await early.started()  # the worker is not open yet
        async with worker:
            handle = worker.begin_task("m1", "app.t")
            for outcome in (handle.succeeded(1), handle.failed(ValueError()), handle.retried()):
                with pytest.raises(TaskStateError, match="started"):
                    await outcome
            assert handle.state == "PENDING"
            await handle.started()
            with pytest.raises(TaskStateError):
                await handle.started()
            with pytest.raises(TaskStateError):
                await handle.received()
            await handle.succeeded(1)
            with pytest.raises(TaskStateError, match="already reported"):
                await handle.succeeded(2)
            with pytest.raises(TaskStateError, match="already reported"):
                await handle.revoked()
            with pytest.raises(TaskStateError):
                await handle.started()
            assert handle.result == 1 and worker.active == 0
    assert issubclass(TaskStateError, ClosedError)


async def test_outcome_is_sent_when_the_caller_is_cancelled(url: str) -> None:
    async with EventReceiver(url) as receiver:
        async with EventDispatcher(url, hostname=NODE) as d, worker_events(d) as worker:
            handle = worker.begin_task("c1", "app.t")
            await handle.started()
            with anyio.CancelScope() as scope:
                scope.cancel()
                await handle.failed(ValueError("late"))  # shielded: sent anyway
                await anyio.sleep(0)  # the cancellation lands here
                raise AssertionError("not cancelled")
            assert scope.cancelled_caught and handle.state == "FAILURE"
        events = await events_until(receiver, "worker-offline")
    assert [t for t, _ in task_events(events)] == ["task-received", "task-started", "task-failed"]


def cancel_first(job: list[asyncio.Task[None]]) -> bool:
    """A cancel callback: cancel the job's asyncio task."""
    return job[0].cancel()


async def run_job(handle: TaskHandle, release: anyio.Event) -> None:
    """A framework's job: reports the outcome from its own except clauses."""
    await handle.started()
    try:
        await release.wait()
    except asyncio.CancelledError:
        await handle.revoked()
        raise
    await handle.succeeded("done")


async def test_revoke_terminate_calls_the_cancel_callback(url: str) -> None:
    async with (
        EventReceiver(url) as receiver,
        Control(url, timeout=1.0) as control,
        EventDispatcher(url, hostname=NODE) as d,
        worker_events(d) as worker,
    ):
        release = anyio.Event()
        handles: list[TaskHandle] = []
        jobs: list[asyncio.Task[None]] = []
        for uuid in ("k1", "k2"):
            job: list[asyncio.Task[None]] = []  # the callback cancels the job's own task
            handle = worker.begin_task(
                uuid, "app.hold", cancel=functools.partial(cancel_first, job)
            )
            job.append(asyncio.create_task(run_job(handle, release)))
            handles.append(handle)
            jobs.append(job[0])
        with anyio.fail_after(WAIT):
            while worker.active < 2:
                await anyio.sleep(0.01)
        active = await control.active(destination=[NODE])
        assert sorted(t["id"] for t in active[0].payload) == ["k1", "k2"]
        replies = await control.revoke("k1", terminate=True, signal="KILL", destination=[NODE])
        assert [r.payload for r in replies] == [{"ok": "terminate: k1"}]
        with pytest.raises(asyncio.CancelledError):
            await jobs[0]
        release.set()
        await jobs[1]
        assert (handles[0].state, handles[0].terminated, handles[0].signum) == (
            "REVOKED",
            True,
            signal.SIGKILL,
        )
        assert (handles[1].state, handles[1].terminated) == ("SUCCESS", False)
        # Ended, a task is not terminated again.
        replies = await control.revoke("k1", terminate=True, destination=[NODE])
        assert [r.payload for r in replies] == [{"ok": "terminate: tasks unknown"}]
        assert worker.is_revoked("k1")
        events = await events_until(receiver, "task-succeeded")
    revoked = [f for t, f in task_events(events, "k1") if t == "task-revoked"]
    assert revoked == [{"uuid": "k1", "terminated": True, "signum": 9, "expired": False}]


async def test_terminate_without_or_refused_by_the_callback(url: str) -> None:
    def refuse() -> bool:
        return False

    def broken() -> bool:
        raise RuntimeError("cannot cancel")

    calls: list[str] = []

    def accept_once() -> None:
        calls.append("cancel")

    async with EventDispatcher(url, hostname=NODE) as d, worker_events(d) as worker:
        plain = worker.begin_task("t0", "app.t")
        refused = worker.begin_task("t1", "app.t", cancel=refuse)
        failing = worker.begin_task("t2", "app.t", cancel=broken)
        accepted = worker.begin_task("t3", "app.t", cancel=accept_once)
        assert not accepted.terminate()  # not started yet
        for handle in (plain, refused, failing, accepted):
            await handle.started()
        ids = ["t0", "t1", "t2", "t3"]
        assert await worker.revoke(ids, terminate=True) == ["t3"]
        assert await worker.revoke(ids, terminate=True, signal=2) == ["t3"]
        assert calls == ["cancel"]  # the callback runs once; the signal is updated
        assert accepted.signum == signal.SIGINT
        assert [h.terminated for h in (plain, refused, failing)] == [False] * 3
        assert worker.active == 4  # terminating does not end a task: its outcome does
        for handle in (plain, refused, failing, accepted):
            await handle.revoked()
        assert worker.active == 0


async def test_abandon_reports_revoked_and_ignores_later_outcomes(url: str) -> None:
    async with EventReceiver(url) as receiver:
        async with EventDispatcher(url, hostname=NODE) as d, worker_events(d) as worker:
            never = worker.begin_task("a0", "app.t")
            assert never.abandon()  # nothing was sent: nothing to report
            handle = worker.begin_task("a1", "app.t")
            await handle.started()
            assert handle.abandon()  # e.g. from a done-callback: no await
            assert not handle.abandon()
            assert (handle.state, handle.abandoned, worker.active) == ("REVOKED", True, 0)
            await handle.succeeded("late")  # ignored
            await handle.revoked()  # ignored
            assert handle.result is None
        events = await events_until(receiver, "worker-offline")
    assert task_events(events) == [
        task_events(events)[0],
        ("task-started", {"uuid": "a1"}),
        ("task-revoked", {"uuid": "a1", "terminated": True, "signum": None, "expired": False}),
    ]
    assert all(f.get("uuid") != "a0" for _, f in task_events(events))


async def test_handles_open_when_the_node_leaves_are_revoked(url: str) -> None:
    async with EventReceiver(url) as receiver:
        async with EventDispatcher(url, hostname=NODE) as d:
            worker: WorkerInstrument
            async with worker_events(d) as worker:
                running = worker.begin_task("o1", "app.t")
                await running.started()
                taken = worker.begin_task("o2", "app.t")
                await taken.received()
                worker.request_shutdown()
                await anyio.sleep_forever()
            assert (running.state, running.abandoned) == ("REVOKED", True)
            assert taken.state == "RECEIVED"  # not running: not the node's to end
            await running.succeeded(1)  # the framework reports late: ignored
        events = await events_until(receiver, "worker-offline")
    types = [(e.type, e.get("uuid")) for e in events if e.type != "worker-heartbeat"]
    assert types[-2:] == [("task-revoked", "o1"), ("worker-offline", None)]
    [revoked] = [f for t, f in task_events(events, "o1") if t == "task-revoked"]
    assert revoked["terminated"] is True


async def test_send_event_carries_the_uuid(url: str) -> None:
    async with EventReceiver(url) as receiver:
        async with EventDispatcher(url, hostname=NODE) as d, worker_events(d) as worker:
            handle = worker.begin_task("p1", "app.t")
            await handle.started()
            await handle.send_event("task-progress", done=50)
            await handle.succeeded()
        events = await events_until(receiver, "worker-offline")
    assert ("task-progress", {"uuid": "p1", "done": 50}) in task_events(events)
    assert repr(handle) == "<TaskHandle 'app.t' 'p1' SUCCESS>"
