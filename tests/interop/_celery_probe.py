"""Run Celery's own EventReceiver + State on a broker and report what they saw.

Usage: ``python -m tests.interop._celery_probe BROKER_URL NODENAME TIMEOUT [EXCHANGE]``

Prints ``READY`` once its queue is bound, then one JSON line when it saw
``worker-offline`` from NODENAME (or after TIMEOUT seconds without it):
``{"types": [...], "tasks": {uuid: state}, "alive_at_heartbeat": [...],
"alive_at_end": bool, "events": int}``.  Only events from NODENAME count.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from celery import Celery
from celery.events.state import State


def main() -> None:
    url, nodename, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    app = Celery("probe", broker=url)
    if len(sys.argv) > 4:
        app.conf.event_exchange = sys.argv[4]
    state = State()
    seen: list[str] = []
    alive_at_heartbeat: list[bool] = []
    done = {"offline": False}

    def on_event(event: dict[str, Any]) -> None:
        if event.get("hostname") != nodename:
            return
        state.event(event)
        seen.append(event["type"])
        if event["type"] == "worker-heartbeat":
            alive_at_heartbeat.append(state.workers[nodename].alive)
        if event["type"] == "worker-offline":
            done["offline"] = True

    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": on_event})
        receiver.on_consume_ready = lambda *a, **k: print("READY", flush=True)
        try:
            for _ in receiver.consume(limit=None, timeout=timeout, wakeup=False):
                if done["offline"]:
                    break
        except TimeoutError:
            pass
    worker = state.workers.get(nodename)
    print(
        json.dumps(
            {
                "types": seen,
                "tasks": {uuid: task.state for uuid, task in state.tasks.items()},
                "results": {uuid: task.result for uuid, task in state.tasks.items()},
                "alive_at_heartbeat": alive_at_heartbeat,
                "alive_at_end": bool(worker and worker.alive),
                "events": len(seen),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
