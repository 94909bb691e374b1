"""The command as a user runs it: ``python -m aiocelev ...`` in a subprocess (memory://)."""

from __future__ import annotations

import signal

import pytest

from ._helpers import Background, assert_no_traceback, run_cli, run_cli_without_rich


def test_demo_no_ui_prints_a_summary_and_exits_0() -> None:
    result = run_cli("demo", "--no-ui", "--duration", "3", timeout=60)
    assert result.returncode == 0, result.stderr
    assert_no_traceback(result.stderr)
    out = result.stdout
    assert "demo finished after" in out and "on memory://" in out
    assert "tasks by state: " in out
    assert "SUCCESS" in out
    sent = int(out.split("events: ")[1].split(" sent")[0])
    received = int(out.split("sent, ")[1].split(" received")[0])
    assert sent > 0 and received == sent


def test_demo_without_ui_needs_no_terminal_and_no_rich_import() -> None:
    # --no-ui must work where rich is not installed: it must not even import it.
    result = run_cli_without_rich("demo", "--no-ui", "--duration", "1")
    assert result.returncode == 0, result.stderr
    assert "tasks by state" in result.stdout


def test_top_without_rich_says_what_to_install() -> None:
    result = run_cli_without_rich("top", "--broker", "memory://", "--once")
    assert result.returncode == 1
    assert "pip install 'aiocelev[cli]'" in result.stderr
    assert_no_traceback(result.stderr)


@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
@pytest.mark.parametrize("command", ["events", "record", "demo"])
def test_signals_stop_cleanly(command: str, signum: int, status: int, tmp_path) -> None:
    args = {
        "events": ["events", "--broker", "memory://"],
        "record": ["record", str(tmp_path / "r.jsonl"), "--broker", "memory://"],
        "demo": ["demo", "--no-ui", "--duration", "60"],
    }[command]
    ready = {"events": "listening on", "record": "recording", "demo": "running 3 simulated"}[
        command
    ]
    with Background(*args) as proc:
        proc.wait_for_stderr(ready)
        proc.signal(signum)
        assert proc.wait(30) == status
        assert_no_traceback(proc.stderr())
        if command == "demo":
            # Interrupted, the demo still stops its workers and prints its summary.
            assert "tasks by state:" in proc.stdout()
        if command == "record":
            assert "recorded 0 events" in proc.stderr()


def test_events_json_from_a_demo_via_stdin_pipe() -> None:
    """``python -m aiocelev`` is the same program as the ``aiocelev`` script."""
    result = run_cli("events", "--broker", "memory://", "--timeout", "0.5", "--json")
    assert result.returncode == 0
    assert result.stdout == ""
    assert "listening on memory://" in result.stderr
