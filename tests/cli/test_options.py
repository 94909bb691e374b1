"""Options before the command (as Celery takes them), and one meaning per short option."""

from __future__ import annotations

import pytest

from aiocelev.cli import build_parser, main


def test_broker_before_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--broker", "memory://before", "events", "--timeout", "0.1"]) == 0
    assert "listening on memory://before" in capsys.readouterr().err
    assert main(["-b", "memory://short", "top", "--once", "--wait", "0"]) == 0
    assert "memory://short" in capsys.readouterr().out


def test_an_option_after_the_command_wins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-b", "nosuch://x", "events", "-b", "memory://after", "--timeout", "0.1"]) == 0
    assert "listening on memory://after" in capsys.readouterr().err


def test_connect_timeout_and_verbose_before_the_command() -> None:
    args = build_parser().parse_args(["--connect-timeout", "7", "-v", "events", "-v"])
    assert args.connect_timeout == 7.0
    assert args.verbose == 2
    assert not hasattr(args, "global_broker")
    defaults = build_parser().parse_args(["record", "out.jsonl"])
    assert defaults.connect_timeout == 3.0 and defaults.broker is None and defaults.verbose == 0
    after = build_parser().parse_args(
        ["--connect-timeout", "7", "inspect", "ping", "--connect-timeout", "2"]
    )
    assert after.connect_timeout == 2.0


def test_global_broker_reaches_every_command() -> None:
    for argv in (
        ["events"],
        ["top"],
        ["demo"],
        ["control", "ping"],
        ["inspect", "ping"],
        ["replay", "f"],
        ["record", "f"],
    ):
        args = build_parser().parse_args(["--broker", "redis://h:6379/3", *argv])
        assert args.broker == "redis://h:6379/3", argv


def test_dashboard_repeatable_broker_from_before_the_command() -> None:
    args = build_parser().parse_args(["-b", "memory://a", "dashboard"])
    assert args.broker == ["memory://a"]


def test_d_means_destination_only(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["control", "heartbeat", "-d", "celery@a", "celery@b"])
    assert args.destination == ["celery@a", "celery@b"]
    assert main(["demo", "-d", "1", "--no-ui"]) == 2
    assert "unrecognized arguments: -d 1" in capsys.readouterr().err
    assert build_parser().parse_args(["demo", "--duration", "1"]).duration == 1.0


def test_help_lists_the_options_before_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--broker URL" in out and "--connect-timeout SECONDS" in out
    assert "before or after the command" in out
