"""A SAQ worker visible in Flower, ``celery events`` and ``celery inspect``.

Run the worker, watch it, and send it jobs (Redis on localhost)::

    saq examples.saq_worker.settings
    celery --broker=redis://localhost:6379/0 flower         # http://localhost:5555
    python examples/saq_worker.py --count 50                # enqueue jobs

``SAQ_REDIS``, ``SAQ_QUEUE`` and ``AIOCELEV_EVENTS`` (the event broker, by default
the same Redis) change where they go.  The enqueuing side prints one line per job:
its key and function.

Jobs succeed, fail, get retried (attempts left) or run long (cancel one with
``aiocelev control revoke <key> --terminate`` or SAQ's ``job.abort()``).  Stop the
worker with Ctrl+C or SIGTERM: Flower marks it offline at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
from typing import Any

from saq import Queue

from aiocelev.integrations.saq import CeleryEvents

REDIS = os.environ.get("SAQ_REDIS", "redis://localhost:6379/0")
EVENTS = os.environ.get("AIOCELEV_EVENTS", REDIS)
QUEUE = os.environ.get("SAQ_QUEUE", "aiocelev-example")


async def add(ctx: Any, *, x: int, y: int) -> int:
    await asyncio.sleep(random.uniform(0.05, 0.5))
    return x + y


async def fail(ctx: Any, *, x: int) -> None:
    raise ValueError(f"cannot handle {x!r}")


async def flaky(ctx: Any, *, x: int) -> int:
    if random.random() < 0.6:
        raise RuntimeError("upstream busy")
    return x


async def slow(ctx: Any) -> str:
    await asyncio.sleep(120)
    return "done"


settings = CeleryEvents(EVENTS).install(
    {
        "queue": Queue.from_url(REDIS, name=QUEUE),
        "functions": [add, fail, flaky, slow],
        "concurrency": 8,
    }
)


async def enqueue(count: int, seed: int | None = None) -> None:
    """Enqueue *count* random jobs (the same ones for the same *seed*); print their keys."""
    rng = random.Random(seed)
    queue = Queue.from_url(REDIS, name=QUEUE)
    await queue.connect()
    try:
        for _ in range(count):
            name = rng.choice(["add", "add", "add", "fail", "flaky", "slow"])
            if name == "add":
                job = await queue.enqueue(name, x=rng.randint(0, 99), y=rng.randint(0, 99))
            elif name == "slow":
                job = await queue.enqueue(name, timeout=300)
            else:
                job = await queue.enqueue(name, x=rng.randint(0, 99), retries=3)
            if job is not None:
                print(job.key, name, flush=True)
    finally:
        await queue.disconnect()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=20, help="jobs to enqueue")
    parser.add_argument("--seed", type=int, default=None, help="the same jobs every time")
    options = parser.parse_args()
    asyncio.run(enqueue(options.count, options.seed))
