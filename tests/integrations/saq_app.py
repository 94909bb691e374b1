"""A SAQ application for the integration tests, run by ``saq`` in a subprocess.

Its set-up comes from the environment: ``AIOCELEV_SAQ_REDIS`` (the queue's
Redis), ``AIOCELEV_SAQ_QUEUE`` (a queue of its own), ``AIOCELEV_SAQ_EVENTS`` (the
event broker), ``AIOCELEV_SAQ_NODE`` (the node name) and ``AIOCELEV_SAQ_MARKER``
(a file the user's own startup hook writes).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from saq import Queue

from aiocelev.integrations.saq import CeleryEvents


async def add(ctx: Any, *, x: int, y: int) -> int:
    return x + y


async def boom(ctx: Any, *, x: int) -> None:
    raise ValueError(f"bad value {x!r}")


async def flaky(ctx: Any, *, path: str) -> str:
    marker = Path(path)
    if not marker.exists():
        marker.write_text("failed once")
        raise RuntimeError("try again")
    return "ok"


async def hold(ctx: Any, *, path: str) -> str:
    Path(path).write_text("started")
    await asyncio.sleep(3600)
    return "never"


async def own_startup(ctx: Any) -> None:
    """The user's own hook, kept by install(): leaves a marker file."""
    Path(os.environ["AIOCELEV_SAQ_MARKER"]).write_text("started")


settings: dict[str, Any] = {}
if "AIOCELEV_SAQ_REDIS" in os.environ:
    settings = CeleryEvents(
        os.environ["AIOCELEV_SAQ_EVENTS"], hostname=os.environ["AIOCELEV_SAQ_NODE"], freq=1.0
    ).install(
        {
            "queue": Queue.from_url(
                os.environ["AIOCELEV_SAQ_REDIS"], name=os.environ["AIOCELEV_SAQ_QUEUE"]
            ),
            "functions": [add, boom, flaky, hold],
            "concurrency": 8,
            "startup": own_startup,
        }
    )
