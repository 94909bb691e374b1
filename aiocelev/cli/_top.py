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
            "selection, g follows the newest task, q quits. Needs the 'cli' extra (rich)."
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
    """Apply every event of *receiver* (that passes *check*) to *state* until the stream ends."""
    async for event in receiver:
        if check is None or check(event.routing_key):
            state.apply(event)


def _terminal_width() -> int:
    return shutil.get_terminal_size((120, 40)).columns


async def run(args: argparse.Namespace, ctx: Context) -> int:
    """Run ``aiocelev top``."""
    require_rich("top")
    from ._topview import TopView, live_view, render, to_text

    state = ClusterState()
    async with event_source(args) as (receiver, check), anyio.create_task_group() as tg:
        tg.start_soon(feed, receiver, state, check)
        title = f"aiocelev top · {mask_url(receiver.broker.url)}"
        if args.once:
            with ctx.interruptible():
                await anyio.sleep(args.wait)
            frame = render(state, time.time(), title=title, keys=False)
            sys.stdout.write(to_text(frame, _terminal_width()))
            sys.stdout.flush()
        else:
            await live_view(TopView(state), ctx, title=title, refresh=args.refresh)
        tg.cancel_scope.cancel()
    return EXIT_OK
