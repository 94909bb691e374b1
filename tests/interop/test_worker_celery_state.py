"""Celery's own monitoring code sees an instrumented asyncio worker as a live Celery worker.

* in process, over memory://: the instrumentation's events, decoded by aiocelev,
  fed to ``celery.events.state.State``;
* over real RabbitMQ and Redis: Celery's own kombu ``EventReceiver`` (in a
  thread) feeds ``State``, and Celery's ``app.control`` client pings the node and
  enables its task events (what ``celery inspect ping`` and Flower do);
* :func:`aiocelev._saferepr.saferepr` renders values exactly as Celery's.

Node names, task ids and control namespaces are unique per run, and events
are filtered by node name, so concurrent users of the brokers do not interfere.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import pytest
from hypothesis import given, settings, strategies as st

from aiocelev import EventDispatcher, EventReceiver
from aiocelev._saferepr import saferepr
from aiocelev._worker import WorkerInstrument, worker_events

from .._helpers import wait_until
from ..brokers._rabbitmq import delete_exchanges

celery = pytest.importorskip("celery")

from celery import Celery  # noqa: E402
from celery.events.state import State  # noqa: E402
from celery.utils.saferepr import saferepr as celery_saferepr  # noqa: E402

pytestmark = pytest.mark.celery

WAIT = 20.0


async def run_tasks(worker: WorkerInstrument, ids: dict[str, str]) -> None:
    """One task ending in each state Celery knows from a worker."""
    async with worker.task(ids["SUCCESS"], "app.add", args=(2, 2)) as task:
        await worker.heartbeat()  # seen with active=1
        task.set_result(4)

    try:
        async with worker.task(ids["FAILURE"], "app.fail"):
            raise KeyError("missing")
    except KeyError:
        pass

    async with worker.task(ids["RETRY"], "app.flaky") as task:
        raise task.retry(ConnectionError("later"))

    with anyio.move_on_after(0.05):
        async with worker.task(ids["REVOKED"], "app.slow"):
            await anyio.sleep_forever()

    await worker.revoked(ids["NEVER_RAN"], expired=True)


def new_ids() -> dict[str, str]:
    return {
        name: str(uuid.uuid4()) for name in ("SUCCESS", "FAILURE", "RETRY", "REVOKED", "NEVER_RAN")
    }


def check_state(state: State, node: str, ids: dict[str, str]) -> None:
    tasks = state.tasks
    assert tasks[ids["SUCCESS"]].state == "SUCCESS"
    assert tasks[ids["SUCCESS"]].result == "4"
    assert tasks[ids["SUCCESS"]].name == "app.add"
    assert tasks[ids["SUCCESS"]].args == "(2, 2)"
    assert tasks[ids["SUCCESS"]].worker.hostname == node
    assert tasks[ids["FAILURE"]].state == "FAILURE"
    assert tasks[ids["FAILURE"]].exception == "KeyError('missing')"
    assert "KeyError: 'missing'" in tasks[ids["FAILURE"]].traceback
    assert tasks[ids["RETRY"]].state == "RETRY"
    assert tasks[ids["RETRY"]].exception == "ConnectionError('later')"
    assert tasks[ids["REVOKED"]].state == "REVOKED"
    assert tasks[ids["NEVER_RAN"]].state == "REVOKED"
    worker = state.workers[node]
    assert worker.sw_ident == "aiocelev"
    assert worker.processed == 4  # every task but the one revoked before it ran
    assert worker.active == 0
    assert not worker.alive  # worker-offline was the last word


# -- in process -----------------------------------------------------------------


async def test_celery_state_from_in_process_events() -> None:
    url = f"memory://worker-state-{uuid.uuid4().hex[:8]}"
    node = "asyncw@memory"
    ids = new_ids()
    state = State()
    alive_at: dict[str, bool] = {}
    active_seen: list[int] = []
    async with EventReceiver(url) as receiver:
        async with (
            EventDispatcher(url, hostname=node) as dispatcher,
            worker_events(dispatcher, freq=0.1) as worker,
        ):
            await run_tasks(worker, ids)
        with anyio.fail_after(WAIT):
            async for event in receiver:
                state.event(event.to_dict())
                if event.type in ("worker-online", "worker-heartbeat"):
                    alive_at[event.type] = state.workers[node].alive
                    active_seen.append(state.workers[node].active)
                if event.type == "worker-offline":
                    break
    assert alive_at == {"worker-online": True, "worker-heartbeat": True}
    assert 1 in active_seen
    check_state(state, node, ids)


# -- real brokers -----------------------------------------------------------------


class CeleryMonitor:
    """Celery's EventReceiver + State in a thread, keeping only one node's events."""

    def __init__(self, app: Celery, node: str) -> None:
        self.app = app
        self.node = node
        #: Events from this node only prove the subscription live (not kept).
        self.probe_node = f"probe-{node}"
        self.subscribed = threading.Event()
        self.state = State()
        self.types: list[str] = []
        self.alive_at_heartbeat: list[bool] = []
        self.active_at_heartbeat: list[int] = []
        self.ready = threading.Event()
        self.offline = threading.Event()
        self._receiver: Any = None
        self.error: BaseException | None = None

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("hostname") != self.node:
            if event.get("hostname") == self.probe_node:
                self.subscribed.set()
            return
        self.state.event(event)
        self.types.append(event["type"])
        if event["type"] == "worker-heartbeat":
            worker = self.state.workers[self.node]
            self.alive_at_heartbeat.append(worker.alive)
            self.active_at_heartbeat.append(worker.active)
        if event["type"] == "worker-offline":
            self.offline.set()

    def run(self) -> None:
        try:
            with self.app.connection_for_read() as conn:
                receiver = self.app.events.Receiver(conn, handlers={"*": self._on_event})
                receiver.on_consume_ready = lambda *_a, **_k: self.ready.set()
                self._receiver = receiver
                for _ in receiver.consume(limit=None, timeout=WAIT * 3, wakeup=False):
                    if self.offline.is_set():
                        break
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.ready.set()

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True


async def wait_for(flag: threading.Event, what: str) -> None:
    """Wait until *flag* (set by Celery's receiver thread) is set; fail after ``WAIT`` seconds."""
    await wait_until(flag.is_set, timeout=WAIT, what=what)


@asynccontextmanager
async def celery_monitor(app: Celery, node: str, url: str) -> AsyncIterator[CeleryMonitor]:
    """Celery's receiver running, and proven subscribed: kombu PSUBSCRIBEs on Redis
    only at its first poll, after ``on_consume_ready``, so events sent before that
    are lost.  Heartbeats from a probe node are sent until the receiver sees one."""
    monitor = CeleryMonitor(app, node)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: anyio.to_thread.run_sync(monitor.run, abandon_on_cancel=True))
        try:
            await wait_for(monitor.ready, "Celery's receiver consuming")
            assert monitor.error is None, monitor.error
            async with EventDispatcher(url, hostname=monitor.probe_node) as probe:
                with anyio.fail_after(WAIT):
                    while not monitor.subscribed.is_set():
                        await probe.send("worker-heartbeat", freq=2.0, active=0, processed=0)
                        await probe.flush()
                        await anyio.sleep(0.05)
            assert monitor.error is None, monitor.error
            yield monitor
        finally:
            monitor.stop()


@pytest.mark.parametrize(
    "kind",
    [pytest.param("amqp", marks=pytest.mark.amqp), pytest.param("redis", marks=pytest.mark.redis)],
)
async def test_celery_sees_a_live_worker_and_task_states(
    kind: str, request: pytest.FixtureRequest
) -> None:
    url: str = request.getfixturevalue(f"{kind}_url")
    tag = uuid.uuid4().hex[:10]
    node = f"asyncw-{tag}@interop"
    namespace = f"aiocelev-worker-{tag}"  # private pidbox: no stray Flower enables our events
    ids = new_ids()
    app = Celery("aiocelev_worker_interop", broker=url)
    app.conf.control_exchange = namespace
    app.conf.broker_connection_retry_on_startup = False
    call = anyio.to_thread.run_sync
    try:
        async with celery_monitor(app, node, url) as monitor:
            # No -E: only worker events until a monitor enables task events.
            async with (
                EventDispatcher(
                    url,
                    hostname=node,
                    groups={"worker"},
                    broker_options={"control_exchange": namespace},
                ) as dispatcher,
                worker_events(dispatcher, freq=0.5) as worker,
            ):
                with anyio.fail_after(WAIT):
                    await worker.wait_control_ready()
                pong = await call(lambda: app.control.ping(destination=[node], timeout=5))
                assert pong == [{node: {"ok": "pong"}}]
                enabled = await call(
                    lambda: app.control.enable_events(destination=[node], reply=True, timeout=5)
                )
                assert enabled == [{node: {"ok": "task events enabled"}}]
                assert dispatcher.groups == {"worker", "task"}
                await run_tasks(worker, ids)
            await wait_for(monitor.offline, "worker-offline seen by Celery")
    finally:
        if kind == "amqp":
            await delete_exchanges(url, f"{namespace}.pidbox", f"reply.{namespace}.pidbox")
    assert monitor.error is None, monitor.error
    assert monitor.types[0] == "worker-online"
    assert monitor.types[-1] == "worker-offline"
    assert monitor.alive_at_heartbeat and all(monitor.alive_at_heartbeat)
    assert 1 in monitor.active_at_heartbeat
    check_state(monitor.state, node, ids)


# -- saferepr -------------------------------------------------------------------

_scalars = (
    st.integers()
    | st.floats(allow_nan=False)
    | st.booleans()
    | st.none()
    | st.text(max_size=60)
    | st.binary(max_size=20)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=8)
        | st.tuples(inner)
        | st.tuples(inner, inner, inner)
        | st.dictionaries(st.text(max_size=10) | st.integers(), inner, max_size=6)
        | st.frozensets(st.integers(), max_size=5)
        | st.sets(st.text(max_size=5), max_size=5)
    ),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(value=_values, maxlen=st.sampled_from([None, 1024, 200, 50, 17, 5, 1]))
def test_saferepr_matches_celery(value: Any, maxlen: int | None) -> None:
    assert saferepr(value, maxlen) == celery_saferepr(value, maxlen)


def test_saferepr_matches_celery_on_large_values() -> None:
    values: list[Any] = [
        ("x" * 5000,),
        {"items": list(range(5000))},
        [{"a": [1, 2, 3] * 200}] * 20,
        "word " * 1000,
        [[[[["deep"]]]]],
        b"\xff" * 3000,
    ]
    for value in values:
        assert saferepr(value, 1024) == celery_saferepr(value, 1024)
