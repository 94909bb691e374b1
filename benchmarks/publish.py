"""Publish throughput: task-succeeded events/s until all are handed to the broker.

* aiocelev: ``EventDispatcher`` defaults (batched) or ``batch_groups=()``
  (one message per event); ``await send(...)`` for every event, then
  ``await flush()``.
* Celery: ``EventDispatcher`` on a kombu ``Connection``, as a worker
  configures it (``buffer_group=["task"]``; ``send`` flushes when the buffer
  reaches ``buffer_limit``; a final ``flush()``), or the default unbatched
  dispatcher.

Nothing consumes the events: the clock stops when the last one is written to
the broker connection (neither side waits for confirms).  200 warm-up events
go out first (connection, channel and exchange set up).
"""

from __future__ import annotations

import time
from typing import Any

from ._common import HOSTNAME, URLS, broker_options, celery_app, succeeded_fields

WARMUP = 200


def _aiocelev(spec: dict[str, Any]) -> dict[str, Any]:
    import anyio

    from aiocelev import EventDispatcher

    n = spec["n"]
    fields = [succeeded_fields(i) for i in range(n + WARMUP)]
    options: dict[str, Any] = {"broker_options": broker_options(spec["broker"])}
    if not spec.get("batched", True):
        options["batch_groups"] = ()

    async def main() -> dict[str, Any]:
        async with EventDispatcher(URLS[spec["broker"]], hostname=HOSTNAME, **options) as d:
            for i in range(WARMUP):
                await d.send("task-succeeded", **fields[n + i])
            await d.flush()
            before = d.statistics()
            send = d.send  # bound once, as on Celery's side
            start = time.perf_counter()
            for i in range(n):
                await send("task-succeeded", **fields[i])
            await d.flush()
            elapsed = time.perf_counter() - start
            after = d.statistics()
        return {
            "rate": n / elapsed,
            "elapsed": elapsed,
            "messages": after.messages - before.messages,
            "dropped": after.dropped,
        }

    return anyio.run(main)


def _celery(spec: dict[str, Any]) -> dict[str, Any]:
    n = spec["n"]
    fields = [succeeded_fields(i) for i in range(n + WARMUP)]
    app = celery_app(URLS[spec["broker"]])
    batched = spec.get("batched", True)
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=3)
        d = app.events.Dispatcher(
            conn,
            hostname=HOSTNAME,
            buffer_group=["task"] if batched else None,
            buffer_limit=spec.get("buffer_limit", 24),
        )
        for i in range(WARMUP):
            d.send("task-succeeded", **fields[n + i])
        d.flush()
        send = d.send
        start = time.perf_counter()
        for i in range(n):
            send("task-succeeded", **fields[i])
        d.flush()
        elapsed = time.perf_counter() - start
        d.close()
    return {"rate": n / elapsed, "elapsed": elapsed}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement (in a fresh process)."""
    return _aiocelev(spec) if spec["impl"] == "aiocelev" else _celery(spec)
