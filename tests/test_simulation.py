"""The simulated cluster: workers come online, run tasks with every outcome, go offline."""

from __future__ import annotations

from collections import Counter

import anyio
import pytest

from aiocelev import ClosedError, ConfigurationError, Event, EventReceiver
from aiocelev._simulation import Simulation, simulate_cluster
from aiocelev.brokers.memory import MemoryBroker

from ._helpers import broker_fixture, url_fixture, wait_until  # noqa: F401


async def _collect(receiver: EventReceiver, into: list[Event]) -> None:
    async for event in receiver:
        into.append(event)


async def test_workers_online_tasks_then_offline(url: str) -> None:
    events: list[Event] = []
    async with EventReceiver(url) as receiver, anyio.create_task_group() as tg:
        tg.start_soon(_collect, receiver, events)
        sim = simulate_cluster(url, workers=2, rate=200, seed=3, name="sim", heartbeat=0.2)
        async with sim:
            assert len(sim.hostnames) == 2
            assert all(h.startswith(("sim-1@", "sim-2@")) for h in sim.hostnames)
            # Every outcome shows up (fetch_url retries, email fails, reports get revoked).
            await wait_until(
                lambda: (
                    {"task-succeeded", "task-failed", "task-retried", "task-revoked"}
                    <= {e.type for e in events}
                ),
                timeout=20,
            )
            await wait_until(lambda: any(e.type == "worker-heartbeat" for e in events), timeout=5)
        stats = sim.statistics()
        await wait_until(lambda: len(events) >= stats.sent)
        tg.cancel_scope.cancel()
    assert stats.workers == 2 and stats.tasks > 0
    assert stats.sent == len(events)  # everything sent was received, nothing else was
    types = Counter(e.type for e in events)
    assert types["worker-online"] == 2 and types["worker-offline"] == 2
    assert {e.hostname for e in events} == set(sim.hostnames)
    assert sum(stats.executions.values()) >= types["task-succeeded"]
    assert stats.executions.get("SUCCESS", 0) == types["task-succeeded"]
    assert stats.executions.get("RETRY", 0) == types["task-retried"]
    failed = [e for e in events if e.type == "task-failed"]
    assert all("Traceback (most recent call last)" in e["traceback"] for e in failed)


async def test_a_shared_broker_is_left_open(broker: MemoryBroker) -> None:
    sub = await broker.subscribe(["worker.#"])
    async with simulate_cluster(broker, workers=1, rate=10, seed=1):
        pass
    with anyio.fail_after(5):
        first = await sub.__anext__()
    assert b"worker-online" in first.body
    await broker.publish([])  # still usable: the simulation did not close it


async def test_the_same_seed_gives_the_same_tasks(url: str) -> None:
    async def first_task_ids(seed: int) -> list[str]:
        ids: list[str] = []
        async with (
            EventReceiver(url, routing_keys=["task.#"]) as receiver,
            simulate_cluster(url, workers=1, rate=300, seed=seed, grace=0),
        ):
            with anyio.fail_after(10):
                while len(ids) < 3:
                    event = await receiver.receive()
                    if event.type == "task-received":
                        ids.append(event["uuid"])
        return ids

    assert await first_task_ids(5) == await first_task_ids(5)
    assert await first_task_ids(5) != await first_task_ids(6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"workers": 0},
        {"rate": 0},
        {"rate": float("nan")},
        {"rate": float("inf")},
        {"name": "a@b"},
        {"name": ""},
        {"heartbeat": 0},
        {"grace": -1},
    ],
)
def test_configuration_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        simulate_cluster("memory://", **kwargs)  # type: ignore[arg-type]


async def test_entered_once(url: str) -> None:
    sim = simulate_cluster(url, workers=1, rate=10)
    assert isinstance(sim, Simulation) and "workers=1" in repr(sim)
    async with sim:
        sim.stop()
    with pytest.raises(ClosedError):
        async with sim:
            pass
