"""Peak RSS: a monitor that has seen many tasks, and an overloaded receiver.

``state``: a fresh process builds a receiver and a state -- Celery's
``EventReceiver`` + ``State()`` (``max_tasks_in_memory`` 10,000 by default),
or aiocelev's ``EventReceiver`` + ``ClusterState()`` (``max_tasks`` 10,000) --
and feeds it ``tasks`` tasks (task-received then task-succeeded, four
workers).  To keep the run short the events do not cross a broker: each one
is the decoded wire dict, prepared by the receiver's own per-event code
(``event_from_message`` for Celery; the clock/``local_received`` step and the
typed :class:`~aiocelev.Event` wrapper for aiocelev) and applied to the state.
Peak RSS is ``getrusage(RUSAGE_SELF).ru_maxrss`` at the end; ``base_rss`` is
the RSS after imports and setup.

``overload``: an aiocelev ``EventReceiver`` (default ``buffer_size`` 10,000)
whose consumer handles ``consume_rate`` events/s while a separate process
publishes ten times that (batched stream) for ``duration`` seconds, under an
overflow policy; reports peak RSS, events received, dropped by the receiver,
and published.
"""

from __future__ import annotations

import time
from typing import Any

from ._common import WORKERS, current_rss_mib, peak_rss_mib, succeeded_fields, task_id


def _tasks(n: int) -> Any:
    """Yield fresh wire dicts: task-received and task-succeeded per task."""
    t0 = time.time() - n * 1e-3
    clock = 0
    nworkers = len(WORKERS)
    for i in range(n):
        host = WORKERS[i % nworkers]
        uuid = task_id(i)
        clock += 1
        yield {
            "hostname": host,
            "utcoffset": 0,
            "pid": 4242,
            "clock": clock,
            "uuid": uuid,
            "name": "proj.tasks.process_order",
            "args": f"({i}, 'priority')",
            "kwargs": "{'retry': True, 'source': 'api'}",
            "root_id": uuid,
            "parent_id": None,
            "retries": 0,
            "eta": None,
            "expires": None,
            "timestamp": t0 + i * 1e-3,
            "type": "task-received",
        }
        clock += 1
        event = {"hostname": host, "utcoffset": 0, "pid": 4242, "clock": clock}
        event.update(succeeded_fields(i))
        event["timestamp"] = t0 + i * 1e-3 + 0.0005
        event["type"] = "task-succeeded"
        yield event


def _state_celery(n: int) -> dict[str, Any]:
    from celery.events.receiver import EventReceiver
    from celery.events.state import State

    from ._common import celery_app

    app = celery_app("memory://")
    receiver = EventReceiver(None, app=app)
    state = State()
    prepare = receiver.event_from_message
    apply = state.event
    base = current_rss_mib()
    start = time.perf_counter()
    for data in _tasks(n):
        apply(prepare(data)[1])
    elapsed = time.perf_counter() - start
    return {"tasks_kept": len(state.tasks), "base_rss_mib": base, "elapsed": elapsed}


def _state_aiocelev(n: int) -> dict[str, Any]:
    from aiocelev import EventReceiver
    from aiocelev._state import ClusterState

    receiver = EventReceiver("memory://bench")
    state = ClusterState()
    prepare = receiver._prepare
    apply = state.apply
    base = current_rss_mib()
    start = time.perf_counter()
    now = time.time
    for data in _tasks(n):
        apply(prepare(data, now(), 0.0))
    elapsed = time.perf_counter() - start
    return {"tasks_kept": len(state.tasks), "base_rss_mib": base, "elapsed": elapsed}


def _overload(spec: dict[str, Any]) -> dict[str, Any]:
    import anyio

    from ._receivers import run_aiocelev

    consume_rate = spec["consume_rate"]
    n = int(consume_rate * 10 * spec["duration"])
    stream = {"mode": "raw-batched", "n": n, "rate": consume_rate * 10}
    step = 10
    pause = step / consume_rate
    counter = {"seen": 0}

    async def handle(event: Any) -> None:
        counter["seen"] += 1
        if counter["seen"] % step == 0:
            await anyio.sleep(pause)

    def stats(receiver: Any) -> dict[str, Any]:
        s = receiver.statistics()
        return {"dropped": s.dropped, "buffered_at_end": s.buffered, "events_decoded": s.events}

    result = run_aiocelev(
        dict(spec, n=n),
        stream,
        handle,
        receiver_options={
            "overflow": spec["overflow"],
            "buffer_size": spec.get("buffer_size", 10_000),
        },
        broker_options=spec.get("broker_options"),
        idle=0.5,
        stats=stats,
        hard_stop=True,
    )
    result["rss_at_end_mib"] = round(current_rss_mib(), 1)
    return result


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement (in a fresh process)."""
    if spec["kind"] == "overload":
        return _overload(spec)
    n = spec["tasks"]
    result = _state_aiocelev(n) if spec["impl"] == "aiocelev" else _state_celery(n)
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    result["tasks_seen"] = n
    return result
