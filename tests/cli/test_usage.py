"""Help, usage errors, bad and unreachable brokers: one clear line, documented exit status."""

from __future__ import annotations

import pytest

from aiocelev.brokers import known_schemes
from aiocelev.cli import main

from ._helpers import assert_no_traceback, run_cli

COMMANDS = ["events", "top", "demo", "control", "inspect", "record", "replay"]


def test_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout
    assert "exit status" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_broker_option(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "--broker URL" in result.stdout
    assert f"usage: aiocelev {command}" in result.stdout


def test_console_script() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("aiocelev")
    if not script.exists():
        pytest.skip("the aiocelev console script is not installed next to this Python")
    result = subprocess.run(
        [str(script), "demo", "--no-ui", "--duration", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "tasks by state:" in result.stdout


def test_version() -> None:
    from aiocelev import __version__

    result = run_cli("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: aiocelev" in capsys.readouterr().err


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "--no-such-option"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_bad_numbers_are_usage_errors(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "--limit", value]) == 2
    assert "--limit" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["a@b", "two words", ""])
def test_demo_rejects_bad_node_names(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--no-ui", "--name", name]) == 2
    assert "not a node name prefix" in capsys.readouterr().err


def test_unknown_scheme_names_the_known_schemes() -> None:
    result = run_cli("events", "--broker", "amqq://guest:hunter2@localhost//")
    assert result.returncode == 2
    assert_no_traceback(result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aiocelev: error: ")
    for scheme in known_schemes():
        assert scheme in lines[0]
    assert "Did you mean 'amqp'?" in lines[0]
    assert "hunter2" not in result.stderr


def test_not_a_url_is_a_usage_error() -> None:
    result = run_cli("events", "--broker", "localhost")
    assert result.returncode == 2
    assert "known schemes" in result.stderr
    assert_no_traceback(result.stderr)


def test_broker_from_environment() -> None:
    result = run_cli("events", AIOCELEV_BROKER_URL="nosuch://x")
    assert result.returncode == 2
    assert "'nosuch://x'" in result.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:secret@127.0.0.1:1//", "amqp://guest:***@127.0.0.1:1//"),
        ("redis://:secret@127.0.0.1:1/0", "redis://:***@127.0.0.1:1/0"),
    ],
)
@pytest.mark.parametrize("command", ["events", "record", "top"])
def test_unreachable_broker_one_line_masked(command: str, url: str, shown: str, tmp_path) -> None:
    args = [command, "--broker", url, "--connect-timeout", "1"]
    if command == "record":
        args.insert(1, str(tmp_path / "out.jsonl"))
    if command == "top":
        args.append("--once")
    result = run_cli(*args)
    assert result.returncode == 1, result.stderr
    assert_no_traceback(result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aiocelev: error: ")
    assert shown in lines[0]
    assert "secret" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["replay", "control"])
def test_unreachable_broker_for_publishers(command: str, tmp_path) -> None:
    recording = tmp_path / "in.jsonl"
    recording.write_text('{"type": "worker-heartbeat", "hostname": "a@b", "timestamp": 1.0}\n')
    first = str(recording) if command == "replay" else "heartbeat"
    result = run_cli(
        command, first, "--broker", "amqp://guest:secret@127.0.0.1:1//", "--connect-timeout", "1"
    )
    assert result.returncode == 1, result.stderr
    assert_no_traceback(result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("aiocelev: error: cannot connect to amqp://guest:***@127.0.0.1:1//")
    assert "secret" not in result.stderr


def test_control_on_memory_is_refused() -> None:
    result = run_cli("control", "enable-events", "--broker", "memory://")
    assert result.returncode == 2
    assert "memory://" in result.stderr
    assert "amqp://" in result.stderr
    assert_no_traceback(result.stderr)


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["control", "shutdwon"], "unknown control command 'shutdwon'; did you mean 'shutdown'?"),
        (["inspect", "activ"], "unknown inspect command 'activ'; did you mean 'active'?"),
        (["inspect", "revoke", "x"], "'revoke' is a control command: aiocelev control revoke"),
        (["control", "stats"], "'stats' is an inspect command: aiocelev inspect stats"),
        (["control", "rate_limit", "app.add"], "rate_limit needs more arguments"),
        (["control", "autoscale", "ten", "2"], "autoscale: bad max 'ten'"),
        (["control", "ping"], "'ping' is an inspect command"),
        (["inspect", "conf", "maybe"], "conf: bad with_defaults 'maybe'"),
        (["control", "heartbeat", "extra"], "heartbeat takes at most 0"),
        (["control", "revoke_by_stamped_headers", "novalue"], "expected key=value"),
        (["control", "heartbeat", "--terminate"], "--terminate and --signal go with revoke"),
    ],
)
def test_control_usage_errors(
    args: list[str], shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Usage is checked before the broker is contacted (port 1 would refuse).
    assert main([*args, "--broker", "amqp://localhost:1//"]) == 2
    err = capsys.readouterr().err
    assert shown in err, err
    assert "Traceback" not in err


def test_control_arguments_are_compiled_as_celerys_cli_does() -> None:
    from aiocelev.cli._control import CONTROL, INSPECT, compile_arguments

    assert compile_arguments(CONTROL["revoke"], ["a", "b"]) == {"task_id": ["a", "b"]}
    assert compile_arguments(CONTROL["terminate"], ["KILL", "a"]) == {
        "signal": "KILL",
        "task_id": ["a"],
    }
    assert compile_arguments(CONTROL["time_limit"], ["app.add", "1.5"]) == {
        "task_name": "app.add",
        "soft": 1.5,
    }
    assert compile_arguments(CONTROL["pool_grow"], []) == {}
    assert compile_arguments(CONTROL["add_consumer"], ["q", "ex"]) == {
        "queue": "q",
        "exchange": "ex",
    }
    assert compile_arguments(CONTROL["revoke_by_stamped_headers"], ["k=1", "k=2", "j=x"]) == {
        "headers": {"k": ["1", "2"], "j": "x"}
    }
    assert compile_arguments(INSPECT["registered"], []) == {"taskinfoitems": []}
    assert compile_arguments(INSPECT["query_task"], ["id1"]) == {"ids": ["id1"]}
    assert compile_arguments(INSPECT["conf"], ["true"]) == {"with_defaults": True}


def test_replay_missing_file() -> None:
    result = run_cli("replay", "/nonexistent/recording.jsonl", "--broker", "memory://")
    assert result.returncode == 1
    assert "cannot read /nonexistent/recording.jsonl" in result.stderr
    assert_no_traceback(result.stderr)


def test_record_unwritable_file() -> None:
    result = run_cli(
        "record", "/nonexistent/dir/out.jsonl", "--broker", "memory://", "--timeout", "5"
    )
    assert result.returncode == 1
    assert "cannot write /nonexistent/dir/out.jsonl" in result.stderr
    assert_no_traceback(result.stderr)
