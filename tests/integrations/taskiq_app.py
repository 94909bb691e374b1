# mypy: allow-untyped-decorators
"""A taskiq application for the integration tests, run by ``taskiq worker`` in a subprocess.

The worker process reads its set-up from the environment:
``AIOCELEV_TQ_KIND`` (``redis`` or ``amqp``), ``AIOCELEV_TQ_BROKER`` (the task
broker), ``AIOCELEV_TQ_QUEUE`` (a queue of its own), ``AIOCELEV_TQ_EVENTS`` (the
event broker, with its private exchanges) and ``AIOCELEV_TQ_NODE`` (the node name).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from taskiq import AsyncBroker, AsyncTaskiqDecoratedTask
from taskiq.middlewares import SimpleRetryMiddleware

from aiocelev.integrations.taskiq import CeleryEventsMiddleware


def make_broker(kind: str, url: str, queue: str) -> AsyncBroker:
    """A task broker of *kind* on a queue (and, for RabbitMQ, an exchange) of its own."""
    if kind == "amqp":
        from taskiq_aio_pika import AioPikaBroker, Exchange, Queue, QueueType

        return AioPikaBroker(
            url,
            exchange=Exchange(name=queue, durable=False, auto_delete=True),
            task_queues=[Queue(name=queue, type=QueueType.CLASSIC, durable=False, routing_key="#")],
            dead_letter_queue=Queue(
                name=f"{queue}.dead", type=QueueType.CLASSIC, durable=False, auto_delete=True
            ),
        )
    from taskiq_redis import ListQueueBroker

    return ListQueueBroker(url, queue_name=queue, socket_timeout=None)  # BRPOP blocks


def register(broker: AsyncBroker) -> dict[str, AsyncTaskiqDecoratedTask[Any, Any]]:
    """The test tasks, by short name."""

    @broker.task(task_name="tq.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @broker.task(task_name="tq.boom")
    async def boom(x: int) -> None:
        raise ValueError(f"bad value {x!r}")

    @broker.task(task_name="tq.flaky", retry_on_error=True, max_retries=3)
    async def flaky(path: str) -> str:
        marker = Path(path)
        if not marker.exists():
            marker.write_text("failed once")
            raise RuntimeError("try again")
        return "ok"

    @broker.task(task_name="tq.hold")
    async def hold(path: str) -> str:
        Path(path).write_text("started")
        await asyncio.sleep(3600)
        return "never"

    @broker.task(task_name="tq.parent")
    async def parent() -> str:
        await add.kiq(20, 22)
        return "kicked"

    return {"add": add, "boom": boom, "flaky": flaky, "hold": hold, "parent": parent}


broker: AsyncBroker | None = None
if "AIOCELEV_TQ_BROKER" in os.environ:
    broker = make_broker(
        os.environ["AIOCELEV_TQ_KIND"],
        os.environ["AIOCELEV_TQ_BROKER"],
        os.environ["AIOCELEV_TQ_QUEUE"],
    ).with_middlewares(
        SimpleRetryMiddleware(default_retry_count=3),
        CeleryEventsMiddleware(
            os.environ["AIOCELEV_TQ_EVENTS"], hostname=os.environ["AIOCELEV_TQ_NODE"], freq=1.0
        ),
    )
    register(broker)
