"""``aiocelev tasks``: the task history of a store, from the terminal."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from aiocelev.cli import main
from aiocelev.store import open_store

from ..store._events import lifecycle


@pytest.fixture
def history(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/history.db"

    async def fill() -> None:
        async with open_store(url) as store:
            events = []
            for i, outcome in enumerate(["SUCCESS", "FAILURE", "RETRY"] * 5):
                name = "proj.add" if i % 2 else "proj.mail"
                events += lifecycle(
                    f"t{i:02}", outcome, 100.0 + i, name, args=f"({i}, 'two words')"
                )
            await store.write(events)

    anyio.run(fill)
    return url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_pages_follow_the_cursor(history: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "tasks", "--store", history, "--state", "failure", "--json", "-n", "3"
    )
    assert code == 0
    first = [json.loads(line) for line in out.splitlines()]
    assert [t["uuid"] for t in first] == ["t13", "t10", "t07"]
    assert all(t["state"] == "FAILURE" and t["exception"] == "ValueError('bad')" for t in first)
    cursor = err.split("--cursor ")[1].split()[0]
    code, out, err = run(
        capsys, "tasks", "--store", history, "-s", "FAILURE", "--json", "--cursor", cursor
    )
    assert code == 0 and "--cursor" not in err
    assert [json.loads(line)["uuid"] for line in out.splitlines()] == ["t04", "t01"]


def test_filters_search_and_count(history: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "tasks", "--store", history, "--name", "proj.add", "--count")
    assert (code, out) == (0, "7\n")
    code, out, _ = run(
        capsys, "tasks", "--store", history, "--count", "--", "two words", "-args:(3,"
    )
    assert (code, out) == (0, "14\n")
    code, out, _ = run(
        capsys, "tasks", "--store", history, "--search", "exception:runtimeerror", "--count"
    )
    assert (code, out) == (0, "5\n")
    code, out, _ = run(capsys, "tasks", "--store", history, "--since", "110", "--until", "112.5")
    lines = out.splitlines()
    assert [line.split()[4] for line in lines] == [
        "proj.mail[t12]",
        "proj.add[t11]",
        "proj.mail[t10]",
    ]


def test_one_task_in_full_and_errors(history: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "tasks", "--store", history, "--uuid", "t01")
    assert code == 0 and "exception: ValueError('bad')" in out and "traceback:" in out
    code, out, _ = run(capsys, "tasks", "--store", history, "--uuid", "t01", "--json")
    assert json.loads(out)["name"] == "proj.add"
    code, _, err = run(capsys, "tasks", "--store", history, "--uuid", "nope")
    assert code == 1 and "no task 'nope'" in err
    code, _, err = run(capsys, "tasks", "--store", history, "--since", "someday")
    assert code == 2 and "invalid received_start" in err
    code, _, err = run(capsys, "tasks", "--store", "mysql://x/y")
    assert code == 2 and "no store for" in err
    code, _, err = run(capsys, "tasks")
    assert code == 2 and "--store" in err
