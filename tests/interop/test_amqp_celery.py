"""Wire compatibility with real Celery over RabbitMQ, in both directions.

* a real ``celery worker -E`` -> aiocelev (raw subscription and EventReceiver);
* aiocelev's EventDispatcher -> Celery's own ``EventReceiver`` + ``State``;
* ``enable_events`` sent with ``AmqpBroker.control().broadcast`` switches task
  events on in a real worker started without ``-E``;
* Celery's own ``app.control`` / ``inspect()`` reach a node served through
  :class:`~aiocelev.brokers.amqp.AmqpControl`.

Every worker gets its own node name and task queue, and events are filtered by
node name, so concurrent runs on the same RabbitMQ do not interfere.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from aiocelev import EventDispatcher, EventReceiver
from aiocelev.brokers.amqp import AmqpBroker, AmqpControl, from_url

from ..brokers._rabbitmq import delete_exchanges
from ._common import (
    CELERY,
    ROOT,
    TASK_TYPES,
    WORKER_FIELDS,
    Worker,
    assert_celery_routing,
    call,
    celery_state_probe,
    celery_worker as _celery_worker,
    collect_until_offline,
    events_by_type,
    outcomes_seen,
    send_outcome_tasks,
    send_received,
    send_task_states,
    stop_process,
    typed_until_offline,
    wait_for,
)

pytestmark = [pytest.mark.amqp, pytest.mark.celery]


def celery_worker(
    broker_url: str, *, events: bool = True, env: dict[str, str] | None = None
) -> AbstractAsyncContextManager[Worker]:
    """A real Celery worker on RabbitMQ; its durable task queue is deleted afterwards."""
    return _celery_worker(broker_url, _delete_queue, events=events, env=env)


@asynccontextmanager
async def private_exchanges(broker_url: str, *names: str) -> AsyncIterator[None]:
    """Delete the test's own exchanges afterwards (pidbox exchanges are not auto-delete)."""
    try:
        yield
    finally:
        await delete_exchanges(broker_url, *names)


async def _delete_queue(broker_url: str, name: str) -> None:
    """Remove the worker's (durable) task queue so runs leave nothing behind."""
    import aio_pika

    with anyio.move_on_after(10):
        conn = await aio_pika.connect(from_url(broker_url)._endpoints[0].url)
        async with conn:
            channel = await conn.channel()
            await channel.queue_delete(name)


def _client(broker_url: str) -> Any:
    from celery import Celery

    return Celery("aiocelev_interop_client", broker=broker_url)


async def test_real_worker_events_reach_aiocelev(amqp_url: str) -> None:
    """Every event type a real ``celery worker -E`` sends arrives, with Celery's fields."""
    raw: list[tuple[str, dict[str, Any]]] = []
    typed: list[Any] = []
    # A private event exchange: the shared celeryev carries other people's
    # events (and, in some test runs, deliberately malformed messages).
    exchange = f"aiocelev-test-ev-{uuid.uuid4().hex[:8]}"
    env = {"AIOCELEV_CELERY_EVENT_EXCHANGE": exchange}
    async with (
        private_exchanges(amqp_url, exchange),
        from_url(amqp_url, exchange=exchange) as broker,
    ):
        sub = await broker.subscribe(["#"])
        client = _client(amqp_url)
        async with (
            EventReceiver(broker) as receiver,
            celery_worker(amqp_url, env=env) as worker,
        ):
            node = worker.nodename

            def types() -> set[str]:
                return {e["type"] for _, e in raw}

            with anyio.fail_after(90):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(partial(collect_until_offline, sub, node, raw, check_header=True))
                    tg.start_soon(typed_until_offline, receiver, node, typed)
                    await wait_for(lambda: "worker-online" in types(), 30, "worker-online", worker)

                    q = worker.queue
                    ok, bad, retried = await send_outcome_tasks(client, q)
                    revoked = str(uuid.uuid4())
                    replies = await call(
                        client.control.revoke, revoked, destination=[node], reply=True, timeout=10
                    )
                    assert replies and node in replies[0]
                    await call(
                        client.send_task, "interop.add", args=(1, 1), queue=q, task_id=revoked
                    )

                    await wait_for(
                        lambda: outcomes_seen(raw, ok, bad, retried, revoked),
                        40, "the task events", worker,
                    )  # fmt: skip
                    await anyio.to_thread.run_sync(worker.stop)
                    # both collectors end on worker-offline

    by_type = events_by_type(raw)
    assert {"worker-online", "worker-heartbeat", "worker-offline"} | TASK_TYPES <= set(by_type)

    # routing: worker events one per message, task events batched on task.multi
    assert_celery_routing(raw)

    online = by_type["worker-online"][0]
    assert online["sw_ident"] == "py-celery" and online["freq"] == 2.0
    beat = by_type["worker-heartbeat"][0]
    assert isinstance(beat["active"], int) and isinstance(beat["processed"], int)
    assert len(beat["loadavg"]) == 3
    for event in (e for _, e in raw):
        assert isinstance(event["clock"], int) and isinstance(event["timestamp"], float)
        assert event["pid"] == online["pid"]

    received = {e["uuid"]: e for e in by_type["task-received"]}
    assert received[ok]["name"] == "interop.add"
    assert received[ok]["args"] == "(2, 3)" and received[ok]["kwargs"] == "{}"
    succeeded = {e["uuid"]: e for e in by_type["task-succeeded"]}
    assert succeeded[ok]["result"] == "5"
    assert succeeded[retried]["result"] == "9"
    assert isinstance(succeeded[ok]["runtime"], float)
    failed = {e["uuid"]: e for e in by_type["task-failed"]}
    assert "ValueError" in failed[bad]["exception"] and "bad value 7" in failed[bad]["exception"]
    assert "Traceback" in failed[bad]["traceback"]
    retry = {e["uuid"]: e for e in by_type["task-retried"]}
    assert "try again" in retry[retried]["exception"]
    assert revoked in {e["uuid"] for e in by_type["task-revoked"]}

    # the EventReceiver saw the same events, typed, in the same order
    assert [e.type for e in typed] == [e["type"] for _, e in raw]
    typed_succeeded = [e for e in typed if e.type == "task-succeeded" and e.uuid == ok]
    assert typed_succeeded and typed_succeeded[0].result == "5"


async def test_aiocelev_events_understood_by_celery_state(amqp_url: str) -> None:
    """Celery's own receiver and State turn aiocelev's events into task states and a live worker."""
    node = f"aiocelev-{uuid.uuid4().hex[:10]}@pub"
    ids = {state: str(uuid.uuid4()) for state in ("SUCCESS", "FAILURE", "RETRY", "REVOKED")}
    exchange = f"aiocelev-test-ev-{uuid.uuid4().hex[:8]}"  # away from other traffic
    async with (
        private_exchanges(amqp_url, exchange),
        celery_state_probe(amqp_url, node, exchange) as report,
    ):
        async with EventDispatcher(
            amqp_url, hostname=node, broker_options={"exchange": exchange}
        ) as dispatcher:
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
    assert seen["alive_at_end"] is False  # worker-offline
    assert {
        "task-received",
        "task-started",
        "task-succeeded",
        "task-failed",
        "task-retried",
        "task-revoked",
        "worker-online",
        "worker-heartbeat",
        "worker-offline",
    } <= set(seen["types"])


async def test_broadcast_enable_events_turns_on_task_events(amqp_url: str) -> None:
    """A worker started without -E sends task events after our enable_events."""
    collected: list[tuple[str, dict[str, Any]]] = []
    # A private control namespace: a Flower running elsewhere on this broker
    # would otherwise enable task events on our worker before we do.
    namespace = f"aiocelev-test-{uuid.uuid4().hex[:8]}"
    exchange = f"aiocelev-test-ev-{uuid.uuid4().hex[:8]}"  # private event exchange too
    cleanup = (f"{namespace}.pidbox", f"reply.{namespace}.pidbox", exchange)
    async with (
        private_exchanges(amqp_url, *cleanup),
        from_url(amqp_url, control_exchange=namespace, exchange=exchange) as broker,
    ):
        assert isinstance(broker, AmqpBroker)
        sub = await broker.subscribe(["#"])
        client = _client(amqp_url)
        client.conf.control_exchange = namespace
        env = {
            "AIOCELEV_CELERY_CONTROL_EXCHANGE": namespace,
            "AIOCELEV_CELERY_EVENT_EXCHANGE": exchange,
        }
        async with celery_worker(amqp_url, events=False, env=env) as worker:
            node = worker.nodename
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    partial(collect_until_offline, sub, node, collected, check_header=True)
                )
                await wait_for(
                    lambda: any(e["type"] == "worker-online" for _, e in collected),
                    30,
                    "worker-online",
                    worker,
                )
                control = broker.control()
                replies = await control.broadcast("enable_events", destination=[node], timeout=10)
                assert [r.as_dict() for r in replies] == [{node: {"ok": "task events enabled"}}]
                again = await control.broadcast("enable_events", destination=[node], timeout=10)
                assert [r.as_dict() for r in again] == [
                    {node: {"ok": "task events already enabled"}}
                ]
                pong = await control.broadcast("ping", destination=[node], timeout=10)
                assert [(r.node, r.payload, r.duplicate) for r in pong] == [
                    (node, {"ok": "pong"}, False)
                ]

                task_id = (
                    await call(client.send_task, "interop.add", args=(4, 4), queue=worker.queue)
                ).id
                await wait_for(
                    lambda: (
                        ("task-succeeded", task_id)
                        in {(e["type"], e.get("uuid")) for _, e in collected}
                    ),
                    30,
                    "task-succeeded after enable_events",
                    worker,
                )
                await control.broadcast("disable_events", destination=[node], reply=False)
                await anyio.to_thread.run_sync(worker.stop)
    types = [e["type"] for _, e in collected]
    assert "task-received" in types and "task-started" in types
    assert types[-1] == "worker-offline"


async def test_celery_control_reaches_an_aiocelev_node(amqp_url: str) -> None:
    """Celery's own ``app.control.ping()`` and ``inspect().stats()`` get replies from a
    node consuming its pidbox through ``AmqpBroker.control()``; so does our client."""
    node = f"aiocelev-{uuid.uuid4().hex[:10]}@node"
    handled: list[str] = []
    stats = {"pid": os.getpid(), "total": {}, "broker": {"transport": "amqp"}}
    namespace = f"aiocelev-test-{uuid.uuid4().hex[:8]}"  # away from other users' broadcasts
    cleanup = (f"{namespace}.pidbox", f"reply.{namespace}.pidbox")
    async with (
        private_exchanges(amqp_url, *cleanup),
        from_url(amqp_url, control_exchange=namespace) as broker,
        from_url(amqp_url, control_exchange=namespace) as client_broker,
    ):
        control = broker.control()
        assert isinstance(control, AmqpControl)
        pidbox = await control.consume_control(node)

        async def serve() -> None:
            async for request in pidbox:
                if not request.addressed_to(node):
                    continue
                handled.append(request.method)
                payload: Any = stats if request.method == "stats" else {"ok": "pong"}
                await control.reply(request, node, payload)

        client = _client(amqp_url)
        client.conf.control_exchange = namespace
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            replies = await call(client.control.ping, destination=[node], timeout=10)
            assert replies == [{node: {"ok": "pong"}}]
            inspected = await call(
                lambda: client.control.inspect(destination=[node], timeout=10).stats()
            )
            assert inspected == {node: stats}
            # a broadcast to another node is not ours
            await call(client.control.broadcast, "enable_events", destination=["someone@else"])
            # and our own client reaches the node too, from another connection
            ours = await client_broker.control().broadcast("ping", destination=[node], timeout=10)
            assert [r.as_dict() for r in ours] == [{node: {"ok": "pong"}}]
            tg.cancel_scope.cancel()
        await pidbox.aclose()
    assert handled == ["ping", "stats", "ping"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_json(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:  # loopback only
        return json.loads(response.read())


async def _beat_until(
    dispatcher: EventDispatcher, ready: Callable[[], bool], timeout: float
) -> None:
    """Send heartbeats until *ready()* (a monitor needs time to bind its queue)."""
    with anyio.fail_after(timeout):
        while True:
            await dispatcher.send("worker-heartbeat", **WORKER_FIELDS)
            await dispatcher.flush()
            if await anyio.to_thread.run_sync(ready):
                return
            await anyio.sleep(0.3)


async def test_flower_shows_aiocelev_worker_and_tasks(amqp_url: str, tmp_path: Path) -> None:
    """A real Flower process shows an aiocelev-published worker and its task states."""
    pytest.importorskip("flower")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    node = f"aiocelev-{uuid.uuid4().hex[:10]}@flower"
    ids = {state: str(uuid.uuid4()) for state in ("SUCCESS", "FAILURE")}
    exchange = f"aiocelev-test-ev-{uuid.uuid4().hex[:8]}"  # away from other traffic
    env = {
        **os.environ,
        "AIOCELEV_CELERY_BROKER": amqp_url,
        "FLOWER_UNAUTHENTICATED_API": "true",
        "AIOCELEV_CELERY_EVENT_EXCHANGE": exchange,
    }
    log = (tmp_path / "flower.log").open("wb")
    proc = subprocess.Popen(
        [
            CELERY,
            "-A",
            "tests.interop.celery_app",
            "flower",
            "--address=127.0.0.1",
            f"--port={port}",
            f"--db={tmp_path / 'flower.db'}",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def workers() -> dict[str, Any]:
            try:
                data = _http_json(f"{base}/workers?json=1")["data"]
            except OSError:
                return {}
            return {w["hostname"]: w for w in data}

        async with EventDispatcher(
            amqp_url, hostname=node, broker_options={"exchange": exchange}
        ) as dispatcher:
            await dispatcher.send("worker-online", **WORKER_FIELDS)
            await _beat_until(dispatcher, lambda: node in workers(), 60)
            assert workers()[node]["status"] is True  # alive while heartbeats flow
            await send_task_states(dispatcher, ids)
            await dispatcher.flush()

            def task_states() -> dict[str, str]:
                try:
                    tasks = _http_json(f"{base}/api/tasks")
                except OSError:
                    return {}
                return {tid: info.get("state") for tid, info in tasks.items()}

            with anyio.fail_after(20):
                while {ids["SUCCESS"], ids["FAILURE"]} - set(
                    await anyio.to_thread.run_sync(task_states)
                ):
                    await anyio.sleep(0.2)
            states = await anyio.to_thread.run_sync(task_states)
            assert states[ids["SUCCESS"]] == "SUCCESS"
            assert states[ids["FAILURE"]] == "FAILURE"
            info = await anyio.to_thread.run_sync(
                lambda: _http_json(f"{base}/api/task/info/{ids['SUCCESS']}")
            )
            assert info["result"] == "5" and info["worker"] == node and info["name"] == "demo.add"
            await dispatcher.send("worker-offline", **WORKER_FIELDS)
        with anyio.fail_after(20):
            while (await anyio.to_thread.run_sync(workers))[node]["status"] is not False:
                await anyio.sleep(0.2)
    finally:
        stop_process(proc)
        log.close()
        await delete_exchanges(amqp_url, exchange)


async def test_celery_events_dump_prints_aiocelev_events(amqp_url: str, tmp_path: Path) -> None:
    """``celery events --dump`` prints what aiocelev publishes."""
    node = f"aiocelev-{uuid.uuid4().hex[:10]}@dump"
    task_id = str(uuid.uuid4())
    out_path = tmp_path / "dump.txt"
    out = out_path.open("wb")
    exchange = f"aiocelev-test-ev-{uuid.uuid4().hex[:8]}"  # away from other traffic
    env = {
        **os.environ,
        "AIOCELEV_CELERY_BROKER": amqp_url,
        "AIOCELEV_CELERY_EVENT_EXCHANGE": exchange,
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [CELERY, "-A", "tests.interop.celery_app", "events", "--dump"],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        async with EventDispatcher(
            amqp_url, hostname=node, broker_options={"exchange": exchange}
        ) as dispatcher:
            await _beat_until(dispatcher, lambda: node in out_path.read_text(errors="replace"), 60)
            await send_received(dispatcher, task_id)
            await dispatcher.send("task-succeeded", uuid=task_id, result="5", runtime=0.01)
            await dispatcher.flush()
            with anyio.fail_after(20):
                while not any(
                    line.startswith(f"{node} [") and "task succeeded" in line
                    for line in out_path.read_text(errors="replace").splitlines()
                ):
                    await anyio.sleep(0.1)
    finally:
        stop_process(proc)
        out.close()
        await delete_exchanges(amqp_url, exchange)
    text = out_path.read_text(errors="replace")
    assert f"{node} [" in text and "heartbeat" in text
    assert f"demo.add({task_id}) args=(2, 3) kwargs={{}}" in text
    succeeded = [
        line
        for line in text.splitlines()
        if line.startswith(f"{node} [") and "task succeeded" in line
    ]
    assert succeeded
    assert f"demo.add({task_id})" in succeeded[0] and "result=5" in succeeded[0]
