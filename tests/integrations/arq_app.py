"""An arq application for the integration tests, run by ``arq`` in a subprocess.

Its set-up comes from the environment: ``AIOCELEV_ARQ_REDIS`` (the job queue's
Redis), ``AIOCELEV_ARQ_QUEUE`` (a queue of its own), ``AIOCELEV_ARQ_EVENTS`` (the
event broker) and ``AIOCELEV_ARQ_NODE`` (the node name).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from arq import Retry
from arq.connections import RedisSettings

from aiocelev.integrations.arq import CeleryEvents


async def add(ctx: dict[str, Any], x: int, y: int) -> int:
    return x + y


async def boom(ctx: dict[str, Any], x: int) -> None:
    raise ValueError(f"bad value {x!r}")


async def flaky(ctx: dict[str, Any], path: str) -> str:
    marker = Path(path)
    if not marker.exists():
        marker.write_text("failed once")
        raise Retry(defer=0.1)
    return "ok"


async def hold(ctx: dict[str, Any], path: str) -> str:
    Path(path).write_text("started")
    await asyncio.sleep(3600)
    return "never"


async def own_startup(ctx: dict[str, Any]) -> None:
    """The user's own hook, kept by install(): leaves a marker file."""
    Path(os.environ["AIOCELEV_ARQ_MARKER"]).write_text("started")


if "AIOCELEV_ARQ_REDIS" in os.environ:

    @CeleryEvents(
        os.environ["AIOCELEV_ARQ_EVENTS"], hostname=os.environ["AIOCELEV_ARQ_NODE"], freq=1.0
    ).install
    class WorkerSettings:
        functions = [add, boom, flaky, hold]
        redis_settings = RedisSettings.from_dsn(os.environ["AIOCELEV_ARQ_REDIS"])
        queue_name = os.environ["AIOCELEV_ARQ_QUEUE"]
        allow_abort_jobs = True
        keep_result = 5
        poll_delay = 0.1
        on_startup = own_startup
