"""Connection status: receivers say when they cannot hear the broker; the state does not age workers meanwhile."""

from __future__ import annotations

import time
from typing import Any

import pytest

from aiocelev import ClusterState, ConnectionStatus, EventDispatcher, EventReceiver
from aiocelev._link import LinkMonitor
from aiocelev.brokers import open_broker
from tests.reliability._helpers import StallProxy, unique, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def heartbeat(hostname: str, at: float) -> dict[str, Any]:
    return {
        "type": "worker-heartbeat",
        "hostname": hostname,
        "timestamp": at,
        "local_received": at,
        "freq": 2.0,
        "active": 0,
        "processed": 0,
        "clock": 1,
    }


# -- LinkMonitor ------------------------------------------------------------------


def test_monitor_counts_gaps_and_tells_listeners_once_per_change() -> None:
    seen: list[ConnectionStatus] = []
    monitor = LinkMonitor("redis://h:6379/0", connected=False)
    monitor.listen(seen.append)
    monitor.restored()  # the first connection is not a gap
    assert monitor.connected and seen == []
    monitor.lost("connection reset")
    monitor.lost("still down")  # same gap: only the reason changes
    assert [s.connected for s in seen] == [False]
    assert monitor.status.reason == "still down" and monitor.status.gaps == 1
    assert monitor.status.describe() == (
        "disconnected from redis://h:6379/0: still down; reconnecting (gap #1)"
    )
    monitor.restored()
    assert [s.connected for s in seen] == [False, True]
    status = seen[-1]
    assert status.gaps == 1 and status.reason is None
    assert status.last_gap is not None and status.last_gap >= 0
    assert status.describe().startswith("connected to redis://h:6379/0; reconnected after ")


def test_a_raising_listener_does_not_break_the_others() -> None:
    seen: list[bool] = []

    def bad(_status: ConnectionStatus) -> None:
        raise RuntimeError("boom")

    monitor = LinkMonitor("memory://x")
    monitor.listen(bad)
    remove = monitor.listen(lambda s: seen.append(s.connected))
    monitor.lost("x")
    remove()
    monitor.restored()
    assert seen == [False]


# -- ClusterState -----------------------------------------------------------------


def test_workers_do_not_age_while_the_state_is_deaf() -> None:
    clock = Clock()
    state = ClusterState(time_source=clock)
    state.apply(heartbeat("w1", clock.now))
    worker = state.worker("w1")
    assert worker is not None and worker.status == "online"
    expires = worker.heartbeat_expires
    assert expires == clock.now + 4.0  # freq 2 s x 200 %

    clock.now += 1.0
    state.connection_lost()
    assert not state.connected
    clock.now += 60.0  # far past the expiry, but nothing could be heard
    assert worker.alive and worker.status == "online"

    state.connection_restored()
    assert state.connected
    # The 60 deaf seconds do not count: 3 s of its window are left.
    assert worker.alive
    assert worker.heartbeat_expires == pytest.approx(expires + 60.0)
    clock.now += 2.9
    assert worker.alive
    clock.now += 0.2
    assert not worker.alive and worker.status == "lost"


def test_deafness_before_a_workers_last_event_does_not_extend_it() -> None:
    clock = Clock()
    state = ClusterState(time_source=clock)
    state.connection_lost()
    clock.now += 30.0
    state.connection_restored()
    clock.now += 1.0
    state.apply(heartbeat("w2", clock.now))
    worker = state.worker("w2")
    assert worker is not None
    assert worker.heartbeat_expires == clock.now + 4.0
    clock.now += 4.1
    assert worker.status == "lost"


def test_several_links_keep_the_state_deaf_until_each_is_back() -> None:
    clock = Clock()
    state = ClusterState(time_source=clock)
    state.apply(heartbeat("w3", clock.now))
    state.connection_lost()
    state.connection_lost()
    clock.now += 10.0
    state.connection_restored()
    assert not state.connected
    clock.now += 10.0
    state.connection_restored()
    assert state.connected
    worker = state.worker("w3")
    assert worker is not None and worker.heartbeat_expires == pytest.approx(
        clock.now - 20.0 + 4.0 + 20.0
    )
    state.connection_restored()  # one too many: ignored
    assert state.connected


# -- EventReceiver over the in-memory broker ---------------------------------------


async def test_receiver_reports_loss_and_recovery_of_its_subscription() -> None:
    url = f"memory://{unique('link')}"
    changes: list[ConnectionStatus] = []
    receiver = EventReceiver(url, on_connection=changes.append)
    assert not receiver.connection.connected  # not open yet
    async with receiver:
        assert receiver.connection.connected and receiver.connection.gaps == 0
        assert receiver.connection.broker == url
        subscription = receiver._subscription
        link = getattr(subscription, "link")  # noqa: B009 - the adapter's monitor
        link.lost("network unplugged")
        assert not receiver.connection.connected
        assert receiver.connection.reason == "network unplugged"
        link.restored()
        assert receiver.connection.connected and receiver.connection.gaps == 1
    assert [c.connected for c in changes] == [False, True]
    assert changes[1].last_gap is not None


async def test_follow_wires_the_receivers_connection_into_the_state() -> None:
    url = f"memory://{unique('follow')}"
    state = ClusterState()
    async with EventReceiver(url) as receiver, EventDispatcher(url, hostname="w@x") as dispatcher:
        link = getattr(receiver._subscription, "link")  # noqa: B009
        followed = state.follow(receiver)
        await dispatcher.send("worker-heartbeat", freq=2.0, active=0, processed=0)
        await dispatcher.flush()
        await followed.__anext__()  # following now
        link.lost("gone")
        assert not state.connected
        link.restored()
        assert state.connected
        await followed.aclose()
        link.lost("after following")  # no longer tracked
        assert state.connected


# -- real brokers through a proxy that is killed and restarted ---------------------


@pytest.mark.parametrize("kind", ["redis", "amqp"])
async def test_real_broker_outage_is_reported_and_recovered(
    kind: str, request: pytest.FixtureRequest
) -> None:
    target = request.getfixturevalue(f"{kind}_url")
    target_port = 6379 if kind == "redis" else 5672
    proxy = StallProxy(target_port)
    port = proxy.port
    url = (
        f"redis://127.0.0.1:{port}/0"
        if kind == "redis"
        else f"amqp://guest:guest@127.0.0.1:{port}//"
    )
    assert target  # the real broker is there (else the fixture skipped or failed)
    options = {"reconnect_delay": 0.1, "reconnect_max_delay": 0.3}
    if kind == "redis":
        options["health_check_interval"] = 1.0
    else:
        options["heartbeat"] = 2
    changes: list[ConnectionStatus] = []
    broker = open_broker(url, **options)
    try:
        async with EventReceiver(broker, on_connection=changes.append) as receiver:
            assert receiver.connection.connected
            proxy.close()  # every connection cut, nothing listening
            await wait_until(lambda: not receiver.connection.connected, timeout=30)
            status = receiver.connection
            assert status.gaps == 1 and status.reason
            assert "guest:guest" not in status.broker and "guest:guest" not in status.describe()
            down_since = time.monotonic()
            proxy = StallProxy(target_port, port)  # the broker is reachable again
            await wait_until(lambda: receiver.connection.connected, timeout=30)
            assert [c.connected for c in changes] == [False, True]
            assert changes[-1].last_gap is not None
            assert 0 < changes[-1].last_gap <= time.monotonic() - down_since + 30
    finally:
        await broker.aclose()
        proxy.close()
