"""``FlowerMetrics`` against prometheus-client's own metric objects: the same series for the same events."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings, strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aiocelev import ClusterState
from aiocelev.dashboard._metrics import FlowerMetrics

BUCKETS = (0.5, 1.0, 5.0)


def _samples(text: str, family: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        if f.name == family
        for s in f.samples
        if not s.name.endswith("_created")
    }


def _feed(runtimes: list[float]) -> tuple[FlowerMetrics, CollectorRegistry]:
    metrics = FlowerMetrics(BUCKETS)
    state = ClusterState()
    reference = CollectorRegistry()
    counter = Counter(
        "flower_events_total", "Number of events", ["worker", "type", "task"], registry=reference
    )
    histogram = Histogram(
        "flower_task_runtime_seconds",
        "Task runtime",
        ["worker", "task"],
        buckets=BUCKETS,
        registry=reference,
    )
    for n, runtime in enumerate(runtimes):
        worker = f"w{n % 2}@h"
        events: list[dict[str, Any]] = [
            {
                "type": "task-received",
                "uuid": f"t{n}",
                "name": "app.t",
                "hostname": worker,
                "timestamp": 1.0 + n,
            },
            {"type": "task-started", "uuid": f"t{n}", "hostname": worker, "timestamp": 2.0 + n},
            {
                "type": "task-succeeded",
                "uuid": f"t{n}",
                "hostname": worker,
                "timestamp": 3.0 + n,
                "runtime": runtime,
            },
        ]
        for event in events:
            metrics.observe(event, state.apply(event))
            counter.labels(worker, event["type"], "app.t").inc()
            if event.get("runtime"):
                histogram.labels(worker, "app.t").observe(event["runtime"])
    return metrics, reference


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=20.0), max_size=30))
def test_series_equal_prometheus_clients_own(runtimes: list[float]) -> None:
    metrics, reference = _feed(runtimes)
    ours, theirs = generate_latest(metrics.registry).decode(), generate_latest(reference).decode()
    for family in ("flower_task_runtime_seconds", "flower_events"):
        assert _samples(ours, family) == _samples(theirs, family)


def test_buckets_are_cumulative_and_inclusive() -> None:
    metrics, _ = _feed([0.1, 0.5, 3.0, 10.0])
    text = generate_latest(metrics.registry).decode()
    buckets = {
        (dict(labels)["worker"], dict(labels)["le"]): value
        for (name, labels), value in _samples(text, "flower_task_runtime_seconds").items()
        if name.endswith("_bucket")
    }
    assert buckets[("w0@h", "0.5")] == 1  # 0.1
    assert buckets[("w1@h", "0.5")] == 1  # 0.5 is in the 0.5 bucket (le is inclusive)
    assert buckets[("w0@h", "5.0")] == 2  # 0.1, 3.0
    assert buckets[("w1@h", "+Inf")] == 2  # 0.5, 10.0


def test_remove_workers_drops_every_series_of_them() -> None:
    metrics, _ = _feed([0.1, 0.2])
    metrics.observe({"type": "worker-heartbeat", "hostname": "w0@h", "active": 1}, None)
    assert sorted(metrics.workers()) == ["w0@h", "w1@h"]
    assert metrics.remove_workers(["w0@h", "nobody"]) == 1
    text = generate_latest(metrics.registry).decode()
    assert "w0@h" not in text and "w1@h" in text
    assert metrics.workers() == ["w1@h"]
