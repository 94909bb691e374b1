"""taskiq with :class:`~aiocelev.integrations.taskiq.CeleryEventsMiddleware`, for real.

A ``taskiq worker`` process on Redis (taskiq-redis) and on RabbitMQ
(taskiq-aio-pika) runs tasks that succeed, fail, retry (``SimpleRetryMiddleware``)
and get cancelled by ``revoke --terminate``; Flower, Celery's State, ``celery
inspect`` and aiocelev see all of it; SIGTERM sends ``worker-offline``.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

pytest.importorskip("taskiq")
pytest.importorskip("flower")

from aiocelev.integrations.taskiq import CeleryEventsMiddleware

from ..interop._common import CELERY
from ._harness import Events, Outcomes, exercise, make_bus
from .taskiq_app import make_broker, register

pytestmark = pytest.mark.celery

TASKIQ = str(Path(CELERY).with_name("taskiq"))


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("amqp", marks=pytest.mark.amqp),
    ]
)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "amqp":
        pytest.importorskip("taskiq_aio_pika")
    else:
        pytest.importorskip("taskiq_redis")
    return str(request.param)


async def test_taskiq_worker_in_flower_and_celery_state(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    broker_url: str = request.getfixturevalue(f"{kind}_url")
    bus = make_bus(kind, broker_url)
    task_url = bus.url
    queue = f"aiocelev-tq-{bus.tag}"
    node = f"taskiq-{bus.tag}@integration"
    env = {
        "AIOCELEV_TQ_KIND": kind,
        "AIOCELEV_TQ_BROKER": task_url,
        "AIOCELEV_TQ_QUEUE": queue,
        "AIOCELEV_TQ_EVENTS": bus.events_url,
        "AIOCELEV_TQ_NODE": node,
    }
    command = [TASKIQ, "worker", "tests.integrations.taskiq_app:broker", "--workers", "1",
               "--no-configure-logging", "--shutdown-timeout", "10"]  # fmt: skip
    client = make_broker(kind, task_url, queue).with_middlewares(
        CeleryEventsMiddleware(bus.events_url, send_sent_events=True)
    )
    tasks = register(client)
    parent_id = ""

    async def kick(tmp: Path) -> Outcomes:
        await client.startup()
        ok = (await tasks["add"].kiq(2, 3)).task_id
        bad = (await tasks["boom"].kiq(7)).task_id
        flaky = (await tasks["flaky"].kiq(str(tmp / f"flaky-{uuid.uuid4().hex}"))).task_id
        hold = (await tasks["hold"].kiq(str(tmp / "hold"))).task_id
        parent = (await tasks["parent"].kiq()).task_id
        nonlocal parent_id
        parent_id = parent
        return Outcomes(ok, bad, flaky, hold, {"parent": parent})

    def check(events: Events, ids: Outcomes) -> None:
        received = events.of("task-received", ids.ok)[0]
        assert received["name"] == "tq.add" and received["args"] == "[2, 3]"
        assert received["kwargs"] == "{}" and received["retries"] == 0
        assert events.of("task-succeeded", ids.ok)[0]["result"] == "5"
        failed = events.of("task-failed", ids.bad)[0]
        assert failed["exception"] == "ValueError('bad value 7')"
        assert "Traceback" in failed["traceback"] and "bad value 7" in failed["traceback"]
        retried = events.of("task-retried", ids.flaky)[0]
        assert retried["exception"] == "RuntimeError('try again')"
        assert [e["retries"] for e in events.of("task-received", ids.flaky)] == [0, 1]
        # task-sent from the client's own node, for every kick.
        sent = {e["uuid"] for e in events.of("task-sent") if e.hostname.startswith("gen")}
        assert {ids.ok, ids.bad, ids.flaky, ids.hold, ids.extra["parent"]} <= sent

    try:
        events = await exercise(
            bus,
            tmp_path,
            node=node,
            command=command,
            env=env,
            kick=kick,
            registered=["tq.add", "tq.boom", "tq.flaky", "tq.hold"],
            check=check,
        )
    finally:
        await client.shutdown()
    # The task kicked by a task names its parent and root.
    parent = [e for e in events.of("task-received") if e.get("parent_id")]
    assert parent, "no child task seen"
    child = parent[0]
    assert child["name"] == "tq.add" and child["args"] == "[20, 22]"
    assert child["parent_id"] == child["root_id"] == parent_id
