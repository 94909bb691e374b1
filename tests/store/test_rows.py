"""Row building: the common-case shortcut gives exactly the row of the general path."""

from __future__ import annotations

from typing import Any

import pytest

from aiocelev import TaskState
from aiocelev.store import _rows
from aiocelev.store._rows import _task_row, task_row

from ._events import ev, expected, lifecycle


def test_the_shortcut_and_the_general_path_build_the_same_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[dict[str, Any]] = []
    for i, outcome in enumerate(["SUCCESS", "FAILURE", "RETRY", "REVOKED", "PROGRESS", "STARTED"]):
        events += lifecycle(f"plain-{i}", outcome, 10.0 + i, args=f"({i}, 'x')")
    events += [
        ev("task-received", "nul", 1.0, name="a\x00b", args="()", kwargs="{}"),
        ev("task-received", "uni", 2.0, name="proj.ünï", args="('日本',)", kwargs="{}"),
        ev("task-succeeded", "obj", 3.0, result={"a": 1}, runtime=0.5),
        ev("task-received", "ints", 4.0, retries=2**80, eta=12, name="proj.n"),
        ev("task-received", "int-ts", 5, name="proj.t"),
        ev("task-started", "clock", 6.0, clock=2**70),
        ev("task-succeeded", "int-runtime", 8.0, runtime=1),
        ev("task-received", "sur\udcff", 9.0, name="proj.s"),
        ev("task-received", "nan", float("nan"), name="proj.nan"),
        ev("task-received", "empty", 10.0, name="", args="", kwargs=""),
    ]
    state = expected(events)
    general: list[str] = []

    def counted(t: TaskState, broker: str | None) -> tuple[Any, ...]:
        general.append(t.uuid)
        return _task_row(t, broker)

    monkeypatch.setattr(_rows, "_task_row", counted)
    for t in state.tasks.values():
        assert task_row(t, "memory://") == _task_row(t, "memory://"), t.uuid
    # The plain tasks took the shortcut (plain-4 has a custom event's extra), every other
    # one the general path.
    plain = {"plain-0", "plain-1", "plain-2", "plain-3", "plain-5", "empty"}
    assert sorted(general) == sorted(set(state.tasks) - plain)
