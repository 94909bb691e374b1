"""``aiocelev dashboard``: usage errors (the server itself is exercised through create_app)."""

from __future__ import annotations

import pytest

from aiocelev.cli import main


def test_no_broker_says_how_to_name_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AIOCELEV_BROKER_URL", raising=False)
    assert main(["dashboard"]) == 2
    err = capsys.readouterr().err
    assert "--broker" in err and "AIOCELEV_BROKER_URL" in err and "--demo" in err


def test_bad_credentials_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--broker", "memory://", "--basic-auth", "nocolon"]) == 2
    assert "USER:PASS" in capsys.readouterr().err


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--broker", "--address", "--port", "--url-prefix", "--read-only",
                   "--basic-auth", "--token", "--max-tasks", "--demo"):  # fmt: skip
        assert option in out
