"""Broker and set-up errors: one clear line each, quickly, with the server's own reason."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from aiocelev.cli import main

from ._helpers import assert_no_traceback, run_cli, run_cli_without


def _one_error_line(stderr: str) -> str:
    assert_no_traceback(stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("aiocelev: error: "), stderr
    return lines[0]


@pytest.mark.parametrize(
    ("module", "url", "extra"),
    [("redis", "redis://127.0.0.1:6379/0", "redis"), ("aio_pika", "amqp://localhost//", "amqp")],
)
def test_missing_extra_is_said_once(module: str, url: str, extra: str) -> None:
    result = run_cli_without(module, "events", "--broker", url)
    assert result.returncode == 1
    line = _one_error_line(result.stderr)
    assert line.count("pip install") == 1, line
    assert line.count("needs the") == 1, line
    assert line.endswith(f"pip install 'aiocelev[{extra}]'"), line


@contextmanager
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()
        for conn in accepted:
            conn.close()


@pytest.mark.parametrize("scheme", ["amqp://guest:secret@", "redis://:secret@"])
def test_connect_timeout_is_honoured_when_the_port_does_not_speak(scheme: str) -> None:
    # The adapters' own handshake timeouts are 5 s and more; 0.5 s is the user's.
    with silent_port() as port:
        url = f"{scheme}127.0.0.1:{port}/0"
        result = run_cli("events", "--broker", url, "--connect-timeout", "0.5", timeout=20)
    assert result.returncode == 1
    line = _one_error_line(result.stderr)
    assert line.endswith("no answer within 0.5s (--connect-timeout)"), line
    assert line.count(f"127.0.0.1:{port}") == 1, line  # the URL once
    assert "secret" not in line


@pytest.mark.parametrize("command", ["events", "top", "record"])
@pytest.mark.parametrize("scheme", ["amqp://guest:guest@", "redis://"])
def test_refused_connection_is_reported_at_once(command: str, scheme: str, tmp_path) -> None:
    # A long --connect-timeout: a refused connection is an answer, not worth waiting for
    # (the subprocess limit below is shorter than the timeout).
    args = [command, "--broker", f"{scheme}127.0.0.1:1/0", "--connect-timeout", "60"]
    if command == "record":
        args.insert(1, str(tmp_path / "out.jsonl"))
    if command == "top":
        args.append("--once")
    result = run_cli(*args, timeout=30)
    assert result.returncode == 1
    line = _one_error_line(result.stderr)
    shown = scheme.replace(":guest@", ":***@")
    assert line.startswith(f"aiocelev: error: cannot connect to {shown}127.0.0.1:1/0: "), line
    assert line.endswith("connection refused by 127.0.0.1:1 (is the broker running there?)"), line
    assert line.count("127.0.0.1:1") == 2, line  # in the URL and in the reason, nowhere else
    assert not (tmp_path / "out.jsonl").exists()  # nothing created before the broker answered


@pytest.mark.amqp
def test_missing_vhost_says_so(amqp_url: str) -> None:
    url = amqp_url.rstrip("/") + "/no-such-vhost-here"
    result = run_cli("events", "--broker", url, timeout=30)
    assert result.returncode == 1
    line = _one_error_line(result.stderr)
    assert "vhost 'no-such-vhost-here' not found" in line, line
    assert "InvalidFrameError" not in line and "object at 0x" not in line
    assert line.count("no-such-vhost-here") == 2, line  # the URL, the reason


@pytest.mark.amqp
def test_wrong_password_says_login_refused(amqp_url: str) -> None:
    url = amqp_url.replace("guest:guest@", "guest:wrong@")
    result = run_cli("top", "--once", "--broker", url, timeout=30)
    assert result.returncode == 1
    line = _one_error_line(result.stderr)
    assert "login refused: ACCESS_REFUSED" in line, line
    assert "wrong" not in line


@pytest.mark.redis
def test_redis_database_out_of_range_says_so(redis_url: str) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/999"
    result = run_cli("events", "--broker", url, timeout=30)
    assert result.returncode == 1
    line = _one_error_line(result.stderr)
    assert "the server refused the database number: DB index is out of range" in line, line


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        (
            "task-failed",
            "routing keys use '.' where event types use '-'; did you mean task.failed?",
        ),
        ("", "an empty key matches no event ('#' matches every event)"),
        ("TASK.FAILED", "event routing keys are lower case; did you mean task.failed?"),
        ("task..failed", "a key has no empty words; did you mean task.failed?"),
        ("task.fail*", "'*' and '#' stand for whole words only; did you mean task.failed?"),
        ("worker.*beat", "'*' and '#' stand for whole words only; did you mean worker.heartbeat?"),
        ("task.re*", "'*' and '#' stand for whole words only; did you mean task.#?"),
    ],
)
@pytest.mark.parametrize("command", ["events", "top", "record"])
def test_filters_that_can_never_match_are_usage_errors(
    command: str, key: str, shown: str, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    args = [command, "--broker", "memory://", "--filter", key]
    if command == "record":
        args.insert(1, str(tmp_path / "out.jsonl"))
    assert main(args) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == f"aiocelev: error: --filter {key!r}: {shown}", line
    assert not (tmp_path / "out.jsonl").exists()


def test_a_filter_like_a_typo_is_kept_with_a_note(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["events", "--broker", "memory://", "--filter", "task.faild", "--timeout", "0.1"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert (
        "note: --filter 'task.faild' matches no Celery event (custom events only); did you mean task.failed?"
        in err
    )
    assert (
        main(["events", "--broker", "memory://", "--filter", "app.progress", "--timeout", "0.1"])
        == 0
    )
    assert "note:" not in capsys.readouterr().err  # custom events are not typos
