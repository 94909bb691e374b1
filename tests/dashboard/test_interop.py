"""The dashboard against a real ``celery worker -E`` on RabbitMQ and on Redis.

The API and ``/metrics`` must see the worker and the outcome of its tasks; the
worker page's inspect data comes from the worker's remote-control replies.
Unreachable brokers skip locally and fail with CI=true (the conftest fixtures).
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..interop._common import Worker, call, stop_process
from .conftest import eventually, running_dashboard

pytestmark = [pytest.mark.celery, pytest.mark.timeout(120)]


async def _forget_queue(url: str, queue: str) -> None:
    if url.startswith("redis"):
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url, protocol=2)
        try:
            await client.delete(
                queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"
            )
        finally:
            await client.aclose()
    else:
        import aio_pika

        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            await channel.queue_delete(queue)
        finally:
            await connection.close()


def _client(url: str) -> Any:
    from celery import Celery

    app = Celery("aiocelev_dashboard_client", broker=url, set_as_current=False)
    app.conf.task_send_sent_event = True
    return app


async def _dashboard_sees_a_real_worker(url: str) -> None:
    async with running_dashboard([url], actions_without_auth=True, inspect_timeout=2.0) as dash:
        c = dash.client
        worker = Worker(url, events=True, prefix="aiocelev-dash")
        worker.start()
        client = _client(url)
        try:
            node = worker.nodename

            async def online() -> bool:
                r = await c.get("/api/workers", params={"status": "1"})
                return bool(r.json().get(node))

            await eventually(online, f"{node} online in /api/workers")
            ok = (await call(client.send_task, "interop.add", args=(2, 3), queue=worker.queue)).id
            bad = (await call(client.send_task, "interop.boom", args=(7,), queue=worker.queue)).id

            async def outcomes() -> dict[str, Any] | None:
                r = await c.get("/api/tasks", params={"workername": node})
                tasks = r.json()
                if (
                    tasks.get(ok, {}).get("state") == "SUCCESS"
                    and tasks.get(bad, {}).get("state") == "FAILURE"
                ):
                    return tasks
                return None

            tasks = await eventually(outcomes, "both task outcomes", timeout=60)
            assert tasks[ok]["result"] == "5" and tasks[ok]["name"] == "interop.add"
            assert "bad value 7" in tasks[bad]["exception"]
            info = (await c.get(f"/api/task/info/{bad}")).json()
            assert "ValueError" in info["traceback"]
            assert info["broker"] == dash.hub.feeds[0].label

            families = {
                f.name: f for f in text_string_to_metric_families((await c.get("/metrics")).text)
            }
            events = {
                (s.labels["type"], s.labels["task"])
                for s in families["flower_events"].samples
                if s.labels.get("worker") == node and s.name == "flower_events_total"
            }
            assert {("task-succeeded", "interop.add"), ("task-failed", "interop.boom")} <= events
            online_now = {
                s.labels["worker"]: s.value for s in families["flower_worker_online"].samples
            }
            assert online_now[node] == 1

            async def inspected() -> dict[str, Any] | None:
                r = await c.get("/api/workers", params={"refresh": "1", "workername": node})
                entry = r.json().get(node, {})
                return entry if "interop.add" in (entry.get("registered") or []) else None

            entry = await eventually(inspected, "inspect replies of the worker", timeout=30)
            assert entry["stats"]["pid"] == worker.proc.pid  # type: ignore[union-attr]
            page = (await c.get(f"/worker/{node}")).text
            assert 'data-testid="worker-registered"' in page and "interop.add" in page

            # The broker page measures the queue the worker consumes (its active_queues).
            async def queue_row(name: str) -> dict[str, Any] | None:
                body = (await c.get("/api/queues/length")).json()
                rows = [q for q in body["active_queues"] if q["name"] == name]
                return rows[0] if rows else None

            row = await eventually(lambda: queue_row(worker.queue), "the worker's queue", 30)
            if url.startswith("amqp"):
                assert row["consumers"] == 1 and row["messages"] == 0
            else:
                assert row["consumers"] is None  # Redis cannot tell
            # Consumers added and cancelled through the API, as Flower's.
            extra = f"{worker.queue}-extra"
            r = await c.post(f"/api/worker/queue/add-consumer/{node}", params={"queue": extra})
            assert r.status_code == 200, r.text
            assert extra in r.json()["message"]
            await eventually(lambda: queue_row(extra), "the added queue on the broker page", 30)
            r = await c.post(f"/api/worker/queue/cancel-consumer/{node}", params={"queue": extra})
            assert r.status_code == 200, r.text
            missing = await c.post(f"/api/worker/queue/add-consumer/{node}")
            assert missing.status_code == 400
            # A solo worker has no autoscaler: the worker's refusal is passed on.
            r = await c.post(f"/api/worker/pool/autoscale/{node}", params={"min": 1, "max": 2})
            assert r.status_code == 403 and "autoscale" in r.json()["error"].lower()
        finally:
            client.close()
            with anyio.CancelScope(shield=True):
                if worker.proc is not None:
                    await anyio.to_thread.run_sync(stop_process, worker.proc)
                worker.log.close()
                await _forget_queue(url, worker.queue)
                await _forget_queue(url, f"{worker.queue}-extra")


@pytest.mark.amqp
async def test_real_worker_on_rabbitmq(amqp_url: str) -> None:
    await _dashboard_sees_a_real_worker(amqp_url)


@pytest.mark.redis
async def test_real_worker_on_redis(redis_url: str) -> None:
    await _dashboard_sees_a_real_worker(redis_url)
