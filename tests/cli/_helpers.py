"""Run the ``aiocelev`` command as a user does: a subprocess with bounded waits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .._helpers import read_output

ROOT = Path(__file__).resolve().parents[2]
COMMAND = [sys.executable, "-m", "aiocelev"]


@pytest.fixture(
    name="broker_url",
    params=[
        pytest.param("amqp", marks=pytest.mark.amqp),
        pytest.param("redis", marks=pytest.mark.redis),
    ],
)
def broker_url_fixture(request: pytest.FixtureRequest) -> str:
    """Each real broker's URL in turn (``amqp_url``, then ``redis_url``)."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess: no broker preset, no colour, wide lines."""
    env = {k: v for k, v in os.environ.items() if k != "AIOCELEV_BROKER_URL"}
    env.update({"COLUMNS": "120", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def run_cli(*args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``aiocelev ARGS`` to completion and capture its output."""
    return subprocess.run(
        [*COMMAND, *args],
        cwd=ROOT,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def run_demo(broker_url: str, name: str) -> subprocess.CompletedProcess[str]:
    """Run a 2-second ``aiocelev demo --no-ui`` with workers ``<name>-1`` and ``<name>-2``."""
    return run_cli(
        "demo", "--no-ui", "--duration", "2", "--workers", "2", "--name", name,
        "--broker", broker_url, timeout=60,
    )  # fmt: skip


def run_cli_without_rich(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``aiocelev ARGS`` in a Python where importing ``rich`` fails (as if not installed)."""
    return run_cli_without("rich", *args, timeout=timeout)


def run_cli_without(
    module: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``aiocelev ARGS`` in a Python where importing *module* fails (as if not installed)."""
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        f"    if name == {module!r} or name.startswith({module + '.'!r}):\n"
        "        raise ImportError('No module named ' + repr(name), name=name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "from aiocelev.cli import main\n"
        f"sys.exit(main({list(args)!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Background:
    """``aiocelev ARGS`` running in the background, output kept in files."""

    def __init__(self, *args: str, **env: str) -> None:
        self.out = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()
        self.err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [*COMMAND, *args],
            cwd=ROOT,
            env=cli_env(**env),
            stdout=self.out,
            stderr=self.err,
            stdin=subprocess.DEVNULL,
            text=True,
        )

    def stdout(self) -> str:
        return read_output(self.out)

    def stderr(self) -> str:
        return read_output(self.err)

    def wait_for_stderr(self, text: str, timeout: float = 15) -> None:
        """Wait until *text* appears on stderr (e.g. the "listening on" line)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stderr():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"{text!r} not on stderr (exit {self.proc.poll()}):\n{self.stderr()}\n{self.stdout()}"
        )

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.out.close()
        self.err.close()

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of *text* parsed as JSON (each must be a JSON object)."""
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(isinstance(e, dict) for e in events)
    return events


def assert_no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr


def wait_for_events(
    proc: Background, predicate: Any, timeout: float = 20, what: str = "events"
) -> list[dict[str, Any]]:
    """Poll the JSON lines of a running ``events --json`` until *predicate(events)*."""
    deadline = time.monotonic() + timeout
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        text = proc.stdout()
        complete = text[: text.rfind("\n") + 1]
        events = json_lines(complete)
        if predicate(events):
            return events
        if proc.proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{what} not seen; stderr:\n{proc.stderr()}\nlast: {events[-5:]}")


class KillableProxy:
    """A loopback TCP proxy to a real broker that a test takes down and brings back.

    :meth:`kill` closes the listening socket and every forwarded connection (the
    client sees its connection drop and reconnects are refused); :meth:`restart`
    listens again on the same port.  Threads only: no event loop is shared with
    the code under test.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.restart()

    def restart(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(50)
        self.port = int(listener.getsockname()[1])
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
            except OSError:
                break
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def kill(self) -> None:
        if self._listener is not None:
            try:  # wakes the thread blocked in accept(), which holds the port until then
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
