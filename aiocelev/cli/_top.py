"""``aiocelev top``: a live view of the cluster (workers, task states, rates, latest tasks)."""

from __future__ import annotations

import argparse
import os
import select
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import anyio

from .._receiver import EventReceiver
from .._state import ClusterState
from .._url import mask_url
from ._common import (
    EXIT_ERROR,
    EXIT_OK,
    Context,
    add_broker_options,
    fail,
    non_negative_float,
    positive_float,
)
from ._events import open_receiver

if TYPE_CHECKING:
    from ._topview import TopView

__all__ = ["live_view", "read_keys", "register", "require_rich", "run"]


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


def require_rich(command: str, alternative: str = "") -> None:
    """Fail with one line when rich (the ``cli`` extra) is missing."""
    try:
        import rich  # noqa: F401
    except ImportError:
        fail(
            f"'aiocelev {command}' needs rich for its terminal view: "
            f"pip install 'aiocelev[cli]'{alternative}",
            EXIT_ERROR,
        )


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
    from ._topview import TopView, render, to_text

    state = ClusterState()
    receiver, check = open_receiver(args)
    async with receiver, anyio.create_task_group() as tg:
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


async def live_view(view: TopView, ctx: Context, *, title: str, refresh: float = 0.5) -> None:
    """Draw *view* until ``q`` or a signal; keys are read when stdin is a terminal."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    view.keys = _stdin_is_terminal()
    wake = _Wake()
    live = Live(
        view.render(time.time(), title=title),
        console=console,
        auto_refresh=False,
        screen=console.is_terminal,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    with live, ctx.interruptible():
        async with anyio.create_task_group() as tg:
            if view.keys:
                tg.start_soon(read_keys, view, wake.set)
            while not view.quit:
                now = time.time()
                view.fit(now, console.width, console.height, title=title)
                live.update(view.render(now, title=title), refresh=True)
                with anyio.move_on_after(refresh):
                    await wake.wait()
            tg.cancel_scope.cancel()


class _Wake:
    """A re-armable event: the screen loop sleeps on it, a key press sets it."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        try:
            await self._event.wait()
        finally:
            if self._event.is_set():
                self._event = anyio.Event()


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def _cbreak(fd: int) -> Iterator[None]:
    """Keys without Enter and without echo, restored afterwards."""
    try:
        import termios
        import tty
    except ImportError:  # not a POSIX terminal
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


_SEQUENCES = {
    b"\x1b[A": "up",
    b"\x1b[B": "down",
    b"\x1bOA": "up",
    b"\x1bOB": "down",
    b"\x1b[H": "home",
}


def parse_keys(data: bytes) -> list[str]:
    """Key names in *data* read from a terminal: letters as themselves, arrows as ``up``/``down``."""
    keys: list[str] = []
    i = 0
    while i < len(data):
        if data[i] == 0x1B:
            for seq, name in _SEQUENCES.items():
                if data.startswith(seq, i):
                    keys.append(name)
                    i += len(seq)
                    break
            else:
                j = i + 1
                if j == len(data):
                    keys.append("escape")
                elif data[j] in b"[O":  # an unknown sequence: skip it whole
                    j += 1
                    while j < len(data) and data[j] in b"0123456789;":
                        j += 1
                    j += 1
                i = j
            continue
        keys.append(chr(data[i]))
        i += 1
    return keys


async def _wait_readable(fd: int) -> None:
    waiter = getattr(anyio, "wait_readable", None)
    if waiter is not None:
        await waiter(fd)
        return
    while not select.select([fd], [], [], 0)[0]:  # noqa: ASYNC110 - anyio < 4.7 cannot wait on a fd
        await anyio.sleep(0.05)


async def read_keys(view: TopView, redraw: Callable[[], None]) -> None:
    """Feed key presses from the terminal on stdin to *view* (cbreak mode while running)."""
    fd = sys.stdin.fileno()
    with _cbreak(fd):
        while not view.quit:
            await _wait_readable(fd)
            data = os.read(fd, 64)
            if not data:
                return
            for key in parse_keys(data):
                view.key(key)
            redraw()
