"""The ``top`` screen fits ordinary terminals: 80x24 upward, every section, keys on the last line.

Frames are drawn with rich's recording console at each size, as the live view
draws them, and once in a real terminal (tmux) by the command itself.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from typing import Any

import pytest

from aiocelev import ClusterState

pytest.importorskip("rich")

from rich.console import Console

from aiocelev.cli._topview import TopView

from ..conftest import IN_CI
from ._helpers import COMMAND, ROOT

NOW = 1_800_000_000.0
SIZES = [(80, 24), (100, 30), (120, 45), (200, 60)]
TRACEBACK = (
    "Traceback (most recent call last):\n"
    + "".join(
        f'  File "/srv/app/tasks/images.py", line {n}, in resize_step_{n}\n    step_{n}(image, width)\n'
        for n in range(1, 9)
    )
    + "ImageTooLarge: /uploads/img_5418.jpg: 42.7 MB exceeds the 40 MB limit\n"
)


def ev(type_: str, hostname: str, at: float, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "hostname": hostname, "timestamp": at, "local_received": at, **fields}


def busy_state(workers: int = 6, tasks: int = 60) -> ClusterState:
    """A cluster like a real one: several workers, many tasks, long names, failures."""
    state = ClusterState(time_source=lambda: NOW)
    beat = {"freq": 2.0, "active": 2, "processed": 40, "loadavg": [1.5, 1.25, 0.75]}
    for w in range(workers):
        state.apply(
            ev("worker-online", f"celery-worker-{w}@host-{w}.example.com", NOW - 30, **beat)
        )
        state.apply(
            ev("worker-heartbeat", f"celery-worker-{w}@host-{w}.example.com", NOW - 1, **beat)
        )
    for n in range(tasks):
        uuid = f"{n:08x}-6f2c-4d7e-9a51-3b8e0c1d2f{n:02x}"
        host = f"celery-worker-{n % workers}@host-{n % workers}.example.com"
        at = NOW - tasks + n
        state.apply(
            ev("task-received", host, at, uuid=uuid, name=f"proj.images.resize_image_{n}",
               args=f"('/uploads/img_{n}.jpg', {n * 100})", kwargs="{'quality': 85}")
        )  # fmt: skip
        state.apply(ev("task-started", host, at + 0.1, uuid=uuid))
        if n % 7 == 3:
            state.apply(ev("task-failed", host, at + 0.5, uuid=uuid,
                           exception="ImageTooLarge('/uploads/img.jpg: 42.7 MB')", traceback=TRACEBACK))  # fmt: skip
        elif n % 3:
            state.apply(ev("task-succeeded", host, at + 0.4, uuid=uuid, result="'ok'", runtime=0.3))
    return state


def draw(view: TopView, width: int, height: int) -> list[str]:
    """The frame as the live view draws it, through rich's recording console."""
    console = Console(record=True, width=width, height=height, file=io.StringIO(),
                      force_terminal=True, color_system="truecolor")  # fmt: skip
    console.print(view.render(NOW, width, height))
    return console.export_text().splitlines()


def selected_row(lines: list[str]) -> str:
    rows = [line for line in lines if line.startswith(">")]
    assert len(rows) == 1, "\n".join(lines)
    return rows[0]


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_every_section_fits(width: int, height: int) -> None:
    state = busy_state()
    uuids = {uuid[:8] for uuid in state.tasks}
    view = TopView(state, title="aiocelev top · redis://127.0.0.1:6379/0")
    lines = draw(view, width, height)
    text = "\n".join(lines)
    assert len(lines) == height, text
    assert max(len(line) for line in lines) <= width
    assert lines[0].startswith("aiocelev top · redis://127.0.0.1:6379/0  workers 6/6 alive")
    assert "q quit" in lines[-1]  # the key hints, always on the last line
    assert any(line.startswith("worker ") for line in lines)
    assert any(line.startswith("tasks ") and "total 60" in line for line in lines)
    assert any(line.startswith("events/s ") for line in lines)
    rows = [line for line in lines if line[3:11] in uuids]
    assert len(rows) >= 3, text  # the task list keeps room
    top = next(i for i, line in enumerate(lines) if line.startswith("╭─ Task "))
    bottom = next(i for i, line in enumerate(lines) if line.startswith("╰"))
    assert top < bottom == height - 2, text  # the detail panel is whole, above the hints


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_a_failed_task_shows_its_error_and_the_end_of_its_traceback(
    width: int, height: int
) -> None:
    view = TopView(busy_state())
    while "FAILURE" not in selected_row(draw(view, width, height)):
        view.key("j")
    lines = draw(view, width, height)
    assert len(lines) == height
    panel = lines[next(i for i, line in enumerate(lines) if line.startswith("╭─ Task ")) :]
    body = "\n".join(panel)
    assert "exception ImageTooLarge(" in body
    assert "ImageTooLarge: /uploads/img_5418.jpg: 42.7 MB" in body  # the traceback's last line
    assert panel[-2].startswith("╰") and "q quit" in panel[-1]
    if "more lines (PgDn scrolls)" in body:  # the middle is left out, and can be scrolled to
        view.key("pagedown")
        scrolled = "\n".join(draw(view, width, height))
        assert "in resize_step_1" in scrolled or "in resize_step_2" in scrolled
        assert "lines " in scrolled


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_the_selection_stays_in_view(width: int, height: int) -> None:
    view = TopView(busy_state())
    for _ in range(45):
        view.key("j")
    assert view.selected is not None
    assert view.selected[:8] in selected_row(draw(view, width, height))
    view.key("G")  # the oldest task
    assert view.selected is not None and view.selected.startswith("00000000")
    assert "00000000" in selected_row(draw(view, width, height))
    view.key("g")  # back to the newest, following
    assert view.selected is None
    assert "0000003b" in selected_row(draw(view, width, height))


def test_filters_by_state_worker_and_search() -> None:
    view = TopView(busy_state())
    view.key("s")  # the first state present: STARTED
    assert view.state_filter == "STARTED"
    while view.state_filter != "FAILURE":
        view.key("s")
    lines = draw(view, 120, 45)
    assert "filter: state=FAILURE" in lines[0]
    states = {t.state for t in view.tasks()}
    assert states == {"FAILURE"} and len(view.tasks()) == 9
    view.key("w")
    assert view.worker_filter == "celery-worker-0@host-0.example.com"
    assert {t.worker for t in view.tasks()} == {view.worker_filter}
    view.key("c")
    for key in ["/", "i", "m", "a", "g", "e", "_", "1", "7", "backspace", "enter"]:
        view.key(key)
    assert view.search == "image_1"
    names = {t.name for t in view.tasks()}
    assert names == {"proj.images.resize_image_1"} | {
        f"proj.images.resize_image_1{d}" for d in range(10)
    }
    assert "search='image_1'" in draw(view, 80, 24)[0]
    view.key("/")
    view.key("x")
    view.key("escape")  # cancels the typing, keeps the search
    assert view.search == "image_1" and view.typing is None
    view.key("c")
    assert len(view.tasks()) == 60
    view.key("/")
    for key in "nothing-like-this":
        view.key(key)
    view.key("enter")
    assert "no matching task" in "\n".join(draw(view, 80, 24))


def test_pause_freezes_the_list() -> None:
    state = busy_state()
    view = TopView(state)
    view.key(" ")
    assert view.paused
    before = [t.uuid for t in view.tasks()]
    state.apply(
        ev(
            "task-received",
            "celery-worker-0@host-0.example.com",
            NOW,
            uuid="new-one",
            name="proj.new",
        )
    )
    assert [t.uuid for t in view.tasks()] == before
    assert "PAUSED" in draw(view, 100, 30)[0]
    view.key(" ")
    assert view.tasks()[0].uuid == "new-one"


def test_zoom_gives_the_detail_the_whole_screen() -> None:
    view = TopView(busy_state())
    while "FAILURE" not in selected_row(draw(view, 80, 24)):
        view.key("j")
    view.key("enter")
    lines = draw(view, 80, 24)
    assert lines[1].startswith("╭─ Task ") and lines[-2].startswith("╰")
    assert "line 8, in resize_step_8" in "\n".join(lines)
    view.key("escape")
    assert not view.zoomed and not view.quit


def test_many_workers_are_cut_with_a_count() -> None:
    lines = draw(TopView(busy_state(workers=30)), 80, 24)
    assert any("more workers" in line for line in lines)
    assert len(lines) == 24


@pytest.mark.parametrize(("width", "height"), [(80, 24), (120, 45)])
def test_top_in_a_real_terminal(width: int, height: int) -> None:
    if shutil.which("tmux") is None:
        if IN_CI:
            pytest.fail("tmux is not installed (CI=true: .ci/run installs it)")
        pytest.skip("tmux is not installed")
    session = f"aiocelev-top-{width}x{height}-{time.monotonic_ns()}"
    command = " ".join([*COMMAND, "demo", "--workers", "4", "--rate", "40", "--seed", "3"])
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", str(width), "-y", str(height),
         "-c", str(ROOT), command],
        check=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        screen = ""
        while time.monotonic() < deadline:
            screen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
            ).stdout
            if "FAILURE" in screen and "╰" in screen and "q quit" in screen:
                break
            time.sleep(0.2)
        lines = screen.rstrip("\n").splitlines()
        assert "q quit" in lines[-1], screen
        assert lines[0].startswith("aiocelev demo · 4 workers"), screen
        assert any(line.startswith("╭─ Task ") for line in lines), screen
        assert max(len(line) for line in lines) <= width
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_render_top_is_public_and_fits() -> None:
    from aiocelev import render_top

    text = render_top(busy_state(), width=80, height=24, now=NOW, title="mine")
    lines = text.splitlines()
    assert len(lines) == 24 and lines[0].startswith("mine  workers 6/6 alive")
    assert all(len(line) <= 80 and line == line.rstrip() for line in lines)
    assert "q quit" not in text  # no key hints outside the live view
