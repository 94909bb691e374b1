"""Shared helpers: broker URLs, realistic events, child processes, statistics."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Where the benchmarks connect (the test suite's variables are honoured).
URLS = {
    "amqp": os.environ.get(
        "AIOCELEV_BENCH_AMQP_URL",
        os.environ.get("AIOCELEV_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    ),
    "redis": os.environ.get(
        "AIOCELEV_BENCH_REDIS_URL",
        os.environ.get("AIOCELEV_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    ),
    "memory": "memory://bench",
}

#: Queue TTL used by *both* receivers on RabbitMQ in the receive cases, so a
#: backlog never expires while the slower receiver drains it (Celery's and
#: aiocelev's default is 5 s; see docs/benchmarks.md).
RECEIVE_QUEUE_TTL = 120.0

#: Both implementations use this event exchange instead of ``celeryev`` so that
#: nothing else on the shared brokers (test suites...) mixes into the streams.
#: One name per run (the parent picks it and hands it down) so that concurrent
#: runs never see each other's events.
OWNS_EXCHANGE = "AIOCELEV_BENCH_EXCHANGE" not in os.environ
EXCHANGE = os.environ.setdefault("AIOCELEV_BENCH_EXCHANGE", f"celeryev.bench.{os.getpid()}")

RESULT_PREFIX = "BENCH-RESULT "
WORKERS = [f"celery@worker{i}" for i in range(1, 5)]
HOSTNAME = "celery@bench"
PROBE_TYPE = "worker-benchprobe"
CELERY_BUFFER_LIMIT = 24


def broker_options(broker: str, **extra: Any) -> dict[str, Any]:
    """aiocelev adapter options for *broker* (the benchmark exchange, plus *extra*)."""
    options: dict[str, Any] = {} if broker == "memory" else {"exchange": EXCHANGE}
    options.update(extra)
    return options


def peak_rss_mib() -> float:
    """Peak resident set size of this process, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
    """Current resident set size of this process, in MiB."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024.0 * 1024.0)
    except OSError:  # pragma: no cover - not Linux
        return peak_rss_mib()


def task_id(i: int) -> str:
    """A deterministic, realistic task id."""
    return str(uuidlib.UUID(int=(0x5B1D4C2E8F3A4A519C3E << 48) + i))


def succeeded_fields(i: int) -> dict[str, Any]:
    """The fields a worker adds to ``task-succeeded`` (besides the stamped ones)."""
    return {
        "uuid": task_id(i),
        "result": f"{{'status': 'ok', 'rows': {i % 1000}, 'elapsed': 0.0123}}",
        "runtime": 0.0123 + (i % 97) * 1e-4,
    }


_RECEIVED_EXTRA = {
    "name": "proj.tasks.process_order",
    "args": "(4242, 'priority')",
    "kwargs": "{'retry': True, 'source': 'api'}",
    "parent_id": None,
    "retries": 0,
    "eta": None,
    "expires": None,
}


def lifecycle_events(n: int, t0: float | None = None) -> Iterator[dict[str, Any]]:
    """*n* complete wire events: task-received / started / succeeded per task.

    Four workers, each with its own Lamport clock; timestamps advance 0.1 ms per
    event from *t0*.  This is what a monitor sees from a cluster.
    """
    base = time.time() if t0 is None else t0
    clocks = dict.fromkeys(WORKERS, 0)
    for i in range(n):
        task, step = divmod(i, 3)
        host = WORKERS[task % len(WORKERS)]
        clocks[host] += 1
        uuid = task_id(task)
        event: dict[str, Any] = {
            "hostname": host,
            "utcoffset": 0,
            "pid": 4242,
            "clock": clocks[host],
            "uuid": uuid,
        }
        if step == 0:
            event.update(_RECEIVED_EXTRA)
            event["root_id"] = uuid
            event["type"] = "task-received"
        elif step == 1:
            event["type"] = "task-started"
        else:
            event.update(succeeded_fields(task))
            event["type"] = "task-succeeded"
        event["timestamp"] = base + i * 1e-4
        # Celery's field order puts "type" last.
        event["type"] = event.pop("type")
        yield event


def summarize(values: list[float]) -> dict[str, float]:
    """p50 / p99 / max of *values* (nearest-rank on the sorted list)."""
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(values)

    def rank(q: float) -> float:
        k = max(0, min(len(ordered) - 1, int(round(q / 100.0 * len(ordered) + 0.5)) - 1))
        return ordered[k]

    return {"p50": rank(50), "p99": rank(99), "max": ordered[-1]}


def median(values: list[float]) -> float:
    """The median, or NaN for an empty list."""
    return statistics.median(values) if values else float("nan")


def emit(result: dict[str, Any]) -> None:
    """Print a child's result for the parent to parse."""
    result.setdefault("peak_rss_mib", round(peak_rss_mib(), 1))
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def spawn(module: str, spec: dict[str, Any]) -> subprocess.Popen[str]:
    """Start ``python -m benchmarks.<module> <spec>`` (used for side processes)."""
    return subprocess.Popen(
        [sys.executable, "-m", f"benchmarks.{module}", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_child_env(),
    )


def parse_result(stdout: str) -> dict[str, Any] | None:
    """The last result line printed by a child, if any."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            parsed: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return parsed
    return None


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter and return its result.

    A failed or timed-out child gives ``{"error": ...}`` instead of raising, so
    one broken measurement does not sink a whole run.
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks._child", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_child_env(),
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    result = parse_result(proc.stdout)
    if result is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    return result


def wait_side(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """Wait for a side process (publisher) and return its result."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"error": "side process timed out", "stderr": err[-500:]}
    result = parse_result(out)
    if result is None:
        return {"error": f"side process exit {proc.returncode}", "stderr": err[-500:]}
    return result


def delete_exchange(broker: str) -> None:
    """Remove this run's exchange from the broker (best effort).

    RabbitMQ: the durable exchange.  Redis: the binding table that kombu
    (Celery's and Flower's receivers) keeps for it, and its entry in kombu's
    binding deadline index.
    """
    if broker == "amqp":
        from kombu.connection import Connection

        try:
            with Connection(URLS["amqp"], connect_timeout=5) as conn:  # type: ignore[no-untyped-call]
                conn.default_channel.exchange_delete(EXCHANGE)
        except Exception:
            pass
    elif broker == "redis":
        try:
            import redis

            client = redis.Redis.from_url(URLS["redis"], socket_timeout=5)
            try:
                client.delete(f"_kombu.binding.{EXCHANGE}", f"_kombu.binding_permanent.{EXCHANGE}")
                client.zrem("_kombu.binding_deadlines", EXCHANGE)
            finally:
                client.close()
        except Exception:
            pass


def celery_app(url: str) -> Any:
    """A Celery app on *url*, configured as a worker's (JSON events)."""
    from celery import Celery

    app = Celery("bench", broker=url, set_as_current=False)
    app.conf.event_serializer = "json"
    app.conf.event_exchange = EXCHANGE
    app.conf.broker_connection_retry_on_startup = False
    return app
