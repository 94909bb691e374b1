"""arq's own ``Worker`` in this process, on the real Redis: timeouts and aborts told apart.

arq cancels a job that outlives its timeout and records a ``TimeoutError``: the
integration reports ``task-failed`` with a ``TimeoutError``, not ``task-revoked``.
A job aborted (``Job.abort()``) before its timeout is ``task-revoked``.  The
events go through ``memory://`` to a receiver in the same process.
"""

from __future__ import annotations

import asyncio
import uuid
import warnings
from typing import Any

import anyio
import pytest

pytest.importorskip("arq")

from arq import create_pool
from arq.connections import RedisSettings
from arq.jobs import Job
from arq.worker import Worker, func

from aiocelev import Event, EventReceiver
from aiocelev.integrations.arq import CeleryEvents

from ._harness import REDIS_DB, with_db

pytestmark = pytest.mark.redis

WAIT = 30.0  # bound on "eventually"
FINAL = ("task-succeeded", "task-failed", "task-revoked", "task-retried")


async def sleepy(ctx: dict[str, Any]) -> str:
    await asyncio.sleep(60)  # far beyond its timeout
    return "never"


async def hold(ctx: dict[str, Any]) -> str:
    await asyncio.sleep(60)  # until aborted
    return "never"


async def quick(ctx: dict[str, Any], x: int) -> int:
    return x * 2


async def test_timeout_is_failed_and_abort_is_revoked(redis_url: str) -> None:
    url = with_db(redis_url, REDIS_DB)
    tag = uuid.uuid4().hex[:10]
    queue, events_url, node = f"aiocelev-arq-ip-{tag}", f"memory://arq-ip-{tag}", f"arq-{tag}@t"
    job_starts: list[str] = []

    async def own_job_start(ctx: dict[str, Any]) -> None:
        job_starts.append(ctx["job_id"])  # the user's hook still runs

    settings: dict[str, Any] = CeleryEvents(events_url, hostname=node, freq=0.5).install(
        {
            "functions": [func(sleepy, timeout=0.3), hold, quick],
            "redis_settings": RedisSettings.from_dsn(url),
            "queue_name": queue,
            "burst": True,
            "handle_signals": False,
            "poll_delay": 0.05,
            "allow_abort_jobs": True,
            "keep_result": 5,
            "on_job_start": own_job_start,
        }
    )
    seen: list[Event] = []
    pool = await create_pool(RedisSettings.from_dsn(url), default_queue_name=queue)
    try:
        ids = {}
        for name, args in (("sleepy", ()), ("hold", ()), ("quick", (21,))):
            job = await pool.enqueue_job(name, *args)
            assert job is not None
            ids[name] = job.job_id
        worker = Worker(**settings)
        async with EventReceiver(events_url) as receiver, anyio.create_task_group() as tg:

            async def collect() -> None:
                async for event in receiver:
                    seen.append(event)

            def started(job_id: str) -> bool:
                return any(e.type == "task-started" and e["uuid"] == job_id for e in seen)

            async def run_worker() -> None:
                await worker.main()  # burst: returns once every job has ended
                with warnings.catch_warnings():  # arq 0.25 calls redis' deprecated close()
                    warnings.simplefilter("ignore", DeprecationWarning)
                    await worker.close()  # on_shutdown: worker-offline

            tg.start_soon(collect)
            tg.start_soon(run_worker)
            with anyio.fail_after(WAIT):
                while not started(ids["hold"]):
                    await anyio.sleep(0.02)
            assert await Job(ids["hold"], pool, _queue_name=queue).abort(timeout=WAIT)
            with anyio.fail_after(WAIT):
                while not any(e.type == "worker-offline" for e in seen):
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
    finally:
        await pool.aclose()

    final = {e["uuid"]: e for e in seen if e.type in FINAL}
    timed_out = final[ids["sleepy"]]
    assert timed_out.type == "task-failed", timed_out
    assert timed_out["exception"] == "TimeoutError('job sleepy timed out after 0.3s')"
    assert "CancelledError" in timed_out["traceback"] and "sleepy" in timed_out["traceback"]
    aborted = final[ids["hold"]]
    assert aborted.type == "task-revoked" and aborted["terminated"] is True, aborted
    assert final[ids["quick"]].type == "task-succeeded"
    assert final[ids["quick"]]["result"] == "42"
    assert sorted(job_starts) == sorted(ids.values())
