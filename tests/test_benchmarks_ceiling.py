"""The receive benchmarks' clock and the ceiling measurement (no speed asserted).

* The receive harness times from the moment the publisher started the stream
  (its ``start``, on the system-wide monotonic clock), not from the "go" file
  the publisher polls for; a start outside the receiver's window is ignored.
* ``python -m benchmarks.ceiling`` runs its minimal consumers, the adapter
  alone and a receiver against the real brokers, tiny sizes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks._receivers import _Run

ROOT = Path(__file__).resolve().parent.parent


def _run(t_go: float, t_last: float, counted: int) -> _Run:
    run = _Run(counted)
    run.t_go, run.t_last, run.counted = t_go, t_last, counted
    run.cpu_go, run.cpu_last = 1.0, 1.5
    return run


def test_the_clock_starts_when_the_publisher_starts() -> None:
    result = _run(100.0, 100.5, 1000).result({"start": 100.1, "rate": 1.0}, {})
    assert result["elapsed"] == pytest.approx(0.4)
    assert result["rate"] == pytest.approx(2500.0)
    assert result["start_delay"] == pytest.approx(0.1)
    assert result["cpu_rate"] == pytest.approx(2000.0)


@pytest.mark.parametrize("start", [99.0, 101.0, None, "100.1"])
def test_a_start_outside_the_window_leaves_the_go_time(start: object) -> None:
    publisher = {} if start is None else {"start": start}
    result = _run(100.0, 100.5, 1000).result(publisher, {})
    assert result["elapsed"] == pytest.approx(0.5)
    assert result["start_delay"] is None


def _ceiling(broker: str, url: str) -> str:
    env = dict(os.environ)
    env[f"AIOCELEV_BENCH_{broker.upper()}_URL"] = url
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.ceiling",
            "--broker",
            broker,
            "--n",
            "480",
            "--rounds",
            "1",
            "--impls",
            "wire,adapter,aiocelev",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def _check(out: str, broker: str) -> None:
    assert re.search(r"decode \(msgspec.*: [\d,]+ events/CPU-s", out), out
    for impl in ("wire", "adapter", "aiocelev"):
        line = re.search(rf"\[{broker}\] round 1 {impl}: ([\d,]+) ev/s", out)
        assert line is not None, out
        assert int(line.group(1).replace(",", "")) > 0, out
    assert "of the wire's rate" in out, out


@pytest.mark.amqp
@pytest.mark.timeout(150)
def test_ceiling_amqp(amqp_url: str) -> None:
    _check(_ceiling("amqp", amqp_url), "amqp")


@pytest.mark.redis
@pytest.mark.timeout(150)
def test_ceiling_redis(redis_url: str) -> None:
    _check(_ceiling("redis", redis_url), "redis")
