"""The screen of ``aiocelev top`` and ``aiocelev demo``, drawn with rich from a
:class:`~aiocelev.ClusterState`, and its live loop with key handling.

Importing this module imports rich (the ``cli`` extra); the commands import it
only when they draw.  :class:`TopView` holds what the user chose (selection,
filters, search, pause, detail scroll) and draws a frame that fits the given
width and height exactly: every section gets a share of the lines, the task
list scrolls to keep the selection in view and the task detail scrolls inside
its panel, so the key hints stay on the last line from 80x24 upward.
:func:`render` is pure (state and time in, renderable out) and :func:`to_text`
turns a frame into plain text; :func:`live_view` redraws it until ``q`` or a
signal.
"""

from __future__ import annotations

import io
import os
import select
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import anyio
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .._link import ConnectionStatus
from .._state import ClusterState
from .._state_models import TaskState, WorkerState
from ._common import Context, format_duration

__all__ = [
    "STATE_ORDER",
    "TopView",
    "live_view",
    "parse_keys",
    "read_keys",
    "render",
    "to_text",
]

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

#: How many of the newest tasks the list (and its filters) look at.
POOL = 2000
#: Seconds the "reconnected after …" banner stays after a gap closed.
RECONNECTED_BANNER = 30.0

_KEYS_WIDE = (
    "↑↓/jk select · g newest · space pause · / search · s state · w worker · c clear · "
    "PgUp/PgDn detail · enter zoom · q quit"
)
_KEYS_NARROW = "j/k select · space pause · / search · s/w filter · c clear · PgUp/PgDn · q quit"

_DETAIL_FIELDS = (
    "name",
    "state",
    "exception",
    "result",
    "worker",
    "client",
    "args",
    "kwargs",
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
_LABEL = 10  # width of the detail's label column


def _age(now: float, then: float | None) -> str:
    if then is None:
        return "-"
    seconds = max(0.0, now - then)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _line(*parts: str | tuple[str, str]) -> Text:
    """One screen line: cut with an ellipsis rather than wrapped."""
    text = Text.assemble(*parts)
    text.no_wrap = True
    text.overflow = "ellipsis"
    return text


class TopView:
    """What the screen shows, and the keys that change it.

    The selection follows the newest task until a key moves it; it then stays
    on the same task (by id) while new tasks arrive, and the list scrolls to
    keep it in view.  Filters (state, worker, a search text matched against
    id, name, worker, arguments and exception) narrow the list; ``space``
    pauses it (the list and the clock stop; the counts go on).

    :param state: the cluster state to show.
    :param title: the first words of the header line.
    """

    def __init__(self, state: ClusterState, *, title: str = "aiocelev top") -> None:
        self.state = state
        self.title = title
        #: The selected task's id; ``None``: the newest (the list follows new tasks).
        self.selected: str | None = None
        self.quit = False
        #: Whether the footer lists the keys (only when keys are read).
        self.keys = True
        self.state_filter: str | None = None
        self.worker_filter: str | None = None
        self.search = ""
        #: The search text being typed after ``/`` (``None``: not typing).
        self.typing: str | None = None
        self.paused = False
        self.zoomed = False
        self.detail_scroll = 0
        #: The receiver's connection, for the banner (``None``: not known).
        self.connection: ConnectionStatus | None = None
        self._offset = 0
        self._frozen: list[str] | None = None
        self._frozen_now: float | None = None
        self._page = 5
        self._detail_page = 5
        #: The rows of the list on screen: ``(first, count)``.
        self.window = (0, 0)

    # -- the list ------------------------------------------------------------

    def tasks(self) -> list[TaskState]:
        """The tasks the list shows, newest first, filtered (frozen while paused)."""
        if self._frozen is not None:
            found = (self.state.task(uuid) for uuid in self._frozen)
            return [t for t in found if t is not None]
        return [t for t in self.state.recent_tasks(POOL) if self._matches(t)]

    def _matches(self, task: TaskState) -> bool:
        if self.state_filter is not None and task.state != self.state_filter:
            return False
        if self.worker_filter is not None and task.worker != self.worker_filter:
            return False
        if self.search:
            needle = self.search.lower()
            hay = (task.uuid, task.name, task.worker, task.args, task.kwargs, task.exception)
            return any(needle in str(v).lower() for v in hay if v is not None)
        return True

    def _index(self, tasks: Sequence[TaskState]) -> int:
        """The selected row (0 when following the newest, or when the task left the list)."""
        if self.selected is None:
            return 0
        for index, task in enumerate(tasks):
            if task.uuid == self.selected:
                return index
        return 0

    def move(self, delta: int) -> None:
        """Move the selection *delta* rows down (negative: up)."""
        tasks = self.tasks()
        if not tasks:
            return
        index = min(max(self._index(tasks) + delta, 0), len(tasks) - 1)
        self.selected = tasks[index].uuid
        self.detail_scroll = 0

    # -- keys ----------------------------------------------------------------

    def key(self, key: str) -> None:
        """Handle one key (see the footer; ``/`` starts typing a search)."""
        if self.typing is not None:
            self._type(key)
            return
        actions: dict[str, Callable[[], None]] = {
            "j": lambda: self.move(1),
            "down": lambda: self.move(1),
            "k": lambda: self.move(-1),
            "up": lambda: self.move(-1),
            "g": self.follow,
            "home": self.follow,
            "G": lambda: self.move(len(self.tasks())),
            "end": lambda: self.move(len(self.tasks())),
            " ": self.toggle_pause,
            "p": self.toggle_pause,
            "/": self._start_search,
            "s": self._next_state,
            "w": self._next_worker,
            "c": self.clear_filters,
            "pagedown": lambda: self.scroll(self._detail_page),
            "J": lambda: self.scroll(1),
            "pageup": lambda: self.scroll(-self._detail_page),
            "K": lambda: self.scroll(-1),
            "enter": self._toggle_zoom,
            "q": self._quit,
            "Q": self._quit,
        }
        action = actions.get(key)
        if action is not None:
            action()
        elif key == "escape":
            if self.zoomed:
                self.zoomed = False
            else:
                self._quit()

    def _quit(self) -> None:
        self.quit = True

    def follow(self) -> None:
        """Select the newest task and follow new ones again."""
        self.selected = None
        self._offset = 0
        self.detail_scroll = 0

    def toggle_pause(self) -> None:
        """Freeze the list and the clock, or let them run again."""
        if self.paused:
            self.paused = False
            self._frozen = None
            self._frozen_now = None
        else:
            self._frozen = [t.uuid for t in self.tasks()]
            self.paused = True

    def scroll(self, lines: int) -> None:
        """Scroll the task detail by *lines* (negative: up)."""
        self.detail_scroll = max(0, self.detail_scroll + lines)

    def clear_filters(self) -> None:
        """Drop the state, worker and search filters."""
        self.state_filter = self.worker_filter = None
        self.search = ""
        self._refilter()

    def _refilter(self) -> None:
        if self.paused:
            self._frozen = None
            self._frozen = [t.uuid for t in self.tasks()]
        self._offset = 0
        self.detail_scroll = 0

    def _toggle_zoom(self) -> None:
        self.zoomed = not self.zoomed
        self.detail_scroll = 0

    def _start_search(self) -> None:
        self.typing = self.search

    def _type(self, key: str) -> None:
        assert self.typing is not None
        if key == "enter":
            self.search, self.typing = self.typing, None
            self._refilter()
        elif key == "escape":
            self.typing = None
        elif key == "backspace":
            self.typing = self.typing[:-1]
        elif len(key) == 1 and key.isprintable():
            self.typing += key

    def _next_state(self) -> None:
        counts = self.state.state_counts()
        states = [s for s in STATE_ORDER if s in counts] + sorted(set(counts) - set(STATE_ORDER))
        self.state_filter = _next(states, self.state_filter)
        self._refilter()

    def _next_worker(self) -> None:
        self.worker_filter = _next(sorted(self.state.workers), self.worker_filter)
        self._refilter()

    # -- drawing -------------------------------------------------------------

    def render(
        self, now: float, width: int | None = None, height: int | None = None
    ) -> RenderableType:
        """The screen at *now*, fitted to *height* lines (``None``: as long as it takes).

        :param width: the screen's width, for wrapping the task detail (default 120).
        """
        if self._frozen is not None:
            if self._frozen_now is None:
                self._frozen_now = now
            now = self._frozen_now
        width = width or 120
        tasks = self.tasks()
        index = self._index(tasks)
        chosen = tasks[index] if tasks else None
        header = self._header()
        banner = self._banner(now)
        summary = [
            _counts_line(self.state, self._filtering(), len(tasks)),
            _rates_line(self.state),
        ]
        footer = self._footer(width)
        top: list[RenderableType] = [header, *([banner] if banner else [])]
        detail_lines, traceback = _detail_lines(chosen, now, width - 4)
        if height is None:
            self._page = self._detail_page = 10
            rows = min(len(tasks), 10)
            parts = [
                *top,
                _workers_table(self.state, now, None),
                *summary,
                self._tasks_table(tasks, index, rows, now, width),
                self._detail(chosen, detail_lines, traceback, None),
            ]
            return Group(*parts, *footer)
        avail = height - len(top) - len(footer)
        if self.zoomed and chosen is not None:
            parts = [*top, self._detail(chosen, detail_lines, traceback, max(3, avail))]
            return Group(*parts, *footer)
        avail -= len(summary)
        workers = len(self.state.workers)
        worker_rows = max(1, min(workers, avail // 6))
        avail -= 1 + worker_rows  # the table's header line and its rows
        detail_height = 0
        if avail >= 9 and chosen is not None:
            most = len(detail_lines) + 2
            detail_height = min(most, max(7, avail // 2))
            # Lines the list does not need go to the detail.
            spare = avail - detail_height - 1 - max(3, len(tasks))
            if spare > 0:
                detail_height = min(most, detail_height + spare)
        rows = max(1, avail - detail_height - 1)
        self._page = rows
        self._detail_page = max(1, detail_height - 3)
        parts = [
            *top,
            _workers_table(self.state, now, worker_rows),
            *summary,
            self._tasks_table(tasks, index, rows, now, width),
        ]
        if detail_height:
            parts.append(self._detail(chosen, detail_lines, traceback, detail_height))
        return Group(*parts, *footer)

    def _header(self) -> Text:
        state = self.state
        alive = len(state.alive_workers())
        parts: list[str | tuple[str, str]] = [
            (self.title, "bold"),
            f"  workers {alive}/{len(state.workers)} alive, "
            f"{len(state)} tasks, {state.event_count} events",
        ]
        if self.paused:
            parts.append(("  PAUSED", "bold reverse"))
        shown = []
        if self.state_filter:
            shown.append(f"state={self.state_filter}")
        if self.worker_filter:
            shown.append(f"worker={self.worker_filter}")
        if self.search:
            shown.append(f"search={self.search!r}")
        if shown:
            parts.append(("  filter: " + " ".join(shown), "bold yellow"))
        if self.typing is not None:
            parts.append((f"  search: {self.typing}▏ (enter apply · esc cancel)", "bold"))
        return _line(*parts)

    def _banner(self, now: float) -> Text | None:
        status = self.connection
        if status is None or status.gaps == 0:
            return None
        if not status.connected:
            lost = format_duration(max(0.0, time.time() - status.since))
            why = f": {status.reason}" if status.reason else ""
            return _line(
                (
                    f" disconnected from {status.broker}, reconnecting (gap #{status.gaps}) "
                    f"for {lost}{why}; workers are not aged meanwhile ",
                    "bold white on red",
                )
            )
        if status.last_gap is not None and time.time() - status.since < RECONNECTED_BANNER:
            return _line(
                (
                    f" reconnected to {status.broker} after {format_duration(status.last_gap)} "
                    f"(gap #{status.gaps}); events sent meanwhile may be missing ",
                    "bold black on green",
                )
            )
        return None

    def _footer(self, width: int) -> list[Text]:
        if not self.keys:
            return []
        return [_line((_KEYS_WIDE if width >= len(_KEYS_WIDE) else _KEYS_NARROW, "dim"))]

    def _tasks_table(
        self, tasks: Sequence[TaskState], index: int, rows: int, now: float, width: int
    ) -> Table:
        if self.selected is None:
            self._offset = 0
        elif index < self._offset:
            self._offset = index
        elif index >= self._offset + rows:
            self._offset = index - rows + 1
        self._offset = max(0, min(self._offset, max(0, len(tasks) - rows)))
        shown = tasks[self._offset : self._offset + rows]
        table = Table(box=None, expand=True, pad_edge=False, header_style="bold")
        table.add_column("", width=1, no_wrap=True)
        # Short ids on narrow screens (the detail's title has the whole id).
        id_width = 8 if width < 120 else (13 if width < 180 else 36)
        table.add_column("uuid", no_wrap=True, overflow="crop", width=id_width)
        table.add_column("name", no_wrap=True, overflow="ellipsis", ratio=3)
        table.add_column("state", no_wrap=True, width=8)
        table.add_column("worker", no_wrap=True, overflow="ellipsis", ratio=2)
        table.add_column("runtime", justify="right", no_wrap=True, width=8)
        table.add_column("updated", justify="right", no_wrap=True, width=7)
        chosen = tasks[index].uuid if tasks else None
        for t in shown:
            mark = ">" if t.uuid == chosen else ""
            table.add_row(
                mark,
                t.uuid,
                t.name or "?",
                Text(t.state, style=_STATE_STYLES.get(t.state, "")),
                t.worker or "-",
                "-" if t.runtime is None else f"{t.runtime:.3f}s",
                _age(now, t.timestamp),
                style="reverse" if t.uuid == chosen else None,
            )
        if not shown:
            empty = "no matching task" if self._filtering() else "no task seen yet"
            table.add_row("", "", Text(empty, style="dim"), "", "", "", "")
        for _ in range(rows - max(1, len(shown))):
            table.add_row("", "", "", "", "", "", "")
        self.window = (self._offset, len(shown))
        return table

    def _filtering(self) -> bool:
        return bool(self.state_filter or self.worker_filter or self.search)

    def _detail(
        self, task: TaskState | None, lines: list[Text], traceback: int | None, height: int | None
    ) -> RenderableType:
        if task is None:
            return Panel(Text("no task selected", style="dim"), title="Task", title_align="left")
        if height is None:
            return Panel(Group(*lines), title=f"Task {task.uuid}", title_align="left")
        visible = max(1, height - 2)
        most = max(0, len(lines) - visible)
        self.detail_scroll = min(self.detail_scroll, most)
        start = self.detail_scroll
        shown = lines[start : start + visible]
        subtitle = None
        if most:
            subtitle = f"lines {start + 1}-{start + len(shown)} of {len(lines)} · PgUp/PgDn"
        if most and start == 0 and traceback is not None and visible >= 6:
            # Unscrolled, a failure shows its fields and the end of its traceback
            # (where the error is), with the middle left out.
            head = lines[: min(traceback, visible - 3)]
            tail = lines[traceback:][-(visible - len(head) - 1) :]
            hidden = len(lines) - len(head) - len(tail)
            marker = _line((f"⋮ {hidden} more lines (PgDn scrolls)", "dim"))
            shown = [*head, marker, *tail]
            subtitle = f"{len(lines)} lines · PgUp/PgDn"
        return Panel(
            Group(*shown),
            title=f"Task {task.uuid}",
            title_align="left",
            subtitle=subtitle,
            subtitle_align="right",
            height=height,
        )


def _next(values: Sequence[str], current: str | None) -> str | None:
    """The value after *current* in *values*, then ``None`` (no filter), then the first."""
    if not values:
        return None
    if current is None or current not in values:
        return values[0]
    index = values.index(current) + 1
    return values[index] if index < len(values) else None


def _workers_table(state: ClusterState, now: float, rows: int | None) -> Table:
    table = Table(box=None, expand=True, pad_edge=False, header_style="bold")
    table.add_column("worker", no_wrap=True, overflow="ellipsis", ratio=1)
    table.add_column("status", no_wrap=True, width=7)
    table.add_column("heartbeat", justify="right", no_wrap=True, width=9)
    table.add_column("processed", justify="right", no_wrap=True, width=9)
    table.add_column("active", justify="right", no_wrap=True, width=6)
    table.add_column("load", justify="right", no_wrap=True, width=14)
    workers: Sequence[WorkerState] = sorted(state.workers.values(), key=_worker_order)
    shown = workers if rows is None or len(workers) <= rows else workers[: rows - 1]
    for w in shown:
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
    if len(shown) < len(workers):
        more = len(workers) - len(shown)
        table.add_row(Text(f"… {more} more worker{'s' if more > 1 else ''}", style="dim"))
    if not workers:
        table.add_row(Text("no worker seen yet", style="dim"), "", "", "", "", "")
    return table


def _worker_order(worker: WorkerState) -> tuple[int, str]:
    # Alive workers first: on a small screen, those that are cut are the gone ones.
    return (0 if worker.status == "online" else 1, worker.hostname)


def _counts_line(state: ClusterState, filtering: bool, listed: int) -> Text:
    counts = state.state_counts()
    order = [s for s in STATE_ORDER if s in counts] + sorted(set(counts) - set(STATE_ORDER))
    parts: list[str | tuple[str, str]] = [("tasks  ", "bold")]
    for name in order:
        parts += [(name, _STATE_STYLES.get(name, "")), f" {counts[name]}  "]
    parts.append(("total", "bold"))
    parts.append(f" {sum(counts.values())}")
    if filtering:
        parts.append((f"  ({listed} match the filter)", "bold yellow"))
    return _line(*parts)


def _rates_line(state: ClusterState) -> Text:
    rates = state.rates()
    ranked = sorted(((k, v) for k, v in rates.items() if v > 0), key=lambda kv: (-kv[1], kv[0]))
    listed = "  ".join(f"{type_} {rate:.1f}" for type_, rate in ranked)
    return _line(
        ("events/s  ", "bold"),
        ("all", "bold"),
        f" {sum(rates.values()):.1f}  ",
        listed,
        (f"  ({state.event_count} seen)", "dim"),
    )


def _wrap(label: str, value: str, width: int, style: str = "") -> list[Text]:
    """``label  value`` wrapped to *width*, continuation lines under the value."""
    room = max(10, width - _LABEL)
    chunks: list[str] = []
    for part in value.splitlines() or [""]:
        chunks += textwrap.wrap(part, room, replace_whitespace=False, drop_whitespace=False) or [""]
    lines = []
    for n, chunk in enumerate(chunks):
        lines.append(
            _line((label.ljust(_LABEL) if n == 0 else " " * _LABEL, "bold"), (chunk, style))
        )
    return lines


def _detail_lines(task: TaskState | None, now: float, width: int) -> tuple[list[Text], int | None]:
    """The task detail, one :class:`~rich.text.Text` per screen line (for scrolling).

    Also returns where the traceback starts among the lines (``None``: no traceback).
    """
    if task is None:
        return [], None
    lines: list[Text] = []  # the uuid is the panel's title
    for field in _DETAIL_FIELDS:
        value = getattr(task, field, None)
        if value is None or (field == "root_id" and value == task.uuid):
            continue
        if field == "runtime":
            lines += _wrap(field, f"{value:.3f}s", width)
        else:
            lines += _wrap(field, str(value), width, _STATE_STYLES.get(str(value), ""))
    times = [
        f"{field} {_age(now, getattr(task, field))} ago"
        for field in _DETAIL_TIMES
        if isinstance(getattr(task, field, None), (int, float))
    ]
    if times:
        lines += _wrap("events", " · ".join(times), width)
    for key, value in sorted((task.extra or {}).items()):
        lines += _wrap(str(key), str(value), width)
    traceback = None
    if task.traceback:
        traceback = len(lines)
        for text in task.traceback.rstrip().splitlines():
            for chunk in textwrap.wrap(text, max(10, width), drop_whitespace=False) or [""]:
                lines.append(_line((chunk, "red")))
    return lines, traceback


def render(
    state: ClusterState,
    now: float,
    selected: str | None = None,
    *,
    title: str = "aiocelev top",
    width: int | None = None,
    height: int | None = None,
    keys: bool = True,
    connection: ConnectionStatus | None = None,
) -> RenderableType:
    """One frame of ``aiocelev top``.

    :param state: the cluster state to show.
    :param now: the current epoch time (heartbeat and update ages are relative to it).
    :param selected: the id of the task whose detail is shown (``None``: the newest).
    :param width: the screen width (wraps the task detail; default 120).
    :param height: the screen height: the frame fits it (``None``: as long as it takes).
    :param keys: end with a line listing the keys.
    :param connection: the receiver's connection, shown as a banner after a loss.
    """
    view = TopView(state, title=title)
    view.selected = selected
    view.keys = keys
    view.connection = connection
    return view.render(now, width, height)


def to_text(renderable: RenderableType, width: int = 120, height: int | None = None) -> str:
    """*renderable* as plain text (no colour, no control codes, no trailing spaces)."""
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        height=height if height is not None else 25,
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


async def live_view(
    view: TopView,
    ctx: Context,
    *,
    title: str,
    refresh: float = 0.5,
    connection: Callable[[], ConnectionStatus | None] | None = None,
) -> None:
    """Draw *view* until ``q`` or a signal; keys are read when stdin is a terminal.

    :param connection: returns the receiver's connection status, for the banner.
    """
    from rich.live import Live

    console = Console()
    view.title = title
    view.keys = _stdin_is_terminal()
    wake = _Wake()
    live = Live(
        view.render(time.time(), console.width, console.height),
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
                if connection is not None:
                    view.connection = connection()
                frame = view.render(time.time(), console.width, console.height)
                live.update(frame, refresh=True)
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
    b"\x1bOH": "home",
    b"\x1b[1~": "home",
    b"\x1b[F": "end",
    b"\x1bOF": "end",
    b"\x1b[4~": "end",
    b"\x1b[5~": "pageup",
    b"\x1b[6~": "pagedown",
}
_CONTROLS = {0x0D: "enter", 0x0A: "enter", 0x7F: "backspace", 0x08: "backspace"}


def parse_keys(data: bytes) -> list[str]:
    """Key names in *data* read from a terminal.

    Letters are themselves; arrows, Home, End, PgUp, PgDn, Enter, Backspace and a
    lone Escape are ``up``, ``down``, ``home``, ``end``, ``pageup``, ``pagedown``,
    ``enter``, ``backspace`` and ``escape``; other escape sequences are skipped.
    """
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
        keys.append(_CONTROLS.get(data[i], chr(data[i])))
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
