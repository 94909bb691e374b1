"""Wire compatibility with real Celery over Redis pub/sub, in both directions.

* a real ``celery worker -E`` on Redis -> aiocelev (raw subscription and EventReceiver);
* aiocelev's EventDispatcher on Redis -> Celery's own ``EventReceiver`` + ``State``;
* ``enable_events`` sent with ``RedisBroker.control().broadcast`` switches task events on
  in a real worker started without ``-E``; the replies come back through kombu's reply list;
* Celery's own control client talks to a pidbox consumed by aiocelev.

Every worker gets its own node name and task queue, events are filtered by node name
and broadcasts name their destination, so concurrent runs on the shared Redis do not
interfere.  Redis pub/sub keeps nothing for late subscribers, and kombu subscribes
lazily (on its first poll), so the tests wait until the other side answers instead of
assuming it listens as soon as it started.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import pytest

from aiocelev import EventDispatcher, EventReceiver
from aiocelev._codec import decode_message
from aiocelev.brokers.redis import RedisBroker, from_url

from ._common import (
    TASK_TYPES,
    WORKER_FIELDS,
    Worker,
    assert_celery_routing,
    call,
    celery_state_probe,
    celery_worker,
    collect_until_offline,
    events_by_type,
    outcomes_seen,
    send_outcome_tasks,
    send_task_states,
    typed_until_offline,
    wait_for,
)

pytestmark = [pytest.mark.redis, pytest.mark.celery, pytest.mark.timeout(120)]


async def _forget_queue(broker_url: str, queue: str) -> None:
    """Delete the list and binding tables kombu left for a test's task queue."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(broker_url, protocol=2)
    try:
        await client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    finally:
        await client.aclose()


@asynccontextmanager
async def redis_worker(broker_url: str, *, events: bool = True) -> AsyncIterator[Worker]:
    async with celery_worker(
        broker_url, _forget_queue, events=events, prefix="aiocelev-redis"
    ) as worker:
        yield worker


def _client(broker_url: str) -> Any:
    from celery import Celery

    app = Celery("aiocelev_redis_client", broker=broker_url, set_as_current=False)
    app.conf.task_send_sent_event = True
    return app


async def _until_pong(broker: RedisBroker, worker: Worker, timeout: float = 30) -> None:
    """Ping until the worker answers: its pidbox subscription is then live."""
    node = worker.nodename
    try:
        with anyio.fail_after(timeout):
            while True:
                replies = await broker.control().broadcast("ping", destination=[node], timeout=0.5)
                if replies:
                    assert [r.as_dict() for r in replies] == [{node: {"ok": "pong"}}]
                    return
    except TimeoutError:
        raise AssertionError(f"worker never answered ping; output:\n{worker.output()}") from None


async def test_real_worker_events_reach_aiocelev(redis_url: str) -> None:
    """Every event type a real ``celery worker -E`` sends on Redis arrives, with Celery's fields."""
    raw: list[tuple[str, dict[str, Any]]] = []
    typed: list[Any] = []
    async with from_url(redis_url) as broker:
        sub = await broker.subscribe(["#"])
        client = _client(redis_url)
        async with EventReceiver(broker) as receiver, redis_worker(redis_url) as worker:
            node = worker.nodename

            def types() -> set[str]:
                return {e["type"] for _, e in raw}

            with anyio.fail_after(100):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(collect_until_offline, sub, node, raw)
                    tg.start_soon(typed_until_offline, receiver, node, typed)
                    await wait_for(lambda: "worker-online" in types(), 30, "worker-online", worker)
                    await _until_pong(broker, worker)

                    q = worker.queue
                    ok, bad, retried = await send_outcome_tasks(client, q)
                    revoked = str(uuid.uuid4())
                    # revoke through our own broadcast (reply collected from kombu's reply list)
                    replies = await broker.control().broadcast(
                        "revoke", {"task_id": revoked, "terminate": False, "signal": None},
                        destination=[node], timeout=10,
                    )  # fmt: skip
                    assert replies and replies[0].node == node
                    await call(
                        client.send_task, "interop.add", args=(1, 1), queue=q, task_id=revoked
                    )

                    await wait_for(
                        lambda: outcomes_seen(raw, ok, bad, retried, revoked),
                        40, "the task events", worker,
                    )  # fmt: skip
                    await anyio.to_thread.run_sync(worker.stop)

    by_type = events_by_type(raw)
    assert {"worker-online", "worker-heartbeat", "worker-offline"} | TASK_TYPES <= set(by_type)
    assert_celery_routing(raw)  # routing keys come from the channel names
    online = by_type["worker-online"][0]
    assert online["sw_ident"] == "py-celery" and online["freq"] == 2.0
    succeeded = {e["uuid"]: e for e in by_type["task-succeeded"]}
    assert succeeded[ok]["result"] == "5" and succeeded[retried]["result"] == "9"
    failed = {e["uuid"]: e for e in by_type["task-failed"]}
    assert "bad value 7" in failed[bad]["exception"]
    received = {e["uuid"]: e for e in by_type["task-received"]}
    assert received[ok]["name"] == "interop.add" and received[ok]["args"] == "(2, 3)"
    assert [e.type for e in typed] == [e["type"] for _, e in raw]


async def test_task_sent_events_from_a_celery_client(redis_url: str) -> None:
    """``task-sent`` from a Celery client (no worker needed) arrives on task.sent."""
    async with from_url(redis_url) as broker:
        sub = await broker.subscribe(["task.sent"])
        client = _client(redis_url)
        queue = f"aiocelev-nobody-{uuid.uuid4().hex[:8]}"
        task_id = (await call(client.send_task, "interop.add", args=(1, 2), queue=queue)).id
        with anyio.fail_after(10):
            async for message in sub:
                events, _ = decode_message(message)
                if events and events[0].get("uuid") == task_id:
                    break
        assert message.routing_key == "task.sent"
        assert events[0]["type"] == "task-sent" and events[0]["name"] == "interop.add"
        await _forget_queue(redis_url, queue)  # the never-consumed task message


async def test_aiocelev_events_understood_by_celery_state(redis_url: str) -> None:
    """Celery's own receiver and State (on Redis) turn aiocelev's events into task states."""
    node = f"aiocelev-{uuid.uuid4().hex[:10]}@redis-pub"
    ids = {state: str(uuid.uuid4()) for state in ("SUCCESS", "FAILURE", "RETRY", "REVOKED")}
    async with celery_state_probe(redis_url, node) as report:
        async with EventDispatcher(redis_url, hostname=node) as dispatcher:
            # kombu PSUBSCRIBEs on its first poll, just after READY: a moment of
            # anonymous traffic (ignored by the probe) covers that window
            warmup = EventDispatcher(dispatcher._broker, hostname=f"warmup-{node}")
            async with warmup:
                for _ in range(10):
                    await warmup.send("worker-heartbeat", **WORKER_FIELDS)
                    await warmup.flush()
                    await anyio.sleep(0.1)
            await dispatcher.send("worker-online", **WORKER_FIELDS)
            await dispatcher.send("worker-heartbeat", **WORKER_FIELDS)
            await send_task_states(dispatcher, ids)
            await dispatcher.send("worker-heartbeat", **{**WORKER_FIELDS, "processed": 3})
            await dispatcher.flush()
            await dispatcher.send("worker-offline", **WORKER_FIELDS)
        seen = await report()

    assert seen["tasks"] == {task_id: state for state, task_id in ids.items()}
    assert seen["results"][ids["SUCCESS"]] == "5"
    assert seen["alive_at_heartbeat"] == [True, True]
    assert seen["alive_at_end"] is False
    assert TASK_TYPES | {"worker-online", "worker-heartbeat", "worker-offline"} <= set(
        seen["types"]
    )


async def test_broadcast_enable_events_turns_on_task_events(redis_url: str) -> None:
    """A worker started without -E sends task events after our enable_events; replies arrive."""
    collected: list[tuple[str, dict[str, Any]]] = []
    async with from_url(redis_url) as broker:
        sub = await broker.subscribe(["#"])
        client = _client(redis_url)
        async with redis_worker(redis_url, events=False) as worker:
            node = worker.nodename
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect_until_offline, sub, node, collected)
                await wait_for(
                    lambda: any(e["type"] == "worker-online" for _, e in collected),
                    30, "worker-online", worker,
                )  # fmt: skip
                await _until_pong(broker, worker)
                control = broker.control()
                replies = await control.broadcast("enable_events", destination=[node], timeout=10)
                assert [r.as_dict() for r in replies] == [{node: {"ok": "task events enabled"}}]
                again = await control.broadcast("enable_events", destination=[node], timeout=10)
                assert [r.as_dict() for r in again] == [
                    {node: {"ok": "task events already enabled"}}
                ]

                task_id = (
                    await call(client.send_task, "interop.add", args=(4, 4), queue=worker.queue)
                ).id
                await wait_for(
                    lambda: ("task-succeeded", task_id) in {(e["type"], e.get("uuid")) for _, e in collected},
                    30, "task-succeeded after enable_events", worker,
                )  # fmt: skip
                await broker.control().broadcast("disable_events", destination=[node], reply=False)
                await anyio.to_thread.run_sync(worker.stop)
    types = [e["type"] for _, e in collected]
    assert "task-received" in types and "task-started" in types
    assert types[-1] == "worker-offline"


async def test_celery_control_reaches_an_aiocelev_node(redis_url: str) -> None:
    """Celery's own ``app.control`` client talks to a pidbox consumed on Redis by aiocelev."""
    node = f"aiocelev-{uuid.uuid4().hex[:10]}@redis-node"
    handled: list[str] = []
    async with from_url(redis_url) as broker:
        control = broker.control()
        pidbox = await control.consume_control(node)

        async def serve() -> None:
            async for request in pidbox:
                if not request.addressed_to(node):
                    continue
                handled.append(request.method)
                if request.wants_reply:
                    await control.reply(request, node, {"ok": "pong"})

        client = _client(redis_url)
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            replies = await call(client.control.ping, destination=[node], timeout=10)
            assert replies == [{node: {"ok": "pong"}}]
            await call(client.control.broadcast, "enable_events", destination=["someone@else"])
            ours = await control.broadcast("ping", destination=[node], timeout=10)
            assert [r.as_dict() for r in ours] == [{node: {"ok": "pong"}}]
            tg.cancel_scope.cancel()
        await pidbox.aclose()
    assert handled == ["ping", "ping"]


async def test_worker_events_node_answers_celery_control(redis_url: str) -> None:
    """A ``worker_events`` node on Redis answers ``celery inspect ping`` and ``enable_events``."""
    from aiocelev._worker import worker_events

    node = f"aiocelev-{uuid.uuid4().hex[:10]}@redis-worker"
    client = _client(redis_url)
    async with (
        from_url(redis_url) as broker,
        EventDispatcher(broker, hostname=node, groups={"worker"}) as dispatcher,
        worker_events(dispatcher) as worker,
    ):
        with anyio.fail_after(10):
            await worker.wait_control_ready()
        pong = await call(client.control.ping, destination=[node], timeout=10)
        assert pong == [{node: {"ok": "pong"}}]
        replies = await call(
            client.control.broadcast, "enable_events", destination=[node], reply=True, timeout=10
        )
        assert replies == [{node: {"ok": "task events enabled"}}]
        assert dispatcher.groups is not None and "task" in dispatcher.groups
