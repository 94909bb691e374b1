"""The monitor's own connection drops: every view says so, and nothing ages meanwhile.

A proxy in front of the real broker is killed and brought back (the shared
servers keep running); the commands must say on stderr, without ``-v``, that
they lost the broker and when they got it back, and ``top`` must show it in a
banner instead of declaring every worker lost.
"""

from __future__ import annotations

import os
import time
from urllib.parse import urlsplit, urlunsplit

import pytest

from ._helpers import Background, KillableProxy, assert_no_traceback, broker_url_fixture  # noqa: F401 - fixture


def via(url: str, port: int) -> str:
    """*url* with its port replaced by *port* (the proxy's)."""
    parts = urlsplit(url)
    netloc = (
        parts.netloc.rsplit(":", 1)[0] if ":" in parts.netloc.rsplit("@", 1)[-1] else parts.netloc
    )
    return urlunsplit(parts._replace(netloc=f"{netloc}:{port}"))


def masked(url: str) -> str:
    return url.replace(":guest@", ":***@")


@pytest.mark.parametrize("command", ["events", "record"])
def test_loss_and_recovery_are_said_on_stderr_without_v(
    broker_url: str, command: str, tmp_path
) -> None:
    target = urlsplit(broker_url).port or (5672 if broker_url.startswith("amqp") else 6379)
    proxy = KillableProxy(target)
    url = via(broker_url, proxy.port)
    args = [command, "--broker", url]
    if command == "record":
        args.insert(1, str(tmp_path / "out.jsonl"))
    try:
        with Background(*args) as proc:
            proc.wait_for_stderr("aiocelev: listening on" if command == "events" else "recording")
            proxy.kill()
            proc.wait_for_stderr(
                f"aiocelev: disconnected from {masked(url)}, reconnecting (gap #1)", timeout=30
            )
            proxy.restart()
            proc.wait_for_stderr(f"aiocelev: reconnected to {masked(url)} after ", timeout=60)
            proc.signal(2)
            assert proc.wait() == 130
            err = proc.stderr()
    finally:
        proxy.kill()
    assert_no_traceback(err)
    assert "(gap #1)" in err.split("reconnected to", 1)[1]
    assert "WARNING" not in err  # the library's log lines are still for -v only


pty = pytest.importorskip("pty")


@pytest.mark.redis
def test_top_says_it_is_disconnected_and_keeps_the_workers(redis_url: str) -> None:
    pytest.importorskip("rich")
    from .test_terminal import Terminal

    # A database of its own: kombu prefixes the event channel with it, so the
    # workers of other tests on the same server stay out of this screen.
    redis_url = redis_url.rsplit("/", 1)[0] + "/13"
    proxy = KillableProxy(urlsplit(redis_url).port or 6379)
    url = via(redis_url, proxy.port)
    name = f"outage{os.getpid()}"
    demo = Background(
        "demo", "--no-ui", "--duration", "60", "--workers", "2", "--name", name,
        "--broker", redis_url,
    )  # fmt: skip
    term = Terminal("top", "--broker", url)
    try:
        term.read_until(f"{name}-2@".encode(), timeout=30)
        term.read_until(b"workers 2/2 alive", timeout=30)
        proxy.kill()
        term.read_until(f"disconnected from {url}, reconnecting (gap #1)".encode(), timeout=30)
        seen = len(term.output)
        # Three heartbeat periods and more: heard, every worker would now be lost.
        time.sleep(7)
        term.read(0.5)
        during = term.output[seen:].decode(errors="replace")
        assert "reconnecting (gap #1)" in during
        assert "workers 2/2 alive" in during and "lost" not in during
        proxy.restart()
        term.read_until(b"reconnected to ", timeout=60)
        term.read_until(b"(gap #1); events sent meanwhile may be missing", timeout=5)
        term.press(b"q")
        assert term.wait() == 0
    finally:
        proxy.kill()
        demo.close()
    text = term.output.decode(errors="replace")
    assert "aiocelev/cli/" not in text  # no crash (the demo's failed tasks have tracebacks)
    # After the screen closed, the loss and the recovery are also said on stderr.
    assert f"aiocelev: disconnected from {url}, reconnecting (gap #1)" in text
    assert f"aiocelev: reconnected to {url} after " in text


@pytest.mark.redis
def test_demo_screen_shows_the_outage_and_says_it_on_stderr_when_it_closes(redis_url: str) -> None:
    pytest.importorskip("rich")
    from .test_terminal import Terminal

    redis_url = redis_url.rsplit("/", 1)[0] + "/13"
    proxy = KillableProxy(urlsplit(redis_url).port or 6379)
    url = via(redis_url, proxy.port)
    term = Terminal(
        "demo", "--broker", url, "--workers", "2", "--duration", "60",
        "--name", f"demo-outage{os.getpid()}",
    )  # fmt: skip
    try:
        term.read_until(b"workers 2/2 alive", timeout=30)
        proxy.kill()
        term.read_until(f"disconnected from {url}, reconnecting (gap #1)".encode(), timeout=30)
        proxy.restart()
        term.read_until(b"reconnected to ", timeout=60)
        term.press(b"q")
        assert term.wait() == 0
    finally:
        proxy.kill()
    text = term.output.decode(errors="replace")
    assert f"aiocelev: disconnected from {url}, reconnecting (gap #1)" in text
    assert f"aiocelev: reconnected to {url} after " in text
