"""Instructions per event, aiocelev vs Celery, in process, counted by callgrind.

``python -m benchmarks.instructions [--n N]``: the batched stream of the
``receive_batched`` and ``monitor`` cases (task-received / started / succeeded
from four workers, 24 events per message), as message bodies in memory, goes
through each side's receive path above the transport:

* aiocelev: :class:`aiocelev.EventReceiver` on a subscription that yields the
  messages from a list, consumed with ``async for`` (``receive``) or
  ``receiver.batches(dicts=True)`` into ``ClusterState.apply_many`` (``monitor``);
* Celery: kombu's JSON decode of each body, then Celery's
  ``EventReceiver._receive`` (what its consumer callback runs) with a ``"*"``
  handler that counts (``receive``) or calls ``State.event`` (``monitor``).

Each measurement runs in a fresh process under ``valgrind --tool=callgrind``
twice, handling ``N/10`` and ``N`` events of the same ``N`` built up front:
the difference divided by the difference in events is what one event costs,
without start-up, imports and the building of the stream.
Instruction counts do not depend on what else the machine is doing (the same
binary and input give the same count), so the ratio is repeatable where
wall-clock ratios on a shared machine are not; it leaves out the broker
adapter, the socket and the scheduling, which the end-to-end cases include.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from typing import Any

_MODES = ("receive", "monitor")
_SIDES = ("aiocelev", "celery")


def _bodies(n: int) -> list[bytes]:
    from aiocelev._codec import dumps

    from ._common import lifecycle_events

    events = list(lifecycle_events(n))
    return [dumps(events[i : i + 24]).encode() for i in range(0, n, 24)]


def _run_aiocelev(bodies: list[bytes], mode: str) -> int:
    import anyio

    from aiocelev import ClusterState, EventReceiver
    from aiocelev._message import IncomingMessage

    from .micro_receive import _ListBroker

    messages = [IncomingMessage("task.multi", body) for body in bodies]

    async def main() -> int:
        count = 0
        broker: Any = _ListBroker(messages)
        async with EventReceiver(broker, buffer_size=10_000) as receiver:
            if mode == "receive":
                async for _event in receiver:
                    count += 1
            else:
                state = ClusterState(max_tasks=10_000)
                async for batch in receiver.batches(dicts=True):
                    state.apply_many(batch)
                    count += len(batch)
        return count

    return anyio.run(main)


def _run_celery(bodies: list[bytes], mode: str) -> int:
    from celery import Celery
    from celery.events.state import State
    from kombu.serialization import loads

    app = Celery(set_as_current=False)
    count = 0
    if mode == "receive":

        def handle(event: dict[str, Any]) -> None:
            nonlocal count
            count += 1

    else:
        state = State(max_tasks_in_memory=10_000)

        def handle(event: dict[str, Any]) -> None:
            nonlocal count
            count += 1
            state.event(event)

    receiver = app.events.Receiver(None, handlers={"*": handle})
    accept = {"application/json"}
    for body in bodies:
        receiver._receive(loads(body, "application/json", "utf-8", accept=accept), None)
    return count


def _child(side: str, mode: str, n: int, total: int) -> None:
    # The same set-up whatever n is (all *total* bodies are built): only the
    # events handled differ between the two runs of a measurement.
    bodies = _bodies(total)[: n // 24]
    count = (_run_aiocelev if side == "aiocelev" else _run_celery)(bodies, mode)
    if count != n:
        raise SystemExit(f"{side} {mode}: {count} events handled, expected {n}")


def _instructions(side: str, mode: str, n: int, total: int) -> int:
    proc = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "benchmarks.instructions",
            "--child",
            side,
            mode,
            str(n),
            str(total),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    found = re.search(r"Collected : ([\d,]+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"{side} {mode} n={n} failed: {proc.stderr[-500:]}")
    return int(found.group(1).replace(",", ""))


def per_event(side: str, mode: str, n: int) -> float:
    """Instructions one event costs on *side* in *mode* (two runs, the difference)."""
    small = max(24, n // 10 // 24 * 24)
    return (_instructions(side, mode, n, n) - _instructions(side, mode, small, n)) / (n - small)


def main() -> None:
    """Print instructions per event for both sides and the ratio, per mode."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions")
    parser.add_argument("--n", type=int, default=24_000, help="events (a multiple of 24)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        side, mode, n, total = args.child
        _child(side, mode, int(n), int(total))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed (Debian: apt-get install valgrind)")
    n = max(240, args.n // 24 * 24)
    print(f"{'mode':8} {'aiocelev':>14} {'celery':>14} {'ratio':>7}   (instructions per event)")
    for mode in _MODES:
        a = per_event("aiocelev", mode, n)
        c = per_event("celery", mode, n)
        print(f"{mode:8} {a:14,.0f} {c:14,.0f} {c / a:6.2f}x", flush=True)


if __name__ == "__main__":
    main()
