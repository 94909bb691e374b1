"""Events/s of ``celery.events.state.State`` vs ``aiocelev.ClusterState``.

Run: ``python benchmarks/bench_state.py [n_events]``.  Not a test: numbers
depend on the machine.  The stream is task-received/started/succeeded for
many tasks on several workers, with a heartbeat from every worker every two
seconds of stream time.
"""

from __future__ import annotations

import copy
import gc
import json
import sys
import time
import uuid as uuidlib
from typing import Any

from celery.events.state import State

from aiocelev._codec import decode_message
from aiocelev._events import Event, _wrap as wrap
from aiocelev._message import IncomingMessage
from aiocelev._state import ClusterState


def make_stream(n: int, workers: int = 8) -> list[dict[str, Any]]:
    """A realistic stream of about *n* wire dicts (receiver-side fields included)."""
    events: list[dict[str, Any]] = []
    t0 = 1_700_000_000.0
    clock = 0
    hosts = [f"celery@w{i}" for i in range(workers)]
    processed = dict.fromkeys(hosts, 0)
    i = 0
    next_hb = t0
    while len(events) < n:
        now = t0 + i * 0.001
        if now >= next_hb:
            for h in hosts:
                clock += 1
                events.append(
                    {
                        "hostname": h,
                        "utcoffset": 0,
                        "pid": 100,
                        "clock": clock,
                        "freq": 2.0,
                        "active": 1,
                        "processed": processed[h],
                        "loadavg": [0.1, 0.2, 0.3],
                        "sw_ident": "py-celery",
                        "sw_ver": "5.7.0",
                        "sw_sys": "Linux",
                        "timestamp": now,
                        "type": "worker-heartbeat",
                        "local_received": now + 0.001,
                    }
                )
            next_hb += 2.0
        h = hosts[i % workers]
        u = str(uuidlib.UUID(int=i))
        processed[h] += 1
        for typ, extra, dt in (
            (
                "task-received",
                {
                    "name": "proj.tasks.add",
                    "args": "(1, 2)",
                    "kwargs": "{}",
                    "root_id": u,
                    "parent_id": None,
                    "retries": 0,
                    "eta": None,
                    "expires": None,
                },
                0.0,
            ),
            ("task-started", {}, 0.0002),
            ("task-succeeded", {"result": "3", "runtime": 0.0005}, 0.0007),
        ):
            clock += 1
            ev = {"hostname": h, "utcoffset": 0, "pid": 100, "clock": clock, "uuid": u}
            ev.update(extra)
            ev["timestamp"] = now + dt
            ev["type"] = typ
            ev["local_received"] = now + dt + 0.001
            events.append(ev)
        i += 1
    return events[:n]


REPEAT = 5


def bench(label: str, make_fn: Any, make_items: Any, base: float | None = None) -> float:
    """Best of ``REPEAT`` runs of ``fn(item)`` over the items (fresh ones every run).

    Prints events/s and the ratio to *base*.  The machine may be shared, so the
    best run is the least disturbed one.
    """
    best = float("inf")
    for _ in range(REPEAT):
        fn, items = make_fn(), make_items()
        gc.collect()
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    rate = len(items) / best
    ratio = f"  x{rate / base:.2f}" if base else ""
    print(f"{label:<58} {rate:>12,.0f} ev/s{ratio}")
    return rate


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    stream = make_stream(n)
    print(
        f"{len(stream)} events ({sum(e['type'] == 'worker-heartbeat' for e in stream)} heartbeats)"
    )

    # State alone.
    celery_rate = bench(
        "celery State.event(dict)", lambda: State().event, lambda: copy.deepcopy(stream)
    )
    events = [Event.from_dict(e) for e in stream]
    bench("ClusterState.apply(Event)", lambda: ClusterState().apply, lambda: events, celery_rate)
    bench("ClusterState.apply(dict)", lambda: ClusterState().apply, lambda: stream, celery_rate)

    def from_dict_path() -> Any:
        cs = ClusterState()
        return lambda d: cs.apply(Event.from_dict(d))

    bench("ClusterState.apply(Event.from_dict(dict))", from_dict_path, lambda: stream, celery_rate)

    # Receive path: bytes -> dict(s) -> state.
    bodies = [
        json.dumps({k: v for k, v in e.items() if k != "local_received"}).encode() for e in stream
    ]
    from celery import Celery
    from celery.events.receiver import EventReceiver
    from kombu.utils.json import loads as kloads

    app = Celery(set_as_current=False)
    recv = EventReceiver(None, app=app)

    def celery_path() -> Any:
        state = State()
        return lambda body: state.event(recv.event_from_message(kloads(body))[1])

    celery_full = bench(
        "celery: kombu loads + event_from_message + State.event", celery_path, lambda: bodies
    )
    messages = [IncomingMessage(routing_key="", body=b) for b in bodies]
    now = time.time

    def aiocelev_path() -> Any:
        cs = ClusterState()

        def run(msg: IncomingMessage) -> None:
            dicts, _ = decode_message(msg)
            for d in dicts:
                d["local_received"] = now()
                cs.apply(wrap(d))

        return run

    bench(
        "aiocelev: decode_message + Event + ClusterState.apply",
        aiocelev_path,
        lambda: messages,
        celery_full,
    )
    bench("(decode_message alone)", lambda: decode_message, lambda: messages, celery_full)


if __name__ == "__main__":
    main()
