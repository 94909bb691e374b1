"""Broker and set-up errors: one clear line each, quickly, with the server's own reason."""

from __future__ import annotations

import pytest

from ._helpers import assert_no_traceback, run_cli_without


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
