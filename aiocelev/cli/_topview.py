"""The screen of ``aiocelev top`` and ``aiocelev demo``, drawn with rich from a
:class:`~aiocelev._state.ClusterState`, and its live loop with key handling.

Importing this module imports rich (the ``cli`` extra); the commands import it
only when they draw.  :func:`render` is pure (state and time in, renderable
out), so the screen can be checked as text with :func:`to_text`;
:func:`live_view` redraws it until ``q`` or a signal.
"""

from __future__ import annotations

import io
import os
import select
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import anyio
from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .._state import ClusterState
from .._state_models import TaskState, WorkerState
from ._common import Context

__all__ = ["STATE_ORDER", "TopView", "live_view", "parse_keys", "read_keys", "render", "to_text"]

#: Task states in the order the counts are shown (others follow, sorted).
STATE_ORDER = (
    "PENDING",
    "RECEIVED",
    "STARTED",
    "RETRY",
    "SUCCESS",
    "FAILURE",
    "REVOKED",
    "REJECTED",
)

_STATE_STYLES = {
    "SUCCESS": "green",
    "FAILURE": "bold red",
    "REJECTED": "red",
    "REVOKED": "yellow",
    "RETRY": "yellow",
    "STARTED": "cyan",
    "RECEIVED": "blue",
}

_WORKER_STYLES = {"online": "green", "offline": "red", "lost": "yellow"}


def _age(now: float, then: float | None) -> str:
    if then is None:
        return "-"
    seconds = max(0.0, now - then)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _short(text: Any, width: int) -> str:
    value = "" if text is None else str(text)
    value = value.replace("\n", " ")
    return value if len(value) <= width else value[: width - 1] + "…"


def _workers_table(state: ClusterState, now: float) -> Table:
    table = Table(title="Workers", box=box.SIMPLE_HEAD, expand=True, title_justify="left")
    for name, justify in (
        ("worker", "left"),
        ("status", "left"),
        ("heartbeat", "right"),
        ("processed", "right"),
        ("active", "right"),
        ("load", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    workers: Sequence[WorkerState] = sorted(state.workers.values(), key=lambda w: w.hostname)
    for w in workers:
        status = w.status
        load = " ".join(f"{x:.2f}" for x in w.loadavg) if w.loadavg else "-"
        table.add_row(
            w.hostname,
            Text(status, style=_WORKER_STYLES.get(status, "")),
            _age(now, w.last_heartbeat),
            "-" if w.processed is None else str(w.processed),
            "-" if w.active is None else str(w.active),
            load,
        )
    if not workers:
        table.add_row(Text("no worker seen yet", style="dim"), "", "", "", "", "")
    return table


def _counts_table(state: ClusterState) -> Table:
    counts = state.state_counts()
    order = [s for s in STATE_ORDER if s in counts] + sorted(set(counts) - set(STATE_ORDER))
    table = Table(title="Tasks by state", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("state")
    table.add_column("tasks", justify="right")
    for name in order:
        table.add_row(Text(name, style=_STATE_STYLES.get(name, "")), str(counts[name]))
    table.add_row(Text("total", style="bold"), str(sum(counts.values())))
    return table


def _rates_table(state: ClusterState) -> Table:
    rates = state.rates()
    table = Table(title="Events/s", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("type")
    table.add_column("rate", justify="right")
    for type_, rate in sorted(rates.items(), key=lambda kv: (-kv[1], kv[0]))[:8]:
        if rate > 0:
            table.add_row(type_, f"{rate:.1f}")
    table.add_row(Text("all", style="bold"), f"{sum(rates.values()):.1f}")
    table.add_row(Text("events seen", style="dim"), str(state.event_count))
    return table


def _tasks_table(tasks: Sequence[TaskState], now: float, selected: str | None) -> Table:
    table = Table(title="Latest tasks", box=box.SIMPLE_HEAD, expand=True, title_justify="left")
    table.add_column("", width=1)
    table.add_column("uuid", no_wrap=True, overflow="ellipsis", ratio=3)
    table.add_column("name", no_wrap=True, overflow="ellipsis", ratio=2)
    table.add_column("state", no_wrap=True, min_width=8)
    table.add_column("worker", no_wrap=True, overflow="ellipsis", ratio=2)
    table.add_column("runtime", justify="right", no_wrap=True, min_width=8)
    table.add_column("updated", justify="right", no_wrap=True, min_width=7)
    for t in tasks:
        mark = ">" if t.uuid == selected else ""
        table.add_row(
            mark,
            t.uuid,
            _short(t.name, 40) or "?",
            Text(t.state, style=_STATE_STYLES.get(t.state, "")),
            _short(t.worker, 40) or "-",
            "-" if t.runtime is None else f"{t.runtime:.3f}s",
            _age(now, t.timestamp),
            style="reverse" if t.uuid == selected else None,
        )
    if not tasks:
        table.add_row("", Text("no task seen yet", style="dim"), "", "", "", "", "")
    return table


_DETAIL_FIELDS = (
    "name",
    "state",
    "worker",
    "client",
    "args",
    "kwargs",
    "result",
    "exception",
    "retries",
    "runtime",
    "eta",
    "expires",
    "parent_id",
    "root_id",
    "queue",
)
_DETAIL_TIMES = (
    "sent",
    "received",
    "started",
    "succeeded",
    "failed",
    "retried",
    "revoked",
    "rejected",
)


def _detail(task: TaskState | None, now: float, traceback_lines: int) -> Panel:
    if task is None:
        return Panel(Text("no task selected", style="dim"), title="Task", title_align="left")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("uuid", task.uuid)
    for field in _DETAIL_FIELDS:
        value = getattr(task, field, None)
        if value is None or (field == "root_id" and value == task.uuid):
            continue
        if field == "state":
            grid.add_row(field, Text(str(value), style=_STATE_STYLES.get(str(value), "")))
        elif field == "runtime":
            grid.add_row(field, f"{value:.3f}s")
        else:
            grid.add_row(field, _short(value, 200))
    for field in _DETAIL_TIMES:
        value = getattr(task, field, None)
        if isinstance(value, (int, float)):
            grid.add_row(field, f"{_age(now, value)} ago")
    if task.extra:
        for key, value in sorted(task.extra.items()):
            grid.add_row(key, _short(value, 200))
    parts: list[RenderableType] = [grid]
    if task.traceback:
        lines = task.traceback.rstrip().splitlines()[-traceback_lines:]
        parts.append(Text("\n".join(lines), style="red"))
    return Panel(Group(*parts), title=f"Task {task.uuid}", title_align="left")


class TopView:
    """The state of the screen: which task is selected, how many tasks are listed.

    The selection follows the newest task until a key moves it; it then stays
    on the same task (by id) while new tasks arrive.
    """

    def __init__(self, state: ClusterState, *, rows: int = 10) -> None:
        self.state = state
        self.rows = rows
        self.selected: str | None = None
        self.quit = False
        #: Whether the footer lists the keys (only when keys are read).
        self.keys = True

    def tasks(self) -> list[TaskState]:
        """The tasks listed on screen, newest first."""
        return self.state.recent_tasks(self.rows)

    def move(self, delta: int) -> None:
        """Move the selection *delta* rows down (negative: up)."""
        tasks = self.tasks()
        if not tasks:
            return
        ids = [t.uuid for t in tasks]
        index = ids.index(self.selected) if self.selected in ids else 0
        index = min(max(index + delta, 0), len(ids) - 1)
        self.selected = ids[index]

    def key(self, key: str) -> None:
        """Handle one key: ``j``/down, ``k``/up, ``g`` (follow newest), ``q`` (quit)."""
        if key in ("j", "down"):
            self.move(1)
        elif key in ("k", "up"):
            self.move(-1)
        elif key in ("g", "home"):
            self.selected = None
        elif key in ("q", "Q", "escape"):
            self.quit = True

    def fit(self, now: float, width: int, height: int, *, title: str = "aiocelev top") -> None:
        """Choose how many tasks to list so that the screen fits *height* lines."""
        one = render(self.state, now, self.selected, title=title, rows=1, keys=self.keys)
        used = to_text(one, width).count("\n")
        self.rows = max(3, height - used)

    def render(self, now: float, *, title: str = "aiocelev top") -> RenderableType:
        """The screen now."""
        return render(self.state, now, self.selected, title=title, rows=self.rows, keys=self.keys)


def render(
    state: ClusterState,
    now: float,
    selected: str | None = None,
    *,
    title: str = "aiocelev top",
    rows: int = 10,
    traceback_lines: int = 6,
    keys: bool = True,
) -> RenderableType:
    """One frame of ``aiocelev top``.

    :param state: the cluster state to show.
    :param now: the current epoch time (heartbeat and update ages are relative to it).
    :param selected: the id of the task whose detail is shown (``None``: the newest).
    :param rows: how many of the latest tasks to list.
    :param keys: end with a line listing the keys.
    """
    tasks = state.recent_tasks(rows)
    if selected is None or state.task(selected) is None:
        selected = tasks[0].uuid if tasks else None
    chosen = state.task(selected) if selected is not None else None
    summary = Table.grid(expand=True, padding=(0, 2))
    summary.add_column(ratio=1)
    summary.add_column(ratio=1)
    summary.add_column(ratio=1)
    summary.add_row(_counts_table(state), _rates_table(state), "")
    alive = len(state.alive_workers())
    header = Text.assemble(
        (title, "bold"),
        f"  workers {alive}/{len(state.workers)} alive, ",
        f"{len(state)} tasks, {state.event_count} events",
    )
    parts: list[RenderableType] = [
        header,
        _workers_table(state, now),
        summary,
        _tasks_table(tasks, now, selected),
        _detail(chosen, now, traceback_lines),
    ]
    if keys:
        parts.append(Text("j/k or ↓/↑ select a task · g follow newest · q quit", style="dim"))
    return Group(*parts)


def to_text(renderable: RenderableType, width: int = 120) -> str:
    """*renderable* as plain text (no colour, no control codes)."""
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        force_terminal=False,
        color_system=None,
        no_color=True,
        legacy_windows=False,
        emoji=False,
        highlight=False,
    )
    console.print(renderable)
    # rich pads every line to the full width; plain text has no trailing spaces.
    return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())


# -- the live loop and the keyboard ------------------------------------------------


async def live_view(view: TopView, ctx: Context, *, title: str, refresh: float = 0.5) -> None:
    """Draw *view* until ``q`` or a signal; keys are read when stdin is a terminal."""
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
