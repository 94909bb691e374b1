"""``aiocelev demo``: simulated async workers running realistic tasks.

The workers come from :func:`aiocelev._simulation.simulate_cluster` (nodes
``demo-N@<host>``, heartbeats every 2 s, successes, failures with tracebacks,
retries, revoked and expired tasks).  A receiver feeds a
:class:`~aiocelev._state.ClusterState` that the terminal view (as ``top``) and
the final summary read.  On an external broker, Flower and ``celery events``
see the simulated workers too.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection
from contextlib import AsyncExitStack
from typing import Any

import anyio

from .._receiver import EventReceiver
from .._simulation import SimulationStatistics, simulate_cluster
from .._state import ClusterState
from .._url import mask_url
from ..brokers import Broker
from ._common import (
    EXIT_OK,
    ConnectionReporter,
    Context,
    add_broker_options,
    connect_broker,
    connection_line,
    diag,
    non_negative_float,
    positive_float,
    positive_int,
    require_rich,
    resolve_broker_url,
)

__all__ = ["register", "run"]

DEMO_DEFAULT_BROKER = "memory://"
#: Seconds between heartbeats of the simulated workers (Celery's default).
HEARTBEAT_FREQ = 2.0
#: Seconds running tasks get to finish when the demo ends (then they are revoked).
GRACE = 1.0
#: The longest the demo waits, at the end, for the receiver to see every event sent.
CATCH_UP = 3.0


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="simulated workers running realistic tasks (default broker: memory://)",
        description=(
            "Run simulated async workers (demo-N@<host>) that send Celery events: "
            "successes, failures with tracebacks, retries and revoked tasks, heartbeats "
            "every 2 s. By default everything runs in this process on memory:// and the "
            "live view (as 'aiocelev top') shows it; with --broker the workers publish "
            "to a real broker, where Flower and 'celery events' see them. "
            "--no-ui prints a summary at the end instead (no rich needed)."
        ),
    )
    parser.add_argument(
        "-w",
        "--workers",
        type=positive_int,
        default=3,
        metavar="N",
        help="how many simulated workers (default: 3)",
    )
    parser.add_argument(
        "-r",
        "--rate",
        type=positive_float,
        default=30.0,
        metavar="EVENTS_PER_S",
        help="about how many events per second all workers send together (default: 30)",
    )
    parser.add_argument(
        "--duration",
        type=non_negative_float,
        metavar="SECONDS",
        help="stop after this many seconds (default: until Ctrl-C or q; with --no-ui: 5)",
    )
    parser.add_argument(
        "--no-ui", action="store_true", help="no live view: print a summary at the end"
    )
    parser.add_argument(
        "--name",
        type=_node_prefix,
        default="demo",
        metavar="NAME",
        help="node names are NAME-1@<host>, NAME-2@<host>... (default: demo)",
    )
    parser.add_argument(
        "--seed", type=int, metavar="N", help="seed the random choices (repeatable runs)"
    )
    add_broker_options(parser, default_hint=DEMO_DEFAULT_BROKER)
    parser.set_defaults(func=run)


def _node_prefix(text: str) -> str:
    """An argparse type: a node name prefix (no ``@``, no spaces)."""
    if not text or "@" in text or any(ch.isspace() for ch in text):
        raise argparse.ArgumentTypeError(f"not a node name prefix: {text!r}")
    return text


# -- the command -----------------------------------------------------------------


class _Seen:
    """What the demo's receiver saw of the simulated workers."""

    def __init__(self) -> None:
        self.received = 0
        self.hostnames: Collection[str] = ()


async def _count(
    receiver: EventReceiver, state: ClusterState, seen: _Seen, caught_up: Callable[[], None]
) -> None:
    async for event in receiver:
        state.apply(event)
        if event.get("hostname") in seen.hostnames:
            seen.received += 1
            caught_up()


async def _close(broker: Broker) -> None:
    with anyio.CancelScope(shield=True):
        await broker.aclose()


def _summary(
    stats: SimulationStatistics,
    hostnames: Collection[str],
    received: int,
    state: ClusterState,
    url: str,
    elapsed: float,
) -> str:
    ours = set(hostnames)
    by_state: Counter[str] = Counter(
        task.state for task in state.tasks.values() if task.worker in ours
    )
    order = ("SUCCESS", "FAILURE", "RETRY", "REVOKED", "STARTED", "RECEIVED", "REJECTED")
    states = sorted(by_state, key=lambda s: (order.index(s) if s in order else len(order), s))
    listed = ", ".join(f"{s} {by_state[s]}" for s in states) or "none"
    seen = sum(1 for h in ours if state.worker(h) is not None)
    lines = [
        f"demo finished after {elapsed:.1f}s on {mask_url(url)}: "
        f"{len(ours)} workers, {sum(by_state.values())} tasks",
        f"  tasks by state: {listed}",
        f"  retries: {stats.executions.get('RETRY', 0)}",
        f"  events: {stats.sent} sent, {received} received",
        f"  workers seen by the receiver: {seen}/{len(ours)}",
    ]
    return "\n".join(lines) + "\n"


async def run(args: argparse.Namespace, ctx: Context) -> int:
    """Run ``aiocelev demo``."""
    url = resolve_broker_url(args.broker, DEMO_DEFAULT_BROKER)
    ui = not args.no_ui
    if ui:
        require_rich("demo", " (or run it with --no-ui)")
    duration = args.duration if args.duration is not None else (None if ui else 5.0)
    state = ClusterState()
    seen = _Seen()
    sim = simulate_cluster(
        url,
        workers=args.workers,
        rate=args.rate,
        seed=args.seed,
        name=args.name,
        heartbeat=HEARTBEAT_FREQ,
        grace=GRACE,
    )
    seen.hostnames = frozenset(sim.hostnames)
    started = time.monotonic()
    stopped = False
    done = anyio.Event()

    def caught_up() -> None:
        if stopped and seen.received >= sim.statistics().sent:
            done.set()

    broker = await connect_broker(url, args.connect_timeout)
    receiver = EventReceiver(
        broker,
        connect_timeout=args.connect_timeout,
        on_connection=None if ui else ConnectionReporter(),
    )
    receiver.add_connection_listener(state.track_connection)
    # On the live screen, losses are shown in its banner and said on stderr once it closes.
    later: list[str] = []
    if ui:
        receiver.add_connection_listener(lambda status: later.append(connection_line(status)))
    async with AsyncExitStack() as stack:
        stack.push_async_callback(_close, broker)
        await stack.enter_async_context(receiver)
        tg = await stack.enter_async_context(anyio.create_task_group())
        tg.start_soon(_count, receiver, state, seen, caught_up)
        async with sim:  # leaving it lets the workers wind down (not interruptible)
            with ctx.interruptible(), anyio.move_on_after(duration):
                if ui:
                    from ._topview import TopView, live_view

                    title = f"aiocelev demo · {args.workers} workers · {mask_url(url)}"
                    await live_view(
                        TopView(state), ctx, title=title, connection=lambda: receiver.connection
                    )
                else:
                    until = f"for {duration:g}s" if duration is not None else "until Ctrl-C"
                    diag(f"running {args.workers} simulated workers on {mask_url(url)} {until}")
                    await anyio.sleep_forever()
        elapsed = time.monotonic() - started
        stopped = True
        # Wait (briefly) until the receiver has seen everything the workers sent.
        caught_up()
        with anyio.move_on_after(CATCH_UP):
            await done.wait()
        tg.cancel_scope.cancel()
    for line in later:
        diag(line)
    sys.stdout.write(_summary(sim.statistics(), sim.hostnames, seen.received, state, url, elapsed))
    sys.stdout.flush()
    return EXIT_OK
