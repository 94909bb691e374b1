"""The live view and colours on a real (pseudo-)terminal."""

from __future__ import annotations

import os
import re
import select
import sys
import time

import pytest

from ._helpers import COMMAND, ROOT, cli_env

pty = pytest.importorskip("pty")
pytest.importorskip("rich")


class Terminal:
    """``aiocelev ARGS`` on a pseudo-terminal of 120x45."""

    def __init__(self, *args: str) -> None:
        env = cli_env(COLUMNS="120", LINES="45", TERM="xterm-256color")
        env.pop("NO_COLOR", None)
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # pragma: no cover - the child
            os.chdir(ROOT)
            os.execve(sys.executable, [*COMMAND, *args], env)
        self.output = b""

    def read(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                try:
                    self.output += os.read(self.fd, 65536)
                except OSError:
                    return

    def read_until(self, text: bytes, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output and time.monotonic() < deadline:
            self.read(0.1)
        assert text in self.output, self.output[-2000:]

    def press(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read(0.1)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        raise AssertionError("still running")

    def crashed(self) -> bool:
        """Whether the command printed a Python traceback of its own.

        A failed demo task's traceback, shown inside the detail panel, is
        data and does not count: only a traceback at the start of a line does.
        """
        text = self.output.decode(errors="replace").replace("\r", "")
        return re.search(r"(?m)^Traceback \(most recent call last\)", text) is not None


def test_demo_live_view_keys_and_quit() -> None:
    term = Terminal("demo", "--duration", "60")
    term.read_until(b"demo-3@")
    term.read_until(b"SUCCESS")
    term.press(b"j")
    term.press(b"\x1b[B")
    term.read(0.5)
    term.press(b"q")
    assert term.wait() == 0
    text = term.output.decode(errors="replace")
    assert "\x1b[?1049h" in text  # the alternate screen, restored on exit
    assert text.rstrip().endswith("3/3")  # the summary after the view closed
    assert not term.crashed()


def test_demo_live_view_ctrl_c() -> None:
    term = Terminal("demo", "--duration", "60")
    term.read_until(b"demo-1@")
    term.press(b"\x03")
    assert term.wait() == 130
    text = term.output.decode(errors="replace")
    assert "tasks by state:" in text
    assert not term.crashed()


class _Tty:
    def isatty(self) -> bool:
        return True


def test_events_colour_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiocelev.cli._common import Style
    from aiocelev.cli._events import EventFormatter

    event = {"type": "task-failed", "hostname": "w@x", "timestamp": 0.0, "uuid": "u1"}
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    coloured = EventFormatter(Style(_Tty())).format(event)  # type: ignore[arg-type]
    assert "\x1b[31mtask failed\x1b[0m" in coloured
    assert "\x1b[1;36mw@x\x1b[0m" in coloured
    plain = EventFormatter(Style(sys.stdout)).format(event)
    assert plain == "w@x [1970-01-01 00:00:00.000000 UTC] task failed: u1"
    monkeypatch.setenv("NO_COLOR", "1")
    assert EventFormatter(Style(_Tty())).format(event) == plain  # type: ignore[arg-type]
