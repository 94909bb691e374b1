"""The broker page and ``/api/queues/length`` against the real brokers."""

from __future__ import annotations

import socket
import uuid
from typing import Any

import aio_pika
import pytest
import redis.asyncio as aioredis

from aiocelev.brokers import open_broker
from tests.conftest import IN_CI

from .conftest import eventually, running_dashboard

pytestmark = pytest.mark.anyio

MANAGEMENT_API = "http://guest:guest@127.0.0.1:15672/api/"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _management_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 15672), timeout=2):
            return True
    except OSError:
        return False


async def test_memory_broker_says_it_has_no_queues() -> None:
    async with running_dashboard() as dash:
        body = (await dash.client.get("/api/queues/length")).json()
        assert body["active_queues"] == []
        assert any("no task queues" in e for e in body["errors"])
        page = (await dash.client.get("/broker")).text
        assert 'data-testid="queues-error"' in page and "no task queues" in page


async def test_redis_queue_depth_on_the_page_and_in_the_api(redis_url: str) -> None:
    # A database of its own: the default queue name is shared with real workers elsewhere.
    url = redis_url.rsplit("/", 1)[0] + "/11"
    client = aioredis.from_url(url)
    await client.delete("celery", "celery\x06\x163")
    await client.rpush("celery", b"1", b"2")
    await client.rpush("celery\x06\x163", b"3")
    broker = open_broker(url)
    try:
        async with running_dashboard([broker]) as dash:
            await eventually(lambda: _connected(dash), "the subscription")
            body = (await dash.client.get("/api/queues/length")).json()
            assert body["errors"] == []
            assert body["active_queues"] == [
                {
                    "name": "celery",
                    "messages": 3,
                    "consumers": None,
                    "broker": dash.hub.feeds[0].label,
                }
            ]
            page = (await dash.client.get("/broker")).text
            assert 'data-queue="celery"' in page and ">3</td>" in page
    finally:
        await client.delete("celery", "celery\x06\x163")
        await client.aclose()
        await broker.aclose()


async def test_rabbitmq_queues_from_the_protocol_and_the_management_api(amqp_url: str) -> None:
    if not _management_up():
        reason = "RabbitMQ management API not reachable on 127.0.0.1:15672"
        if IN_CI:
            pytest.fail(f"{reason} (.ci/run enables rabbitmq_management)")
        pytest.skip(reason)
    name = f"broker-page-{uuid.uuid4().hex[:8]}"
    conn = await aio_pika.connect(amqp_url)
    broker = open_broker(amqp_url)
    try:
        channel = await conn.channel()
        queue = await channel.declare_queue(name, auto_delete=False)
        for n in range(4):
            await channel.default_exchange.publish(aio_pika.Message(b"%d" % n), routing_key=name)
        # Without the API: the default queue, read by a passive declare.
        async with running_dashboard([broker]) as dash:
            body = (await dash.client.get("/api/queues/length")).json()
            assert [q["name"] for q in body["active_queues"]] == ["celery"]
        # With it: every queue of the vhost (the management API refreshes its counts every few s).
        async with running_dashboard([broker], broker_api=MANAGEMENT_API) as dash:

            async def listed() -> dict[str, Any] | None:
                rows = (await dash.client.get("/api/queues/length")).json()["active_queues"]
                mine = [r for r in rows if r["name"] == name]
                return mine[0] if mine and mine[0]["messages"] == 4 else None

            row = await eventually(listed, "the queue in the management API", 20)
            assert row["consumers"] == 0
            page = (await dash.client.get("/broker")).text
            assert f'data-queue="{name}"' in page and "management API" in page
            assert "guest:guest" not in page
            assert not any(r["name"].startswith("celeryev.") for r in [row])
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await conn.close()
        await broker.aclose()


async def test_management_api_errors_are_shown_without_the_password(amqp_url: str) -> None:
    broker = open_broker(amqp_url)
    try:
        async with running_dashboard(
            [broker], broker_api="http://admin:s3cret-pw@127.0.0.1:1/api/"
        ) as dash:
            body = (await dash.client.get("/api/queues/length")).json()
            assert body["errors"] and "management API" in body["errors"][0]
            assert "s3cret-pw" not in str(body)
            assert [q["name"] for q in body["active_queues"]] == ["celery"]  # still measured
    finally:
        await broker.aclose()


async def _connected(dash: Any) -> bool:
    return bool(dash.hub.connected)
