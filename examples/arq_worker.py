"""An arq worker visible in Flower, ``celery events`` and ``celery inspect``.

Run the worker, watch it, and send it jobs (Redis on localhost)::

    arq examples.arq_worker.WorkerSettings
    celery --broker=redis://localhost:6379/0 flower         # http://localhost:5555
    python examples/arq_worker.py --count 50                # enqueue jobs

``ARQ_REDIS``, ``ARQ_QUEUE`` and ``AIOCELEV_EVENTS`` (the event broker, by default
the same Redis) change where they go.  The enqueuing side prints one line per job:
its id and function.

Jobs succeed, fail, get retried (``raise Retry``) or run long (cancel one with
``aiocelev control revoke <id> --terminate`` or arq's ``Job.abort()``).  Stop the
worker with Ctrl+C or SIGTERM: Flower marks it offline at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
from typing import Any

from arq import Retry, create_pool
from arq.connections import RedisSettings

from aiocelev.integrations.arq import CeleryEvents

REDIS = os.environ.get("ARQ_REDIS", "redis://localhost:6379/0")
EVENTS = os.environ.get("AIOCELEV_EVENTS", REDIS)
QUEUE = os.environ.get("ARQ_QUEUE", "aiocelev-example")


async def add(ctx: dict[str, Any], x: int, y: int) -> int:
    await asyncio.sleep(random.uniform(0.05, 0.5))
    return x + y


async def fail(ctx: dict[str, Any], x: int) -> None:
    raise ValueError(f"cannot handle {x!r}")


async def flaky(ctx: dict[str, Any], x: int) -> int:
    if ctx["job_try"] < 3 and random.random() < 0.6:
        raise Retry(defer=1)
    return x


async def slow(ctx: dict[str, Any]) -> str:
    await asyncio.sleep(120)
    return "done"


@CeleryEvents(EVENTS).install
class WorkerSettings:
    functions = [add, fail, flaky, slow]
    redis_settings = RedisSettings.from_dsn(REDIS)
    queue_name = QUEUE
    allow_abort_jobs = True
    job_timeout = 300


async def enqueue(count: int, seed: int | None = None) -> None:
    """Enqueue *count* random jobs (the same ones for the same *seed*); print their ids."""
    rng = random.Random(seed)
    pool = await create_pool(RedisSettings.from_dsn(REDIS), default_queue_name=QUEUE)
    try:
        for _ in range(count):
            name = rng.choice(["add", "add", "add", "fail", "flaky", "slow"])
            args: tuple[int, ...] = ()
            if name == "add":
                args = (rng.randint(0, 99), rng.randint(0, 99))
            elif name != "slow":
                args = (rng.randint(0, 99),)
            job = await pool.enqueue_job(name, *args)
            if job is not None:
                print(job.job_id, name, flush=True)
    finally:
        await pool.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=20, help="jobs to enqueue")
    parser.add_argument("--seed", type=int, default=None, help="the same jobs every time")
    options = parser.parse_args()
    asyncio.run(enqueue(options.count, options.seed))
