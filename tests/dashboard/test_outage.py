"""A short broker outage under the dashboard: every page says so, workers are not shown lost."""

from __future__ import annotations

import time
import uuid
from typing import Any

import anyio
import pytest

from aiocelev import EventDispatcher, worker_events
from aiocelev.brokers import open_broker
from tests.reliability._helpers import StallProxy

from .conftest import eventually, running_dashboard, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize("kind", ["redis", "amqp"])
async def test_outage_is_shown_and_workers_do_not_turn_lost(
    kind: str, request: pytest.FixtureRequest
) -> None:
    direct = request.getfixturevalue(f"{kind}_url")
    proxy = StallProxy(6379 if kind == "redis" else 5672)
    port = proxy.port
    if kind == "redis":
        via_proxy = f"redis://127.0.0.1:{port}/0"
        options: dict[str, Any] = {"health_check_interval": 1.0}
    else:
        via_proxy = f"amqp://guest:guest@127.0.0.1:{port}//"
        options = {"heartbeat": 2}
    options.update(reconnect_delay=0.1, reconnect_max_delay=0.3)
    broker = open_broker(via_proxy, **options)
    hostname = f"outage-{uuid.uuid4().hex[:8]}@host"
    try:
        async with (
            running_dashboard([broker], actions_without_auth=True) as dash,
            EventDispatcher(direct, hostname=hostname) as dispatcher,
        ):
            await wait_until(lambda: dash.hub.connected, "the dashboard's subscription")
            # The worker publishes straight to the broker; only the dashboard's path is cut.
            async with worker_events(dispatcher, freq=0.5):
                await wait_until(
                    lambda: (w := dash.hub.state.worker(hostname)) is not None and w.alive,
                    "the worker online",
                )
                assert (await dash.client.get("/healthz")).status_code == 200

                proxy.close()
                await wait_until(lambda: not dash.hub.connected, "the outage noticed", 30)
                page = (await dash.client.get("/workers")).text
                assert "disconnected from" in page and "reconnecting (gap #1)" in page
                assert "guest:guest" not in page
                assert (await dash.client.get("/healthz")).status_code == 503
                # Well past the worker's 1 s expiry window: still not "lost".
                deadline = time.monotonic() + 2.5
                while time.monotonic() < deadline:
                    workers = (await dash.client.get("/api/workers", params={"status": "1"})).json()
                    assert workers.get(hostname) is not False, "worker shown lost while deaf"
                    await anyio.sleep(0.25)
                row = dash.hub.state.worker(hostname)
                assert row is not None and row.status == "online"

                proxy = StallProxy(6379 if kind == "redis" else 5672, port)
                await wait_until(lambda: dash.hub.connected, "the reconnection", 30)
                feed = dash.hub.feeds[0]
                assert feed.gaps == 1 and feed.last_gap is not None and feed.last_gap >= 2.5
                page = await eventually(
                    lambda: _page_with(dash, "/workers", "reconnected after"), "footer"
                )
                assert "disconnected from" not in page
                assert (await dash.client.get("/healthz")).status_code == 200
                # Heartbeats flow again: the worker stays online on fresh news.
                await wait_until(
                    lambda: (
                        (w := dash.hub.state.worker(hostname)) is not None
                        and w.last_seen is not None
                        and w.last_seen > time.time() - 1.0
                    ),
                    "a heartbeat after the gap",
                    10,
                )
    finally:
        proxy.close()
        await broker.aclose()


async def _page_with(dash: Any, path: str, text: str) -> str | None:
    page: str = (await dash.client.get(path)).text
    return page if text in page else None
