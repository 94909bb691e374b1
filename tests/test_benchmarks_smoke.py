"""Smoke test of the benchmark suite: every case runs (tiny sizes) and reports numbers.

No speed is asserted: the benchmarks compare aiocelev with Celery's own events
code on real brokers, so this runs ``python -m benchmarks --quick`` against
the RabbitMQ / Redis of the ``amqp_url`` / ``redis_url`` fixtures.  That
includes the ``dashboard`` case (a real ``aiocelev dashboard`` and a real
Flower process, 300 tasks each: about 15 s per broker).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("celery")

pytestmark = pytest.mark.celery

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "publish_batched",
    "publish_single",
    "receive_batched",
    "receive_single",
    "monitor",
    "latency_200",
    "latency_5000",
    "latency_sides",
    "latency_layers",
    "memory_state",
    "memory_overload",
    "dashboard",
}
RECEIVE_CASES = {"receive_batched", "receive_single", "monitor"}


def _run_quick(broker: str, url: str, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    out = tmp_path / f"{broker}.json"
    env = dict(os.environ)
    env[f"AIOCELEV_BENCH_{broker.upper()}_URL"] = url
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--broker", broker, "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    return report  # type: ignore[no-any-return]


def _check(report: dict, broker: str) -> None:  # type: ignore[type-arg]
    seen = {s["case"] for s in report["results"]}
    assert seen == CASES
    assert report["info"]["versions"]["celery"]
    for summary in report["results"]:
        assert summary["broker"] in (broker, "none")
        assert summary["rows"], summary["case"]
        if summary["case"] == "dashboard":
            for result in summary["raw"]["aiocelev dashboard"]:
                # The whole stream reached the dashboard, and SSE delays were measured.
                assert result.get("complete"), result
                assert result.get("p99_ms_2000", 0) > 0, result
        for row in summary["rows"]:
            assert row["a_median"] > 0, (summary["case"], row)
            if row.get("b") is not None:
                assert row["b_median"] > 0, (summary["case"], row)
                assert row["ratio"] is not None and row["ratio"] > 0
        for label, results in summary["raw"].items():
            for result in results:
                assert "error" not in result, (summary["case"], label, result)
                if summary["case"] in RECEIVE_CASES:
                    # Waits and preemptions in the measured window, both sides.
                    for key in ("voluntary_switches", "involuntary_switches"):
                        value = result.get(key)
                        assert type(value) is int and value >= 0, (summary["case"], key, result)


@pytest.mark.amqp
@pytest.mark.timeout(150)
def test_benchmarks_quick_amqp(amqp_url: str, tmp_path: Path) -> None:
    _check(_run_quick("amqp", amqp_url, tmp_path), "amqp")


@pytest.mark.redis
@pytest.mark.timeout(150)
def test_benchmarks_quick_redis(redis_url: str, tmp_path: Path) -> None:
    _check(_run_quick("redis", redis_url, tmp_path), "redis")


def test_a_receive_measurement_of_part_of_the_stream_fails() -> None:
    """A subscriber the broker cut off gets no rate: the A/B table would compare
    a partial stream with a whole one."""
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.receive import _complete
    finally:
        sys.path.remove(str(ROOT))
    whole = {"received": 40_000, "published": 40_000, "rate": 1.0}
    assert _complete(whole) is whole
    with pytest.raises(RuntimeError, match="received 17760 of 200000 events"):
        _complete({"received": 17_760, "published": 200_000, "rate": 1.0})


@pytest.mark.parametrize("side", ["aiocelev", "celery"])
@pytest.mark.parametrize("mode", ["receive", "monitor"])
def test_instruction_count_paths_handle_every_event(side: str, mode: str) -> None:
    """``benchmarks.instructions`` runs each side's path without valgrind: every
    event of the stream is handled (a child that handles fewer exits with an error)."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.instructions", "--child", side, mode, "240", "480"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_instruction_count_child_reports_a_short_count(monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import instructions
    finally:
        sys.path.remove(str(ROOT))
    monkeypatch.setattr(instructions, "_run_celery", lambda bodies, mode: 1)
    with pytest.raises(SystemExit, match="1 events handled, expected 240"):
        instructions._child("celery", "receive", 240, 240)
