"""``aiocelev top``: a live view of the cluster (workers, task states, rates, latest tasks)."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio

from .._receiver import EventReceiver
from .._state import ClusterState
from .._url import mask_url
from ._common import (
    EXIT_OK,
    Context,
    add_broker_options,
    connection_line,
    diag,
    event_source,
    non_negative_float,
    positive_float,
    require_rich,
)

__all__ = ["feed", "register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``top`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "top",
        help="live view of workers, task states, event rates and latest tasks",
        description=(
            "A live terminal view of the cluster: workers (status, heartbeat age, "
            "processed, active, load), tasks by state, event rates, the latest tasks "
            "and the detail of the selected one. Keys: j/k or arrows move the "
            "selection, space pauses, / searches, s and w filter by state and worker, "
            "PgUp/PgDn scroll the task detail, enter zooms it, q quits. "
            "Needs the 'cli' extra (rich)."
        ),
    )
    parser.add_argument(
        "--once",
        "--snapshot",
        dest="once",
        action="store_true",
        help="listen for --wait seconds, print one frame as plain text and exit",
    )
    parser.add_argument(
        "--wait",
        type=non_negative_float,
        default=3.0,
        metavar="SECONDS",
        help="with --once: how long to listen before printing (default: 3)",
    )
    parser.add_argument(
        "--refresh",
        type=positive_float,
        default=0.5,
        metavar="SECONDS",
        help="seconds between screen updates (default: 0.5)",
    )
    parser.add_argument(
        "-f",
        "--filter",
        action="extend",
        nargs="+",
        metavar="ROUTING_KEY",
        help="only events matching these binding keys (default: '#')",
    )
    add_broker_options(parser)
    parser.set_defaults(func=run, limit=None, timeout=None)


async def feed(
    receiver: EventReceiver, state: ClusterState, check: Callable[[str], bool] | None = None
) -> None:
    """Apply every event of *receiver* (that passes *check*) to *state* until the stream ends.

    While the receiver is disconnected, *state* knows it (workers do not age).
    """
    remove = receiver.add_connection_listener(state.track_connection)
    try:
        async for event in receiver:
            if check is None or check(event.routing_key):
                state.apply(event)
    finally:
        remove()


def _terminal_size() -> tuple[int, int]:
    size = shutil.get_terminal_size((120, 40))
    return size.columns, size.lines


async def run(args: argparse.Namespace, ctx: Context) -> int:
    """Run ``aiocelev top``."""
    require_rich("top")
    from ._topview import TopView, live_view, render, to_text

    state = ClusterState()
    # On the live screen, losses are shown in a banner; stderr would scribble over
    # it, so they are said there after the screen closes.
    later: list[str] = []
    report = args.once or not sys.stdout.isatty()
    async with (
        event_source(args, report=report) as (receiver, check),
        anyio.create_task_group() as tg,
    ):
        if not report:
            receiver.add_connection_listener(lambda status: later.append(connection_line(status)))
        tg.start_soon(feed, receiver, state, check)
        title = f"aiocelev top · {mask_url(receiver.broker.url)}"
        if args.once:
            with ctx.interruptible():
                await anyio.sleep(args.wait)
            width, _ = _terminal_size()
            frame = render(
                state,
                time.time(),
                title=title,
                width=width,
                keys=False,
                connection=receiver.connection,
            )
            sys.stdout.write(to_text(frame, width))
            sys.stdout.flush()
        else:
            view = TopView(state)
            await live_view(
                view, ctx, title=title, refresh=args.refresh, connection=lambda: receiver.connection
            )
        tg.cancel_scope.cancel()
    for line in later:
        diag(line)
    return EXIT_OK
