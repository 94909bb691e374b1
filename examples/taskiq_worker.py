"""A taskiq worker visible in Flower, ``celery events`` and ``celery inspect``.

Run the worker, watch it, and send it tasks (Redis on localhost)::

    taskiq worker examples.taskiq_worker:broker
    celery --broker=redis://localhost:6379/0 flower         # http://localhost:5555
    python examples/taskiq_worker.py --count 50             # kick tasks

Tasks succeed, fail, get retried (``SimpleRetryMiddleware``) or run long
(cancel one with ``aiocelev control revoke <id> --terminate``).  Stop the worker
with Ctrl+C or SIGTERM: Flower marks it offline at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random

from taskiq.middlewares import SimpleRetryMiddleware
from taskiq_redis import ListQueueBroker

from aiocelev.integrations.taskiq import CeleryEventsMiddleware

BROKER = os.environ.get("TASKIQ_BROKER", "redis://localhost:6379/0")
EVENTS = os.environ.get("AIOCELEV_EVENTS", BROKER)

broker = ListQueueBroker(BROKER, queue_name="aiocelev-example").with_middlewares(
    SimpleRetryMiddleware(default_retry_count=3),
    CeleryEventsMiddleware(EVENTS, send_sent_events=True),
)


@broker.task(task_name="demo.add")
async def add(x: int, y: int) -> int:
    await asyncio.sleep(random.uniform(0.05, 0.5))
    return x + y


@broker.task(task_name="demo.fail")
async def fail(x: int) -> None:
    raise ValueError(f"cannot handle {x!r}")


@broker.task(task_name="demo.flaky", retry_on_error=True, max_retries=3)
async def flaky(x: int) -> int:
    if random.random() < 0.6:
        raise RuntimeError("upstream busy")
    return x


@broker.task(task_name="demo.slow")
async def slow() -> str:
    await asyncio.sleep(120)
    return "done"


async def kick(count: int) -> None:
    """Send *count* random tasks."""
    await broker.startup()
    try:
        for _ in range(count):
            choice = random.choice([add, add, add, fail, flaky, slow])
            if choice is add:
                await add.kiq(random.randint(0, 99), random.randint(0, 99))
            elif choice is slow:
                await slow.kiq()
            else:
                await choice.kiq(random.randint(0, 99))
    finally:
        await broker.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=20, help="tasks to send")
    asyncio.run(kick(parser.parse_args().count))
