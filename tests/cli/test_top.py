"""The ``top`` screen rendered headless, as text; keys and selection."""

from __future__ import annotations

from typing import Any

import pytest

from aiocelev import ClusterState

pytest.importorskip("rich")

from aiocelev.cli._topview import TopView, parse_keys, render, to_text

NOW = 1_800_000_000.0


def ev(type_: str, hostname: str, at: float, **fields: Any) -> dict[str, Any]:
    return {
        "type": type_,
        "hostname": hostname,
        "timestamp": at,
        "local_received": at,
        "clock": int(at * 10) % 100000,
        "pid": 1,
        "utcoffset": 0,
        **fields,
    }


def make_state() -> ClusterState:
    state = ClusterState(time_source=lambda: NOW)
    beat = {"freq": 2.0, "active": 1, "processed": 3, "loadavg": [0.5, 0.25, 0.125]}
    state.apply(ev("worker-online", "alpha@host", NOW - 10, **beat))
    state.apply(ev("worker-heartbeat", "alpha@host", NOW - 1.5, **beat))
    state.apply(ev("worker-online", "beta@host", NOW - 60, freq=2.0, active=0, processed=0))
    state.apply(ev("worker-offline", "beta@host", NOW - 50, freq=2.0, active=0, processed=0))
    state.apply(
        ev(
            "task-received",
            "alpha@host",
            NOW - 5,
            uuid="u-ok",
            name="app.add",
            args="(1, 2)",
            kwargs="{}",
        )
    )
    state.apply(ev("task-started", "alpha@host", NOW - 4.9, uuid="u-ok"))
    state.apply(ev("task-succeeded", "alpha@host", NOW - 4.5, uuid="u-ok", result="3", runtime=0.4))
    state.apply(
        ev(
            "task-received",
            "alpha@host",
            NOW - 3,
            uuid="u-bad",
            name="app.boom",
            args="()",
            kwargs="{}",
        )
    )
    state.apply(ev("task-started", "alpha@host", NOW - 2.9, uuid="u-bad"))
    state.apply(
        ev(
            "task-failed",
            "alpha@host",
            NOW - 2.5,
            uuid="u-bad",
            exception="ValueError('boom')",
            traceback='Traceback (most recent call last):\n  File "app.py", line 9, in boom\nValueError: boom\n',
        )
    )
    state.apply(
        ev(
            "task-received",
            "alpha@host",
            NOW - 1,
            uuid="u-run",
            name="app.slow",
            args="(5,)",
            kwargs="{}",
        )
    )
    state.apply(ev("task-started", "alpha@host", NOW - 0.9, uuid="u-run"))
    return state


def test_render_shows_workers_states_and_latest_tasks() -> None:
    text = to_text(render(make_state(), NOW, title="test top"), width=140)
    assert "test top" in text
    lines = text.splitlines()
    alpha = next(line for line in lines if "alpha@host" in line and "online" in line)
    assert "1.5s" in alpha  # heartbeat age
    assert "0.50 0.25 0.12" in alpha or "0.50 0.25 0.13" in alpha
    beta = next(line for line in lines if "beta@host" in line)
    assert "offline" in beta
    assert "workers 1/2 alive" in text
    for state in ("SUCCESS", "FAILURE", "STARTED"):
        assert state in text
    assert "total" in text
    for name in ("app.add", "app.boom", "app.slow"):
        assert name in text
    # The newest task is selected by default and detailed.
    assert "Task u-run" in text
    assert "(5,)" in text


def test_render_details_the_selected_task_with_its_traceback() -> None:
    text = to_text(render(make_state(), NOW, "u-bad"), width=140)
    assert "Task u-bad" in text
    assert "ValueError('boom')" in text
    assert "ValueError: boom" in text  # the traceback's last line
    selected = next(line for line in text.splitlines() if line.lstrip().startswith(">"))
    assert "u-bad" in selected


def test_render_empty_state() -> None:
    text = to_text(render(ClusterState(time_source=lambda: NOW), NOW), width=100)
    assert "no worker seen yet" in text
    assert "no task seen yet" in text
    assert "no task selected" in text


def test_keys_move_the_selection() -> None:
    view = TopView(make_state())
    assert [t.uuid for t in view.tasks()] == ["u-run", "u-bad", "u-ok"]
    view.key("j")
    assert view.selected == "u-bad"
    view.key("down")
    view.key("down")  # stays on the last row
    assert view.selected == "u-ok"
    view.key("k")
    assert view.selected == "u-bad"
    view.key("g")
    assert getattr(view, "selected") is None  # noqa: B009 - mypy keeps the narrowed type
    assert getattr(view, "quit") is False  # noqa: B009
    view.key("q")
    assert view.quit


def test_parse_keys() -> None:
    assert parse_keys(b"jk") == ["j", "k"]
    assert parse_keys(b"\x1b[A\x1b[B") == ["up", "down"]
    assert parse_keys(b"\x1bOB") == ["down"]
    assert parse_keys(b"\x1b[15~q") == ["q"]  # an unknown sequence (F5) is skipped
    assert parse_keys(b"\x1b[5~\x1b[6~\r\x7f") == ["pageup", "pagedown", "enter", "backspace"]
    assert parse_keys(b"\x1b") == ["escape"]
