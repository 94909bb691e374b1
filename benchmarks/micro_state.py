"""In-process micro-benchmark of :class:`aiocelev.ClusterState`.

``python -m benchmarks.micro_state [--n N] [--repeat R]``: realistic streams of
received events (typed :class:`~aiocelev.Event` objects with ``local_received``,
as a receiver hands them over) are applied to a fresh
``ClusterState(max_tasks=10000)`` — so eviction runs as in a long-lived
monitor — with ``apply_many`` (what the ``monitor`` case does) and with
``apply`` per event.  Events per CPU-second, best of *R* runs (the machine may
be shared: the best run is the least disturbed one).

Streams:

* ``monitor``: the ``monitor`` case's stream (task-received / started /
  succeeded per task from four workers, in order), plus one heartbeat per
  worker every 1,000 events;
* ``interleaved``: the same events as a busy worker sends them (receive *i*,
  start *i-2*, succeed *i-4*), so most events find their task already kept,
  plus the heartbeats.
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

from aiocelev._events import Event, event_class
from aiocelev._state import ClusterState

from ._common import WORKERS, lifecycle_events

_new = object.__new__
_set = object.__setattr__


def _heartbeat(host: str, ts: float, processed: int, clock: int) -> dict[str, Any]:
    return {
        "hostname": host,
        "utcoffset": 0,
        "pid": 4242,
        "clock": clock,
        "freq": 2.0,
        "active": 1,
        "processed": processed,
        "loadavg": [0.1, 0.2, 0.3],
        "sw_ident": "py-celery",
        "sw_ver": "5.7.0",
        "sw_sys": "Linux",
        "timestamp": ts,
        "type": "worker-heartbeat",
    }


def stream(n: int, interleaved: bool) -> list[dict[str, Any]]:
    """About *n* wire dicts as a receiver prepares them (``local_received`` set)."""
    events = list(lifecycle_events(n, t0=1_700_000_000.0))
    if interleaved:
        tasks = [events[i : i + 3] for i in range(0, len(events), 3)]
        ordered: list[dict[str, Any]] = []
        for i in range(len(tasks) + 4):
            if i < len(tasks):
                ordered.append(tasks[i][0])
            if 0 <= i - 2 < len(tasks) and len(tasks[i - 2]) > 1:
                ordered.append(tasks[i - 2][1])
            if 0 <= i - 4 < len(tasks) and len(tasks[i - 4]) > 2:
                ordered.append(tasks[i - 4][2])
        events = ordered
    out: list[dict[str, Any]] = []
    processed = dict.fromkeys(WORKERS, 0)
    for i, event in enumerate(events):
        if i % 1000 == 0:
            for host in WORKERS:
                out.append(_heartbeat(host, event["timestamp"], processed[host], event["clock"]))
        if event["type"] == "task-started":
            processed[event["hostname"]] += 1
        out.append(event)
    for event in out:
        event["local_received"] = event["timestamp"] + 0.001
    return out


def wrap(dicts: list[dict[str, Any]]) -> list[Event]:
    """The dicts as the receiver's typed events (wrapped without copying)."""
    out = []
    for d in dicts:
        event = _new(event_class(d["type"]))
        _set(event, "_fields", d)
        out.append(event)
    return out


def _apply_all(state: ClusterState, events: list[Event], how: str) -> None:
    if how == "apply_many":
        state.apply_many(events)
    else:
        apply = state.apply
        for event in events:
            apply(event)


def measure(events: list[Event], how: str, repeat: int) -> float:
    """Best events per CPU-second of applying *events* to a fresh state."""
    best = 0.0
    for _ in range(repeat):
        state = ClusterState(max_tasks=10_000)
        gc.collect()
        t0 = time.process_time()
        _apply_all(state, events, how)
        elapsed = time.process_time() - t0
        assert state.event_count == len(events) and state.ignored_events == 0
        best = max(best, len(events) / elapsed)
    return best


def main() -> None:
    """Print events per CPU-second for each stream and way of applying."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for name, interleaved in (("monitor", False), ("interleaved", True)):
        events = wrap(stream(args.n, interleaved))
        for how in ("apply_many", "apply"):
            rate = measure(events, how, args.repeat)
            print(f"{name:12} {how:10} {rate:12,.0f} events/CPU-s", flush=True)


if __name__ == "__main__":
    main()
