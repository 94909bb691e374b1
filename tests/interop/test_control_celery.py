"""``aiocelev.Control`` against real Celery 5.7 workers, on RabbitMQ and on Redis.

Per broker, two workers in a namespace of their own (``control_exchange`` and
``event_exchange`` unique per run, so no one else's worker answers and ours
hear no one else): ``a`` (prefork, one process: it can terminate a task and
grow its pool) and ``b`` (solo pool: busy with a task, it cannot answer until
the task ends).  ``shutdown`` gets a third worker of its own.

* every command returns the worker's reply (the shapes ``celery inspect`` /
  ``celery control`` print);
* ``revoke(terminate=True)`` kills a running task (``task-revoked`` with
  ``terminated: true``, gone from ``active``);
* ``rate_limit`` shows in ``registered``; ``pool_grow``/``pool_shrink`` change
  ``stats()["pool"]["processes"]``; ``shutdown`` stops the worker;
* replies stream: the first arrives while the other node is still busy;
  ``destination=[one]`` stops at that node's answer, long before the timeout;
* what aiocelev puts on the broker has the envelope of the Celery captures.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from aiocelev import Control, ControlReply, EventReceiver

from ..conftest import AMQP_URL, REDIS_URL, require_broker
from ._control_helpers import ControlCluster, ControlWorker

celery = pytest.importorskip("celery")

pytestmark = [pytest.mark.celery, pytest.mark.timeout(180)]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "celery-5.7.0"
WAIT = 30.0


class Nodes:
    """The module's cluster on one broker and its two long-lived workers."""

    def __init__(self, cluster: ControlCluster, a: ControlWorker, b: ControlWorker) -> None:
        self.cluster = cluster
        self.a = a
        self.b = b
        self.client = cluster.celery_client()

    @property
    def kind(self) -> str:
        return self.cluster.kind

    def control(self, timeout: float = 2.0) -> Control:
        return Control(
            self.cluster.broker_url, timeout=timeout, control_exchange=self.cluster.namespace
        )

    def receiver(self) -> EventReceiver:
        return EventReceiver(
            self.cluster.broker_url,
            routing_keys=["task.#"],
            broker_options={"exchange": self.cluster.event_exchange},
        )

    async def send(self, worker: ControlWorker, name: str, *args: Any) -> str:
        """Send a task to *worker*'s queue with Celery's client; its id."""
        result = await anyio.to_thread.run_sync(
            lambda: self.client.send_task(name, args=args, queue=worker.queue)
        )
        return str(result.id)


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("amqp", marks=pytest.mark.amqp),
        pytest.param("redis", marks=pytest.mark.redis),
    ],
)
def nodes(request: pytest.FixtureRequest) -> Iterator[Nodes]:
    kind: str = request.param
    require_broker(kind)
    cluster = ControlCluster(kind, AMQP_URL if kind == "amqp" else REDIS_URL)
    try:
        a = cluster.worker("a", pool="prefork", concurrency=1)
        b = cluster.worker("b", pool="solo")
        a.start()
        b.start()
        cluster.wait_ready(a, b)
        found = Nodes(cluster, a, b)
        try:
            yield found
        finally:
            found.client.close()
    finally:
        cluster.cleanup()


async def one(replies: Any, node: str) -> ControlReply:
    """The single reply of *node* in *replies*."""
    got = await replies
    assert [r.node for r in got] == [node], got
    reply: ControlReply = got[0]
    assert not reply.duplicate
    return reply


async def wait_until(
    check: Callable[[], Any], what: str, worker: ControlWorker, timeout: float = WAIT
) -> Any:
    """Call the coroutine function *check* until it returns something true."""
    try:
        with anyio.fail_after(timeout):
            while True:
                value = await check()
                if value:
                    return value
                await anyio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}:\n{worker.output()}") from None


@asynccontextmanager
async def collecting(receiver: EventReceiver, into: list[Any]) -> AsyncIterator[None]:
    """Keep every event *receiver* gets in *into* while the block runs."""

    async def pump() -> None:
        async for event in receiver:
            into.append(event)

    async with anyio.create_task_group() as tg:
        tg.start_soon(pump)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


# -- every command -------------------------------------------------------------


def _inspect_cases(queue: str) -> dict[str, tuple[Callable[[Control, list[str]], Any], Any]]:
    """Command → (call, check of the payload)."""
    unknown = str(uuid.uuid4())

    def is_list(payload: Any) -> bool:
        return isinstance(payload, list)

    return {
        "ping": (lambda c, d: c.ping(destination=d), lambda p: p == {"ok": "pong"}),
        "active": (lambda c, d: c.active(destination=d), is_list),
        "active_safe": (lambda c, d: c.active(safe=True, destination=d), is_list),
        "reserved": (lambda c, d: c.reserved(destination=d), is_list),
        "scheduled": (lambda c, d: c.scheduled(destination=d), lambda p: p == []),
        "registered": (
            lambda c, d: c.registered(destination=d),
            lambda p: {"interop.add", "interop.slow"} <= set(p),
        ),
        "registered_items": (
            lambda c, d: c.registered("rate_limit", "time_limit", destination=d),
            lambda p: is_list(p) and any(s.startswith("interop.add") for s in p),
        ),
        "stats": (
            lambda c, d: c.stats(destination=d),
            lambda p: {"pool", "broker", "total", "pid", "clock"} <= set(p),
        ),
        "active_queues": (
            lambda c, d: c.active_queues(destination=d),
            lambda p: queue in [q["name"] for q in p],
        ),
        "revoked": (lambda c, d: c.revoked(destination=d), is_list),
        "conf": (
            lambda c, d: c.conf(destination=d),
            lambda p: p.get("control_exchange", "").startswith("aiocelev-ctl-"),
        ),
        "conf_defaults": (
            lambda c, d: c.conf(with_defaults=True, destination=d),
            lambda p: "worker_prefetch_multiplier" in p and "broker_heartbeat" in p,
        ),
        "query_task": (
            lambda c, d: c.query_task(unknown, destination=d),
            lambda p: p == {},
        ),
        "report": (
            lambda c, d: c.report(destination=d),
            lambda p: "celery:5.7" in p["ok"],
        ),
        "clock": (
            lambda c, d: c.clock(destination=d),
            lambda p: isinstance(p["clock"], int) and p["clock"] > 0,
        ),
        "revoke": (
            lambda c, d: c.revoke(unknown, destination=d),
            lambda p: p == {"ok": f"tasks {{'{unknown}'}} flagged as revoked"},
        ),
        "revoke_by_stamped_headers": (
            lambda c, d: c.revoke_by_stamped_headers({"stamp": "x"}, destination=d),
            lambda p: "flagged as revoked" in p["ok"],
        ),
        "terminate": (
            lambda c, d: c.terminate(unknown, destination=d),
            lambda p: p == {"ok": "terminate: tasks unknown"},
        ),
        "time_limit": (
            lambda c, d: c.time_limit("interop.add", soft=30, hard=60, destination=d),
            lambda p: p == {"ok": "time limits set successfully"},
        ),
        "autoscale": (
            lambda c, d: c.autoscale(3, 1, destination=d),
            lambda p: "Autoscale not enabled" in p["error"],
        ),
        "heartbeat": (lambda c, d: c.heartbeat(destination=d), lambda p: p is None),
        "enable_events": (
            lambda c, d: c.enable_events(destination=d),
            lambda p: p["ok"] in ("task events enabled", "task events already enabled"),
        ),
    }


CASES = sorted(_inspect_cases("q"))


@pytest.mark.parametrize("command", CASES)
async def test_command_gets_the_worker_reply(nodes: Nodes, command: str) -> None:
    call, check = _inspect_cases(nodes.a.queue)[command]
    async with nodes.control() as control:
        reply = await one(call(control, [nodes.a.nodename]), nodes.a.nodename)
    assert check(reply.payload), (command, reply.payload)
    assert reply.ok == (command != "autoscale")


async def _queue_names_until(
    control: Control, node: str, done: Callable[[list[str]], bool], limit: float = 10.0
) -> list[str]:
    """``active_queues`` of *node*, asked until *done* holds for its names (or *limit* passes).

    The worker answers ``add_consumer`` / ``cancel_consumer`` at once and changes
    its consumers on its next loop iteration (``call_soon``): a query right after
    the reply may still see the old set.
    """
    names: list[str] = []
    with anyio.move_on_after(limit):
        while True:
            queues = (await one(control.active_queues(destination=[node]), node)).payload
            names = [q["name"] for q in queues]
            if done(names):
                break
            await anyio.sleep(0.1)
    return names


async def test_consumers_and_events_commands(nodes: Nodes) -> None:
    """add_consumer / cancel_consumer change active_queues; events go off and on again."""
    node, extra = nodes.a.nodename, f"{nodes.a.queue}-extra"
    nodes.cluster.extra_queues.append(extra)
    d = [node]
    async with nodes.control() as control:
        reply = await one(control.add_consumer(extra, destination=d), node)
        assert reply.payload == {"ok": f"add consumer {extra}"}
        assert extra in await _queue_names_until(control, node, lambda names: extra in names)
        reply = await one(control.cancel_consumer(extra, destination=d), node)
        assert reply.payload == {"ok": f"no longer consuming from {extra}"}
        names = await _queue_names_until(control, node, lambda names: extra not in names)
        assert extra not in names

        reply = await one(control.disable_events(destination=d), node)
        # A worker started with -E has no restricted event groups: Celery says
        # "already disabled" then, and "already enabled".
        assert reply.payload["ok"] in ("task events disabled", "task events already disabled")
        reply = await one(control.enable_events(destination=d), node)
        assert reply.payload["ok"] in ("task events enabled", "task events already enabled")


async def test_generic_broadcast_with_pattern(nodes: Nodes) -> None:
    """``broadcast`` by name, nodes chosen by a glob: only ``a`` answers."""
    async with nodes.control(timeout=1.0) as control:
        got = await control.broadcast(
            "ping", pattern=f"{nodes.cluster.namespace}-a@*", matcher="glob"
        )
    assert [(r.node, r.payload) for r in got] == [(nodes.a.nodename, {"ok": "pong"})]


async def test_broadcast_reaches_every_worker(nodes: Nodes) -> None:
    async with nodes.control(timeout=1.5) as control:
        got = await control.ping()
    assert sorted(r.node for r in got) == sorted([nodes.a.nodename, nodes.b.nodename])
    assert all(r.payload == {"ok": "pong"} for r in got)


async def test_no_reply_wanted(nodes: Nodes) -> None:
    """``reply=False`` returns at once with nothing; the command still runs."""
    unknown = str(uuid.uuid4())
    node = nodes.a.nodename
    async with nodes.control() as control:
        assert await control.revoke(unknown, destination=[node], reply=False) == []

        async def revoked() -> bool:
            got = await one(control.revoked(destination=[node]), node)
            return unknown in got.payload

        await wait_until(revoked, "the id in the revoked list", nodes.a)


# -- effects on the worker ----------------------------------------------------------


async def test_revoke_terminate_kills_a_running_task(nodes: Nodes) -> None:
    node = nodes.a.nodename
    events: list[Any] = []
    async with nodes.control() as control, nodes.receiver() as receiver:
        async with collecting(receiver, events):
            task_id = await nodes.send(nodes.a, "interop.slow", 120)

            async def started() -> bool:
                return any(e.type == "task-started" and e.uuid == task_id for e in events)

            await wait_until(started, "task-started", nodes.a)
            active = (await one(control.active(destination=[node]), node)).payload
            assert [t["id"] for t in active] == [task_id]

            reply = await one(control.revoke(task_id, terminate=True, destination=[node]), node)
            assert reply.payload == {"ok": f"terminate: {task_id}"}

            async def revoked_event() -> Any:
                for e in events:
                    if e.type == "task-revoked" and e.uuid == task_id:
                        return e
                return None

            event = await wait_until(revoked_event, "task-revoked", nodes.a)
        assert event.fields["terminated"] is True
        assert event.fields["signum"] in (15, "15")
        assert event.fields["expired"] is False
        assert not any(e.type == "task-succeeded" and e.uuid == task_id for e in events)

        async def gone() -> bool:
            active = (await one(control.active(destination=[node]), node)).payload
            return task_id not in [t["id"] for t in active]

        await wait_until(gone, "the task to leave active", nodes.a)
        revoked = (await one(control.revoked(destination=[node]), node)).payload
        assert task_id in revoked


async def test_rate_limit_changes_the_task(nodes: Nodes) -> None:
    node = nodes.a.nodename
    async with nodes.control() as control:
        try:
            reply = await one(control.rate_limit("interop.add", "7/m", destination=[node]), node)
            assert reply.payload == {"ok": "new rate limit set successfully"}
            names = (await one(control.registered("rate_limit", destination=[node]), node)).payload
            assert "interop.add [rate_limit=7/m]" in names
        finally:
            reply = await one(control.rate_limit("interop.add", 0, destination=[node]), node)
        assert reply.payload == {"ok": "rate limit disabled successfully"}
        names = (await one(control.registered("rate_limit", destination=[node]), node)).payload
        assert "interop.add [rate_limit=0]" in names


async def test_pool_grow_and_shrink(nodes: Nodes) -> None:
    node = nodes.a.nodename
    async with nodes.control() as control:

        async def processes() -> list[int]:
            stats = (await one(control.stats(destination=[node]), node)).payload
            found: list[int] = stats["pool"]["processes"]
            return found

        before = len(await processes())
        assert before >= 1
        reply = await one(control.pool_grow(destination=[node]), node)
        assert reply.payload == {"ok": "pool will grow"}

        async def grown() -> bool:
            return len(await processes()) == before + 1

        await wait_until(grown, "one more pool process", nodes.a)
        reply = await one(control.pool_shrink(1, destination=[node]), node)
        assert reply.payload == {"ok": "pool will shrink"}

        async def shrunk() -> bool:
            return len(await processes()) == before

        await wait_until(shrunk, "the pool back to its size", nodes.a)


async def test_shutdown_stops_the_worker(nodes: Nodes) -> None:
    worker = nodes.cluster.worker("shutdown", pool="solo")
    worker.start()
    try:
        await anyio.to_thread.run_sync(lambda: nodes.cluster.wait_ready(worker))
        async with nodes.control(timeout=1.0) as control:
            # Celery workers do not answer shutdown.
            assert await control.shutdown(destination=[worker.nodename]) == []

            async def exited() -> bool:
                return worker.exited()

            await wait_until(exited, "the worker to exit", worker)
            assert worker.proc is not None and worker.proc.returncode == 0, worker.output()
            assert await control.ping(destination=[worker.nodename]) == []
    finally:
        await anyio.to_thread.run_sync(worker.close)


# -- streaming --------------------------------------------------------------------


async def test_replies_stream_while_another_node_is_busy(nodes: Nodes, tmp_path: Path) -> None:
    """``a`` answers at once; ``b`` (solo pool) is held in a task the test ends only
    after ``a``'s reply came out of the stream: the reply streamed, and the stream
    ends at ``b``'s reply, before the timeout."""
    a, b = nodes.a.nodename, nodes.b.nodename
    timeout = 60.0
    log: list[str] = []
    marker = tmp_path / "hold"
    started, release = Path(f"{marker}.started"), Path(f"{marker}.release")
    try:
        async with nodes.control() as control:
            await nodes.send(nodes.b, "interop.hold", str(marker), WAIT)

            async def b_busy() -> bool:
                return started.exists()

            await wait_until(b_busy, "b's task to start", nodes.b)

            async def timeout_marker() -> None:
                await anyio.sleep(timeout)
                log.append("timeout")

            async with anyio.create_task_group() as tg:
                tg.start_soon(timeout_marker)
                async with control.ping(destination=[a, b], timeout=timeout) as stream:
                    async for reply in stream:
                        log.append(f"reply:{reply.node}")
                        if reply.node == a:
                            assert stream.missing == [b]
                            assert stream.received == 1
                            release.touch()  # only now can b answer
                    log.append("end")
                    assert stream.missing == []
                tg.cancel_scope.cancel()
    finally:
        release.touch()
    assert log == [f"reply:{a}", f"reply:{b}", "end"]


async def test_destination_of_one_stops_at_its_answer(nodes: Nodes) -> None:
    timeout = 60.0
    log: list[str] = []
    async with nodes.control() as control:

        async def timeout_marker() -> None:
            await anyio.sleep(timeout)
            log.append("timeout")

        async with anyio.create_task_group() as tg:
            tg.start_soon(timeout_marker)
            got = await control.stats(destination=[nodes.b.nodename], timeout=timeout)
            log.append("returned")
            tg.cancel_scope.cancel()
    assert [r.node for r in got] == [nodes.b.nodename]
    assert log == ["returned"]


# -- the request on the wire ------------------------------------------------------------


def _fixture_request(kind: str, name: str) -> dict[str, Any]:
    document = json.loads((FIXTURES / f"control-{kind}.json").read_text())
    [capture] = [c for c in document["captures"] if c["name"] == name]
    request: dict[str, Any] = capture["request"]
    return request


async def test_request_envelope_matches_celery(nodes: Nodes) -> None:
    """aiocelev's ping, as seen on the broker, has the envelope Celery's has."""
    expected = _fixture_request(nodes.kind, "control.ping")
    ns = nodes.cluster.namespace
    node = nodes.a.nodename
    if nodes.kind == "amqp":
        seen = await _amqp_request(nodes, lambda c: c.ping(destination=[node]))
        assert seen["exchange"] == f"{ns}.pidbox"
        assert seen["routing_key"] == ""
        assert seen["properties"] == expected["properties"]
        assert list(seen["headers"]) == list(expected["headers"])
    else:
        seen = await _redis_request(nodes, lambda c: c.ping(destination=[node]))
        envelope = json.loads(seen["envelope"])
        want = json.loads(expected["envelope"])
        assert list(envelope) == list(want)
        assert envelope["content-type"] == want["content-type"]
        assert envelope["content-encoding"] == want["content-encoding"]
        assert list(envelope["headers"]) == list(want["headers"])
        props, want_props = envelope["properties"], want["properties"]
        assert list(props) == list(want_props)
        assert props["delivery_info"] == {"exchange": f"{ns}.pidbox", "routing_key": ""}
        for key in ("delivery_mode", "priority", "body_encoding"):
            assert props[key] == want_props[key], key
        seen["body"] = base64.b64decode(envelope["body"]).decode()
    body = json.loads(seen["body"])
    want_body = json.loads(expected["body"])
    assert list(body) == list(want_body)
    assert body["method"] == "ping"
    assert body["destination"] == [node]
    assert body["reply_to"]["exchange"] == f"reply.{ns}.pidbox"


async def _amqp_request(nodes: Nodes, call: Callable[[Control], Any]) -> dict[str, Any]:
    import aio_pika

    conn = await aio_pika.connect(nodes.cluster.broker_url)
    async with conn:
        channel = await conn.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(f"{nodes.cluster.namespace}.pidbox", routing_key="")
        async with nodes.control() as control:
            await call(control)

        async def got() -> Any:
            return await queue.get(no_ack=True, fail=False)

        message = await wait_until(got, "the request on our queue", nodes.a)
        return {
            "exchange": message.exchange,
            "routing_key": message.routing_key,
            "properties": {
                "content_encoding": message.content_encoding,
                "content_type": message.content_type,
                "delivery_mode": int(message.delivery_mode),
                "priority": message.priority,
            },
            "headers": dict(message.headers),
            "body": message.body.decode(),
        }


async def _redis_request(nodes: Nodes, call: Callable[[Control], Any]) -> dict[str, Any]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(nodes.cluster.broker_url, protocol=2)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(f"/0.{nodes.cluster.namespace}.pidbox")
        async with nodes.control() as control:
            await call(control)

        async def got() -> Any:
            return await pubsub.get_message(timeout=0.5)

        message = await wait_until(got, "the request on the pidbox channel", nodes.a)
        return {"envelope": message["data"].decode()}
    finally:
        await pubsub.aclose()
        await client.aclose()
