"""Worker instrumentation over memory://: the events a monitor sees, and remote control."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import anyio
import pytest

from aiocelev import Control, ControlReply, EventDispatcher, EventReceiver
from aiocelev._control import ControlRequest
from aiocelev._events import Event
from aiocelev._exceptions import (
    ClosedError,
    ConfigurationError,
    DuplicateNodeError,
    NotSupportedError,
)
from aiocelev._saferepr import saferepr
from aiocelev._task_scope import TaskScope
from aiocelev._worker import WorkerInstrument, load_average, worker_events
from aiocelev.brokers import ControlTransport
from aiocelev.brokers._memory_control import MemoryControl
from aiocelev.brokers.memory import MemoryBroker

NODE = "asyncw@testhost"
WAIT = 5.0  # generous bound for "eventually"; nothing here should take near that long

_names = itertools.count()

HEARTBEAT_ORDER = [
    "hostname",
    "utcoffset",
    "pid",
    "clock",
    "freq",
    "active",
    "processed",
    "loadavg",
    "sw_ident",
    "sw_ver",
    "sw_sys",
    "timestamp",
    "type",
]


@pytest.fixture
def url() -> str:
    return f"memory://worker-test-{next(_names)}"


async def next_event(receiver: EventReceiver, type_: str, **match: Any) -> Event:
    """The next event of *type_* (with fields equal to *match*), skipping others."""
    with anyio.fail_after(WAIT):
        async for event in receiver:
            if event.type == type_ and all(event.get(k) == v for k, v in match.items()):
                return event
    raise AssertionError("receiver closed")


async def events_until(receiver: EventReceiver, type_: str) -> list[Event]:
    """Every event up to and including the first of *type_*."""
    seen: list[Event] = []
    with anyio.fail_after(WAIT):
        async for event in receiver:
            seen.append(event)
            if event.type == type_:
                return seen
    raise AssertionError("receiver closed")


def wire_keys(event: Event) -> list[str]:
    keys = list(event.to_dict())
    return [k for k in keys if k != "local_received"]


# -- worker lifecycle -------------------------------------------------------


async def test_online_heartbeat_offline_in_order_with_celery_fields(url: str) -> None:
    async with EventReceiver(url) as receiver:
        async with (
            EventDispatcher(url, hostname=NODE) as dispatcher,
            worker_events(
                dispatcher, freq=0.05, sw_ident="aiocelev", sw_ver="9.9", sw_sys="TestOS"
            ) as worker,
        ):
            assert isinstance(worker, WorkerInstrument)
            assert worker.hostname == NODE
            await next_event(receiver, "worker-heartbeat")
        seen = await events_until(receiver, "worker-offline")
        types = [e.type for e in seen]
        assert types[-1] == "worker-offline"
        assert set(types[:-1]) <= {"worker-heartbeat"}

        # Replay from the start: a fresh look at the first events of the stream.
        online = seen  # (the online event was consumed by next_event above; check offline's shape)
        offline = online[-1]
        assert wire_keys(offline) == HEARTBEAT_ORDER
        assert offline.hostname == NODE
        assert offline["freq"] == 0.05
        assert offline["active"] == 0 and offline["processed"] == 0
        assert offline["sw_ident"] == "aiocelev"
        assert offline["sw_ver"] == "9.9"
        assert offline["sw_sys"] == "TestOS"
        loadavg = offline["loadavg"]
        assert isinstance(loadavg, list) and len(loadavg) == 3
        assert all(isinstance(x, float) and round(x, 2) == x for x in loadavg)


async def test_worker_online_comes_first(url: str) -> None:
    async with EventReceiver(url) as receiver:
        async with (
            EventDispatcher(url, hostname=NODE) as dispatcher,
            worker_events(dispatcher, freq=60),
        ):
            online = await next_event(receiver, "worker-online")
        assert wire_keys(online) == HEARTBEAT_ORDER
        assert online["freq"] == 60.0
        assert online["sw_ident"] == "aiocelev"
        assert online["sw_ver"]  # aiocelev's version by default
        assert online["sw_sys"]
        assert online.pid == dispatcher.pid


async def test_heartbeats_keep_coming(url: str) -> None:
    async with EventReceiver(url) as receiver:
        async with (
            EventDispatcher(url, hostname=NODE) as dispatcher,
            worker_events(dispatcher, freq=0.05),
        ):
            await next_event(receiver, "worker-online")
            first = await next_event(receiver, "worker-heartbeat")
            second = await next_event(receiver, "worker-heartbeat")
        assert second.clock > first.clock
        assert second.timestamp >= first.timestamp


async def test_offline_sent_when_the_enclosing_task_is_cancelled(url: str) -> None:
    async with EventReceiver(url) as receiver:
        entered = asyncio.Event()

        async def run_worker() -> None:
            async with (
                EventDispatcher(url, hostname=NODE) as dispatcher,
                worker_events(dispatcher, freq=60),
            ):
                entered.set()
                await asyncio.sleep(3600)

        task = asyncio.create_task(run_worker())
        await asyncio.wait_for(entered.wait(), WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        seen = await events_until(receiver, "worker-offline")
        assert [e.type for e in seen] == ["worker-online", "worker-offline"]


async def test_offline_sent_when_a_cancel_scope_is_cancelled(url: str) -> None:
    async with EventReceiver(url) as receiver:
        async with EventDispatcher(url, hostname=NODE) as dispatcher:
            with anyio.move_on_after(0.05):
                async with worker_events(dispatcher, freq=60):
                    await anyio.sleep_forever()
        seen = await events_until(receiver, "worker-offline")
        assert [e.type for e in seen] == ["worker-online", "worker-offline"]


async def test_offline_sent_when_the_block_raises(url: str) -> None:
    async with EventReceiver(url) as receiver:
        async with EventDispatcher(url, hostname=NODE) as dispatcher:
            with pytest.raises(RuntimeError, match="crash"):
                async with worker_events(dispatcher, freq=60):
                    raise RuntimeError("crash")
        seen = await events_until(receiver, "worker-offline")
        assert [e.type for e in seen] == ["worker-online", "worker-offline"]


async def test_instrument_is_single_use_and_checks_it_is_open(url: str) -> None:
    async with EventDispatcher(url, hostname=NODE) as dispatcher:
        worker = worker_events(dispatcher, freq=60)
        with pytest.raises(ClosedError):
            await worker.revoked("x")
        async with worker:
            pass
        with pytest.raises(ClosedError):
            async with worker:
                pass
        with pytest.raises(ClosedError):
            async with worker.task("t", "app.t"):
                pass


def test_bad_configuration_is_rejected() -> None:
    dispatcher = EventDispatcher("memory://unused", hostname=NODE)
    with pytest.raises(ConfigurationError):
        worker_events(dispatcher, freq=0)
    with pytest.raises(ConfigurationError):
        worker_events(dispatcher, shield_timeout=0)


def test_load_average_is_three_floats_rounded_up() -> None:
    values = load_average()
    assert len(values) == 3
    assert all(isinstance(v, float) and v >= 0 and round(v, 2) == v for v in values)


# -- tasks ------------------------------------------------------------------


async def test_successful_task(url: str) -> None:
    async with EventReceiver(url) as receiver:
        async with (
            EventDispatcher(url, hostname=NODE) as dispatcher,
            worker_events(dispatcher, freq=60) as worker,
        ):
            async with worker.task("id-1", "app.add", args=(2, 2), kwargs={"z": 1}) as task:
                assert isinstance(task, TaskScope)
                assert task.state == "STARTED"
                assert (worker.active, worker.processed) == (1, 1)
                await worker.heartbeat()
                task.set_result(4)
            assert (worker.active, worker.processed) == (0, 1)
            assert task.state == "SUCCESS"
            assert task.runtime is not None and task.runtime >= 0
        seen = await events_until(receiver, "worker-offline")
        types = [e.type for e in seen]
        assert types == [
            "worker-online",
            "task-received",
            "task-started",
            "worker-heartbeat",
            "task-succeeded",
            "worker-offline",
        ]
        received, started, beat, succeeded, offline = seen[1:]
        assert wire_keys(received) == [
            "hostname",
            "utcoffset",
            "pid",
            "clock",
            "uuid",
            "name",
            "args",
            "kwargs",
            "root_id",
            "parent_id",
            "retries",
            "eta",
            "expires",
            "timestamp",
            "type",
        ]
        assert received.to_dict() | {"local_received": None} == received.to_dict() | {
            "uuid": "id-1",
            "name": "app.add",
            "args": "(2, 2)",
            "kwargs": "{'z': 1}",
            "root_id": "id-1",
            "parent_id": None,
            "retries": 0,
            "eta": None,
            "expires": None,
            "local_received": None,
        }
        assert wire_keys(started) == [
            "hostname",
            "utcoffset",
            "pid",
            "clock",
            "uuid",
            "timestamp",
            "type",
        ]
        assert (beat["active"], beat["processed"]) == (1, 1)
        assert wire_keys(succeeded)[4:7] == ["uuid", "result", "runtime"]
        assert succeeded["result"] == "4"
        assert isinstance(succeeded["runtime"], float) and succeeded["runtime"] >= 0
        assert (offline["active"], offline["processed"]) == (0, 1)
        assert all(e.hostname == NODE for e in seen)


async def test_task_fields_pass_through(url: str) -> None:
    async with EventReceiver(url) as receiver:
        from datetime import datetime, timezone

        eta = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        async with (
            EventDispatcher(url, hostname=NODE) as dispatcher,
            worker_events(dispatcher, freq=60) as worker,
            worker.task(
                "id-2",
                "app.mul",
                args=[1, "a"],
                retries=3,
                root_id="root",
                parent_id="parent",
                eta=eta,
                expires="2030-01-02T04:00:00+00:00",
                kwargsrepr="{'password': '***'}",
            ),
        ):
            pass
        received = await next_event(receiver, "task-received")
        assert received["args"] == "[1, 'a']"
        assert received["kwargs"] == "{'password': '***'}"
        assert received["retries"] == 3
        assert (received["root_id"], received["parent_id"]) == ("root", "parent")
        assert received["eta"] == "2030-01-02T03:04:05+00:00"
        assert received["expires"] == "2030-01-02T04:00:00+00:00"
        succeeded = await next_event(receiver, "task-succeeded")
        assert succeeded["result"] == "None"


async def test_failed_task_reports_and_reraises(url: str) -> None:
    async with EventReceiver(url) as receiver:

        def explode() -> None:
            raise ValueError("boom")

        async with (
            EventDispatcher(url, hostname=NODE) as dispatcher,
            worker_events(dispatcher, freq=60) as worker,
        ):
            with pytest.raises(ValueError, match="boom"):
                async with worker.task("id-3", "app.fail") as task:
                    explode()
            assert task.state == "FAILURE"
            assert worker.active == 0
        failed = await next_event(receiver, "task-failed")
        assert wire_keys(failed)[4:7] == ["uuid", "exception", "traceback"]
        assert failed["uuid"] == "id-3"
        assert failed["exception"] == "ValueError('boom')"
        assert failed["traceback"].startswith("Traceback (most recent call last):")
        assert "in explode" in failed["traceback"]
        assert failed["traceback"].rstrip().endswith("ValueError: boom")


async def test_retry_reports_and_is_swallowed(url: str) -> None:
    async with EventReceiver(url) as receiver:

        def flaky() -> None:
            raise ConnectionError("try later")

        async with (
            EventDispatcher(url, hostname=NODE) as dispatcher,
            worker_events(dispatcher, freq=60) as worker,
        ):
            async with worker.task("id-4", "app.flaky") as task:
                try:
                    flaky()
                except ConnectionError as exc:
                    raise task.retry(exc) from exc
            assert task.state == "RETRY"
            # Retried with the same id: received again with retries=1, then succeeds.
            async with worker.task("id-4", "app.flaky", retries=1):
                pass
            assert worker.processed == 2
        retried = await next_event(receiver, "task-retried")
        assert wire_keys(retried)[4:7] == ["uuid", "exception", "traceback"]
        assert retried["exception"] == "ConnectionError('try later')"
        assert "in flaky" in retried["traceback"]
        again = await next_event(receiver, "task-received")
        assert again["retries"] == 1
        await next_event(receiver, "task-succeeded", uuid="id-4")


async def test_retry_without_an_exception(url: str) -> None:
    async with EventReceiver(url) as receiver:
        async with (
            EventDispatcher(url, hostname=NODE) as dispatcher,
            worker_events(dispatcher, freq=60) as worker,
            worker.task("id-5", "app.later") as task,
        ):
            raise task.retry()
        retried = await next_event(receiver, "task-retried")
        assert "TaskRetry" in retried["exception"]
        assert "TaskRetry" in retried["traceback"]


async def test_cancelled_task_is_revoked_terminated(url: str) -> None:
    async with EventReceiver(url) as receiver:
        async with (
            EventDispatcher(url, hostname=NODE) as dispatcher,
            worker_events(dispatcher, freq=60) as worker,
        ):
            with anyio.move_on_after(0.05) as scope:
                async with worker.task("id-6", "app.slow") as task:
                    await anyio.sleep_forever()
            assert scope.cancelled_caught
            assert task.state == "REVOKED"
            assert worker.active == 0
        revoked = await next_event(receiver, "task-revoked")
        assert wire_keys(revoked)[4:8] == ["uuid", "terminated", "signum", "expired"]
        assert (revoked["uuid"], revoked["terminated"], revoked["signum"], revoked["expired"]) == (
            "id-6",
            True,
            None,
            False,
        )
        assert not [
            e for e in await events_until(receiver, "worker-offline") if e.type == "task-failed"
        ]


async def test_task_cancelled_by_asyncio_is_revoked(url: str) -> None:
    async with EventReceiver(url) as receiver:
        async with (
            EventDispatcher(url, hostname=NODE) as dispatcher,
            worker_events(dispatcher, freq=60) as worker,
        ):
            started = asyncio.Event()

            async def job() -> None:
                async with worker.task("id-7", "app.slow"):
                    started.set()
                    await asyncio.sleep(3600)

            running = asyncio.create_task(job())
            await asyncio.wait_for(started.wait(), WAIT)
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
        revoked = await next_event(receiver, "task-revoked")
        assert revoked["uuid"] == "id-7" and revoked["terminated"] is True


async def test_revoked_and_rejected_without_running(url: str) -> None:
    async with EventReceiver(url) as receiver:
        async with (
            EventDispatcher(url, hostname=NODE) as dispatcher,
            worker_events(dispatcher, freq=60) as worker,
        ):
            await worker.revoked("id-8", expired=True)
            await worker.rejected("id-9", requeue=True)
            assert worker.processed == 0
        revoked = await next_event(receiver, "task-revoked")
        assert (revoked["uuid"], revoked["terminated"], revoked["signum"], revoked["expired"]) == (
            "id-8",
            False,
            None,
            True,
        )
        rejected = await next_event(receiver, "task-rejected")
        assert wire_keys(rejected)[4:6] == ["uuid", "requeue"]
        assert (rejected["uuid"], rejected["requeue"]) == ("id-9", True)


async def test_custom_task_event(url: str) -> None:
    async with EventReceiver(url) as receiver:
        async with (
            EventDispatcher(url, hostname=NODE) as dispatcher,
            worker_events(dispatcher, freq=60) as worker,
            worker.task("id-10", "app.long") as task,
        ):
            await task.send_event("task-progress", done=3, total=10)
        progress = await next_event(receiver, "task-progress")
        assert (progress["uuid"], progress["done"], progress["total"]) == ("id-10", 3, 10)


async def test_args_kwargs_result_are_truncated_like_celery(url: str) -> None:
    async with EventReceiver(url) as receiver:
        long_text = "x" * 5000
        async with (
            EventDispatcher(url, hostname=NODE) as dispatcher,
            worker_events(dispatcher, freq=60) as worker,
            worker.task(
                "id-11", "app.big", args=(long_text,), kwargs={"items": list(range(2000))}
            ) as task,
        ):
            task.set_result({"words": "word " * 1000})
        received = await next_event(receiver, "task-received")
        assert received["args"] == saferepr((long_text,), 1024)
        assert received["args"].startswith("('xxx") and received["args"].endswith("...',)")
        assert len(received["args"]) <= 1024 + 10
        assert received["kwargs"].endswith(", ...]}")
        assert len(received["kwargs"]) <= 1024 + 10
        succeeded = await next_event(receiver, "task-succeeded")
        assert succeeded["result"].startswith("{'words': 'word word")
        assert succeeded["result"].endswith("...'}")
        assert len(succeeded["result"]) <= 1024 + 10


async def test_task_events_filtered_but_counted_when_task_group_is_off(url: str) -> None:
    async with EventReceiver(url) as receiver:
        async with (
            EventDispatcher(url, hostname=NODE, groups={"worker"}) as dispatcher,
            worker_events(dispatcher, freq=60, control=False) as worker,
        ):
            async with worker.task("id-12", "app.quiet"):
                pass
            assert worker.processed == 1
        seen = await events_until(receiver, "worker-offline")
        assert [e.type for e in seen] == ["worker-online", "worker-offline"]
        assert seen[-1]["processed"] == 1


# -- saferepr -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "maxlen", "expected"),
    [
        ((2, 2), 1024, "(2, 2)"),
        ({}, 1024, "{}"),
        ((1,), 1024, "(1,)"),
        ({"a": [1, (2,)]}, 1024, "{'a': [1, (2,)]}"),
        ("it's", 1024, "'it\\'s'"),
        (b"raw", 1024, "b'raw'"),
        ({3}, 1024, "{3}"),
        (frozenset(), 1024, "frozenset()"),
        ([[[[1]]]], 1024, "[[[[...]]]]"),
        # Separators count against the budget and are kept whole: the cut can
        # leave ", , ..." (Celery's exact output).
        (list(range(100)), 10, "[0, 1, 2, , ...]"),
        ("one two three four", 10, "'one two...'"),
        ([[1, 2], [3, 4]], 3, "[[1..., ...]]"),
    ],
)
def test_saferepr(value: Any, maxlen: int, expected: str) -> None:
    assert saferepr(value, maxlen) == expected


def test_saferepr_never_raises() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    loop: list[Any] = [1]
    loop.append(loop)
    assert saferepr(Broken()).startswith("<Unrepresentable ")
    assert saferepr(loop).startswith("[1, <Recursion on list with id=")
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    assert saferepr(deep) == "[[[[...]]]]"
    assert saferepr(deep, maxlevels=None) == "<list nested too deeply to show>"


# -- remote control ---------------------------------------------------------


async def call(control: Control, method: str, arguments: Any = None, **kw: Any) -> list[Any]:
    """Replies as Celery's client returns them: ``[{node: payload}, ...]``."""
    kw.setdefault("timeout", WAIT)
    return [reply.as_dict() for reply in await control.broadcast(method, arguments, **kw)]


async def test_memory_broker_has_one_control_transport(url: str) -> None:
    broker = MemoryBroker(url)
    transport = broker.control()
    assert isinstance(transport, MemoryControl)
    assert isinstance(transport, ControlTransport)
    assert broker.control() is transport


async def test_ping_and_event_toggles(url: str) -> None:
    async with EventReceiver(url) as receiver, Control(url) as control:
        async with (
            EventDispatcher(url, hostname=NODE, groups={"worker"}) as dispatcher,
            worker_events(dispatcher, freq=60) as worker,
        ):
            assert worker.control_transport is not None
            with anyio.fail_after(WAIT):
                await worker.wait_control_ready()
            assert await call(control, "ping", limit=1) == [{NODE: {"ok": "pong"}}]
            assert await call(control, "enable_events", limit=1) == [
                {NODE: {"ok": "task events enabled"}}
            ]
            assert dispatcher.groups == {"worker", "task"}
            assert await call(control, "enable_events", limit=1) == [
                {NODE: {"ok": "task events already enabled"}}
            ]
            async with worker.task("id-13", "app.visible"):
                pass
            assert await call(control, "disable_events", limit=1) == [
                {NODE: {"ok": "task events disabled"}}
            ]
            assert dispatcher.groups == {"worker"}
            assert await call(control, "disable_events", limit=1) == [
                {NODE: {"ok": "task events already disabled"}}
            ]
            async with worker.task("id-14", "app.hidden"):
                pass
        seen = await events_until(receiver, "worker-offline")
        assert {e["uuid"] for e in seen if e.group == "task"} == {"id-13"}


async def test_disable_events_on_an_unrestricted_dispatcher(url: str) -> None:
    async with (
        Control(url) as control,
        EventDispatcher(url, hostname=NODE) as dispatcher,
        worker_events(dispatcher, freq=60),
    ):
        assert await call(control, "enable_events", limit=1) == [
            {NODE: {"ok": "task events already enabled"}}
        ]
        assert await call(control, "disable_events", limit=1) == [
            {NODE: {"ok": "task events disabled"}}
        ]
        assert dispatcher.groups == {"worker"}


async def test_heartbeat_command_sends_a_heartbeat_now(url: str) -> None:
    async with (
        EventReceiver(url) as receiver,
        Control(url) as control,
        EventDispatcher(url, hostname=NODE) as dispatcher,
        worker_events(dispatcher, freq=3600),
    ):
        await next_event(receiver, "worker-online")
        # Fire and forget, as receivers do on connect.
        assert await control.heartbeat(reply=False) == []
        beat = await next_event(receiver, "worker-heartbeat")
        assert wire_keys(beat) == HEARTBEAT_ORDER
        # With a reply wanted, Celery's handler answers null.
        assert await call(control, "heartbeat", limit=1) == [{NODE: None}]


async def test_destination_pattern_and_unknown_commands(url: str) -> None:
    async with (
        Control(url) as control,
        EventDispatcher(url, hostname=NODE) as d1,
        EventDispatcher(url, hostname="other@testhost") as d2,
        worker_events(d1, freq=60),
        worker_events(d2, freq=60),
    ):
        both = await call(control, "ping", limit=2)
        assert sorted(both, key=lambda r: next(iter(r))) == [
            {NODE: {"ok": "pong"}},
            {"other@testhost": {"ok": "pong"}},
        ]
        # With a destination, waiting ends when every named node answered:
        # with a long timeout this returns as soon as the one reply is in.
        with anyio.fail_after(WAIT):
            assert await call(control, "ping", destination=["other@testhost"], timeout=3600) == [
                {"other@testhost": {"ok": "pong"}}
            ]
        assert await call(control, "ping", pattern="asyncw@*", matcher="glob", limit=1) == [
            {NODE: {"ok": "pong"}}
        ]
        # A command the node does not implement is not answered.
        assert await call(control, "pool_restart", timeout=0.1) == []


async def test_replies_stream_one_at_a_time(url: str) -> None:
    release = anyio.Event()
    answered: list[str] = []

    async def slow(worker: WorkerInstrument) -> Any:
        if worker.hostname != NODE:
            await release.wait()
        answered.append(worker.hostname)
        return {"ok": worker.hostname}

    async with (
        Control(url) as control,
        EventDispatcher(url, hostname=NODE) as d1,
        EventDispatcher(url, hostname="slow@testhost") as d2,
        worker_events(d1, freq=60, control_handlers={"slow": slow}),
        worker_events(d2, freq=60, control_handlers={"slow": slow}),
    ):
        async with control.broadcast("slow", timeout=WAIT, limit=2) as replies:
            first = await replies.__anext__()
            # The first reply is in our hands while the other node still works.
            assert first.node == NODE and answered == [NODE]
            release.set()
            second = await replies.__anext__()
            assert second.node == "slow@testhost"
            with pytest.raises(StopAsyncIteration):
                await replies.__anext__()
        assert replies.received == 2 and replies.missing == []


async def test_replies_must_be_entered_and_validate_arguments(url: str) -> None:
    async with Control(url) as control:
        with pytest.raises(ClosedError, match="async with"):
            await control.ping().__anext__()
        with pytest.raises(ConfigurationError):
            control.ping(timeout=0)
        with pytest.raises(ConfigurationError):
            control.ping(limit=0)
        with pytest.raises(ConfigurationError):
            control.broadcast("ping", pattern="a*")
        with pytest.raises(ConfigurationError):
            control.broadcast("ping", destination=[1])  # type: ignore[list-item]


async def test_duplicate_node_name_is_refused(url: str) -> None:
    async with EventDispatcher(url, hostname=NODE) as dispatcher:
        transport = dispatcher.broker.control()
        pidbox = await transport.consume_control(NODE)
        try:
            with pytest.raises(DuplicateNodeError):
                await transport.consume_control(NODE)
            # Another adapter on the same hub is the same broker.
            with pytest.raises(DuplicateNodeError):
                await MemoryBroker(url).control().consume_control(NODE)
        finally:
            await pidbox.aclose()
        # Freed on close.
        again = await transport.consume_control(NODE)
        await again.aclose()


async def test_duplicate_replies_are_flagged(url: str) -> None:
    async with Control(url) as control:
        transport = control.broker.control()
        pidboxes = [await transport.consume_control(n) for n in ("a@h", "b@h")]

        async def answer(pidbox: Any) -> None:
            async for request in pidbox:
                await transport.reply(request, "same@h", {"ok": "pong"})

        try:
            async with anyio.create_task_group() as tg:
                for pidbox in pidboxes:
                    tg.start_soon(answer, pidbox)
                replies = await control.ping(limit=2)
                tg.cancel_scope.cancel()
        finally:
            for pidbox in pidboxes:
                await pidbox.aclose()
    assert [(r.node, r.duplicate) for r in replies] == [("same@h", False), ("same@h", True)]


async def test_a_broker_without_remote_control(url: str) -> None:
    class Plain:
        def __init__(self, inner: MemoryBroker) -> None:
            self.inner = inner
            self.url = inner.url
            self.connect = inner.connect
            self.publish = inner.publish
            self.subscribe = inner.subscribe
            self.aclose = inner.aclose

        def control(self) -> Any:
            raise NotSupportedError("no remote control here")

    broker = Plain(MemoryBroker(url))
    async with (
        EventDispatcher(broker, hostname=NODE) as dispatcher,  # type: ignore[arg-type]
        worker_events(dispatcher, freq=60) as worker,
    ):
        assert worker.control_transport is None
    with pytest.raises(NotSupportedError):
        async with Control(broker):  # type: ignore[arg-type]
            pass


async def test_custom_and_removed_control_handlers(url: str) -> None:
    async def queue_depth(worker: WorkerInstrument, *, queue: str) -> Any:
        return {"ok": {"queue": queue, "depth": 7, "node": worker.hostname}}

    async with (
        Control(url) as control,
        EventDispatcher(url, hostname=NODE) as dispatcher,
        worker_events(
            dispatcher, freq=60, control_handlers={"queue_depth": queue_depth, "ping": None}
        ),
    ):
        assert await call(control, "queue_depth", {"queue": "jobs"}, limit=1) == [
            {NODE: {"ok": {"queue": "jobs", "depth": 7, "node": NODE}}}
        ]
        assert await call(control, "ping", timeout=0.1) == []
        # A handler called with the wrong arguments answers {"error": ...}, as Celery does.
        [failed] = await control.broadcast("queue_depth", {"wrong": 1}, timeout=WAIT, limit=1)
        assert not failed.ok and failed.error is not None
        assert "'wrong'" in failed.error


async def test_control_false_stays_silent(url: str) -> None:
    async with (
        Control(url) as control,
        EventDispatcher(url, hostname=NODE) as dispatcher,
        worker_events(dispatcher, freq=60, control=False) as worker,
    ):
        assert worker.control_transport is None
        assert await call(control, "ping", timeout=0.1) == []


async def test_pidbox_released_on_exit(url: str) -> None:
    async with Control(url) as control, EventDispatcher(url, hostname=NODE) as dispatcher:
        async with worker_events(dispatcher, freq=60):
            pass
        assert await call(control, "ping", timeout=0.1) == []
        # The node name is free again.
        async with worker_events(dispatcher, freq=60):
            assert await call(control, "ping", limit=1) == [{NODE: {"ok": "pong"}}]


async def test_revoke_terminate_cancels_the_running_task(url: str) -> None:
    started = anyio.Event()
    async with EventReceiver(url) as receiver, Control(url) as control:
        async with (
            EventDispatcher(url, hostname=NODE) as dispatcher,
            worker_events(dispatcher, freq=60) as worker,
        ):

            async def run_task() -> None:
                async with worker.task("id-long", "app.long") as scope:
                    started.set()
                    await anyio.sleep_forever()
                assert scope.state == "REVOKED"

            async with anyio.create_task_group() as tg:
                tg.start_soon(run_task)
                with anyio.fail_after(WAIT):
                    await started.wait()
                assert await call(control, "query_task", {"ids": ["id-long", "nope"]}, limit=1) == [
                    {NODE: {"id-long": ["active", worker.running_tasks[0].info()]}}
                ]
                # Without terminate the running task goes on, as with Celery.
                assert await call(control, "revoke", {"task_id": "id-other"}, limit=1) == [
                    {NODE: {"ok": "tasks id-other flagged as revoked"}}
                ]
                assert worker.active == 1
                replies = await control.revoke("id-long", terminate=True, signal="SIGKILL", limit=1)
                assert [r.as_dict() for r in replies] == [{NODE: {"ok": "terminate: id-long"}}]
            assert worker.active == 0
            assert worker.is_revoked("id-long") and worker.is_revoked("id-other")
            assert await call(control, "revoked", limit=1) == [{NODE: ["id-long", "id-other"]}]
        revoked = await next_event(receiver, "task-revoked", uuid="id-long")
        assert revoked["terminated"] is True and revoked["signum"] == 9


async def test_shutdown_leaves_the_block_cleanly(url: str) -> None:
    async with EventReceiver(url) as receiver, Control(url) as control:
        async with EventDispatcher(url, hostname=NODE) as dispatcher:
            with anyio.fail_after(WAIT):
                async with worker_events(dispatcher, freq=60) as worker:
                    await worker.wait_control_ready()
                    # Celery workers do not reply to shutdown.
                    assert await control.shutdown(timeout=0.2) == []
                    await anyio.sleep_forever()
            assert worker.shutdown_requested
        await next_event(receiver, "worker-offline")


async def test_outside_cancellation_still_propagates(url: str) -> None:
    async with EventDispatcher(url, hostname=NODE) as dispatcher:
        with anyio.move_on_after(0.05) as scope:
            async with worker_events(dispatcher, freq=60):
                await anyio.sleep_forever()
            pytest.fail("the cancellation was swallowed")  # pragma: no cover
        assert scope.cancelled_caught


async def test_succeeded_is_sent_even_when_cancelled_while_leaving(url: str) -> None:
    async with EventReceiver(url) as receiver:
        async with (
            EventDispatcher(url, hostname=NODE) as dispatcher,
            worker_events(dispatcher, freq=60) as worker,
        ):
            with anyio.CancelScope() as outer:
                async with worker.task("id-done", "app.t"):
                    # The block is done; a cancellation arrives as the scope reports it.
                    outer.cancel()
        succeeded = await next_event(receiver, "task-succeeded", uuid="id-done")
        assert succeeded["uuid"] == "id-done"


async def test_sigterm_style_request_shutdown(url: str) -> None:
    async with EventDispatcher(url, hostname=NODE) as dispatcher:
        with anyio.fail_after(WAIT):
            async with worker_events(dispatcher, freq=60) as worker:
                worker.request_shutdown()
                await anyio.sleep_forever()
        assert worker.shutdown_requested


def test_control_request_parsing() -> None:
    request = ControlRequest.from_message(
        {
            "method": "ping",
            "arguments": {},
            "destination": None,
            "pattern": None,
            "matcher": None,
            "ticket": "t-1",
            "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "k"},
        },
        {"clock": 3, "expires": 0},
    )
    assert request.method == "ping" and request.wants_reply and request.ticket == "t-1"
    assert request.clock == 3 and request.expires is None
    assert request.addressed_to("anyone@host")
    assert (
        ControlRequest.from_message({"method": "ping", "destination": ["a@h"]}).addressed_to("b@h")
        is False
    )
    assert ControlRequest.from_message(
        {"method": "ping", "pattern": "^a@", "matcher": "pcre"}
    ).addressed_to("a@h")
    with pytest.raises(ValueError):
        ControlRequest.from_message(["not", "a", "request"])
    with pytest.raises(ValueError):
        ControlRequest.from_message({"method": "ping", "arguments": [1]})


async def test_inspection_commands(url: str) -> None:
    async with (
        Control(url) as control,
        EventDispatcher(url, hostname=NODE) as dispatcher,
        worker_events(dispatcher, freq=60, task_names=["app.declared"]) as worker,
    ):
        async with worker.task("id-15", "app.first"):
            pass
        async with worker.task("id-16", "app.add", args=(1, 2)):
            [active] = await control.active(safe=True, limit=1)
            [running] = active.payload
            assert running["id"] == "id-16" and running["name"] == "app.add"
            assert running["args"] == "(1, 2)" and running["hostname"] == NODE
            assert running["worker_pid"] == dispatcher.pid
            [stats] = await control.stats(limit=1)
        assert stats.payload["total"] == {"app.first": 1, "app.add": 1}
        assert stats.payload["pid"] == dispatcher.pid
        assert stats.payload["pool"]["running"] == 1
        assert "broker" in stats.payload and "rusage" in stats.payload
        assert await call(control, "registered", limit=1) == [
            {NODE: ["app.add", "app.declared", "app.first"]}
        ]
        assert await call(control, "active", limit=1) == [{NODE: []}]
        for empty in ("reserved", "scheduled", "revoked", "active_queues"):
            assert await call(control, empty, limit=1) == [{NODE: []}]
        assert await call(control, "conf", limit=1) == [{NODE: {}}]
        [clock] = await control.clock(limit=1)
        assert clock.payload["clock"] >= 1
        assert worker.totals == {"app.first": 1, "app.add": 1}


async def test_example_queue_worker_runs(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/asyncio_queue_worker.py reports its jobs in every state."""
    import argparse
    import importlib.util
    import sys
    from pathlib import Path

    import aiocelev

    if not hasattr(aiocelev, "worker_events"):
        pytest.skip("aiocelev does not export worker_events yet")
    path = Path(__file__).resolve().parents[1] / "examples" / "asyncio_queue_worker.py"
    spec = importlib.util.spec_from_file_location("asyncio_queue_worker", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, example)  # dataclasses look the module up
    spec.loader.exec_module(example)
    args = argparse.Namespace(
        broker=url, name=NODE, concurrency=4, rate=100.0, freq=0.2, time_limit=0.3, duration=2.0
    )
    types: set[str] = set()
    async with EventReceiver(url) as receiver:
        await example.main(args)
        with anyio.fail_after(WAIT):
            async for event in receiver:
                types.add(event.type)
                if event.type == "worker-offline":
                    break
    assert {"worker-online", "task-received", "task-started", "task-succeeded"} <= types
    assert {"task-failed", "task-revoked"} <= types


class FlakyTransport(MemoryControl):
    """The memory transport, failing the way a lost broker does."""

    def __init__(self, url: str, *, fail_consume: int, fail_iteration: int) -> None:
        super().__init__(MemoryBroker(url))
        self.fail_consume = fail_consume
        self.fail_iteration = fail_iteration
        self.consumes = 0

    async def consume_pidbox(self, nodename: str) -> Any:
        from aiocelev._exceptions import BrokerConnectionError

        self.consumes += 1
        if self.fail_consume:
            self.fail_consume -= 1
            raise BrokerConnectionError("broker away")
        pidbox = await super().consume_pidbox(nodename)
        if self.fail_iteration:
            self.fail_iteration -= 1
            return _BrokenPidbox(pidbox)
        return pidbox


class _BrokenPidbox:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.closed = False

    def __aiter__(self) -> _BrokenPidbox:
        return self

    async def __anext__(self) -> ControlRequest:
        from aiocelev._exceptions import BrokerConnectionError

        raise BrokerConnectionError("connection lost")

    async def aclose(self) -> None:
        self.closed = True
        await self.inner.aclose()


@pytest.mark.parametrize(("fail_consume", "fail_iteration"), [(2, 0), (0, 1), (1, 1)])
async def test_control_consumer_recovers(url: str, fail_consume: int, fail_iteration: int) -> None:
    transport = FlakyTransport(url, fail_consume=fail_consume, fail_iteration=fail_iteration)
    assert isinstance(transport, ControlTransport)
    async with (
        EventReceiver(url) as receiver,
        EventDispatcher(url, hostname=NODE) as dispatcher,
        worker_events(dispatcher, freq=60, control=transport) as worker,
    ):
        # The node is online even while its pidbox is unavailable.
        await next_event(receiver, "worker-online")
        with anyio.fail_after(WAIT):
            while True:
                replies = await transport.broadcast("ping", timeout=0.2, limit=1)
                if replies:
                    break
        assert replies == [ControlReply(NODE, {"ok": "pong"})]
        assert worker.control_transport is transport
    assert transport.consumes == fail_consume + fail_iteration + 1


async def test_offline_does_not_hang_when_the_broker_is_gone(url: str) -> None:
    from aiocelev.brokers.memory import memory_hub

    hub = memory_hub(url)
    with anyio.fail_after(WAIT):
        async with (
            EventDispatcher(url, hostname=NODE, close_timeout=0.1) as dispatcher,
            worker_events(dispatcher, freq=60, shield_timeout=0.1) as worker,
        ):
            async with worker.task("id-17", "app.t"):
                pass
            hub.available = False
    assert dispatcher.statistics().dropped > 0  # offline could not be delivered
    hub.available = True
