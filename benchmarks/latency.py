"""Latency dispatch -> receive at a fixed event rate.

A sender process (started by the receiver once its subscription is live)
sends task-succeeded events at ``rate`` events/s, stamping ``sent_at`` with
``time.time()`` just before each ``send``; the receiver records
``time.time() - sent_at`` on arrival.  Both processes run on the same machine,
so their clocks agree.

* aiocelev: ``EventDispatcher`` defaults (batched) -> ``EventReceiver``.
* Celery batched: ``EventDispatcher(buffer_group=["task"])`` as a worker uses
  it: flush at 24 buffered events and whenever the sender goes idle (the
  worker flushes on its event loop's next iteration) -> Celery ``EventReceiver``.
* Celery unbatched: the default ``EventDispatcher`` -> Celery ``EventReceiver``.

``spec["sender"]`` (``aiocelev``, ``celery-single`` or ``celery-batched``)
pairs a receiver with the other implementation's sender (the
``latency_sides`` case): which side a difference in latency comes from.
"""

from __future__ import annotations

from typing import Any

from ._common import summarize
from ._receivers import run_aiocelev, run_celery


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement (in a fresh process)."""
    import time

    latencies: list[float] = []
    rate = spec["rate"]
    n = max(1, int(rate * spec["duration"]))
    spec = dict(spec, n=n)
    sender = spec.get("sender")
    if sender is None:
        if spec["impl"] == "aiocelev":
            sender = "aiocelev"
        else:
            sender = "celery-batched" if spec.get("batched") else "celery-single"
    stream = {"mode": sender, "n": n, "rate": rate}

    def handle(event: Any) -> None:
        latencies.append(time.time() - event["sent_at"])

    if spec["impl"] == "aiocelev":
        result = run_aiocelev(spec, stream, handle, idle=2.0)
    else:
        result = run_celery(spec, stream, handle, idle=2.0)
    ms = summarize([x * 1000.0 for x in latencies])
    result.update({"p50_ms": ms["p50"], "p99_ms": ms["p99"], "max_ms": ms["max"]})
    return result
