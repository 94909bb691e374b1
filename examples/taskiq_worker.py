"""A taskiq worker visible in Flower, ``celery events`` and ``celery inspect``.

Run the worker, watch it, and send it tasks (Redis on localhost)::

    taskiq worker examples.taskiq_worker:broker
    celery --broker=redis://localhost:6379/0 flower         # http://localhost:5555
    python examples/taskiq_worker.py --count 50             # kick tasks

``TASKIQ_BROKER``, ``TASKIQ_QUEUE`` and ``AIOCELEV_EVENTS`` (the event broker, by
default the same Redis) change where they go.  The kicking side prints one line per
task: its id and name, and sends ``task-sent`` for each.

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

QUEUE = os.environ.get("TASKIQ_QUEUE", "aiocelev-example")

# socket_timeout=None: the worker waits on BRPOP with no time limit, and redis-py 8's
# default 5 s read timeout would kill an idle worker.
broker = ListQueueBroker(BROKER, queue_name=QUEUE, socket_timeout=None).with_middlewares(
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


async def kick(count: int, seed: int | None = None) -> None:
    """Send *count* random tasks (the same ones for the same *seed*); print their ids."""
    rng = random.Random(seed)
    await broker.startup()
    try:
        for _ in range(count):
            choice = rng.choice([add, add, add, fail, flaky, slow])
            if choice is add:
                sent = await add.kiq(rng.randint(0, 99), rng.randint(0, 99))
            elif choice is slow:
                sent = await slow.kiq()
            else:
                sent = await choice.kiq(rng.randint(0, 99))
            print(sent.task_id, choice.task_name, flush=True)
    finally:
        await broker.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=20, help="tasks to send")
    parser.add_argument("--seed", type=int, default=None, help="the same tasks every time")
    options = parser.parse_args()
    asyncio.run(kick(options.count, options.seed))
