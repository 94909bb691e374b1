"""Prometheus metrics with Flower's names, types and labels.

Flower's Grafana dashboard and alert rules read these series; the names, help
texts, label names and update rules follow ``flower/events.py`` of Flower 2.2
(``PrometheusMetrics.observe_task`` / ``observe_worker``).

Ingestion only touches plain dictionaries (a counter bump is one dict update,
a runtime one ``bisect``); the series are built when ``/metrics`` is scraped,
by a ``prometheus_client`` collector, which also writes the exposition format.
Updating ``prometheus_client`` metric objects per event (a lock and a few
calls each) was the largest cost of the dashboard's ingestion.  Each app has a
registry of its own, so several apps (or tests) in one process do not share
series.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from aiocelev import TaskState, WorkerState

__all__ = ["DEFAULT_RUNTIME_BUCKETS", "FlowerMetrics"]

#: ``prometheus_client.Histogram.DEFAULT_BUCKETS``, Flower's default for
#: ``--task_runtime_metric_buckets``.
DEFAULT_RUNTIME_BUCKETS: tuple[float, ...] = tuple(Histogram.DEFAULT_BUCKETS)

#: Worker events and the value they give ``flower_worker_online``.
_ONLINE = {"worker-online": 1, "worker-heartbeat": 1, "worker-offline": 0}
_PREFETCH_END = frozenset({"task-succeeded", "task-failed"})
_PREFETCH_DROP = frozenset({"task-revoked", "task-rejected"})

_EVENTS_HELP = "Number of events"
_RUNTIME_HELP = "Task runtime"
_PREFETCH_TIME_HELP = "The time the task spent waiting at the celery worker to be executed."
_PREFETCHED_HELP = "Number of tasks of given type prefetched at a worker"
_ONLINE_HELP = "Worker online status"
_EXECUTING_HELP = "Number of tasks currently executing at a worker"


class _Runtime:
    """One histogram child: per-bucket counts (not cumulative) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.total = 0.0


class FlowerMetrics:
    """The six Flower series, fed one event at a time, exposed through :attr:`registry`."""

    def __init__(self, buckets: Sequence[float] = DEFAULT_RUNTIME_BUCKETS) -> None:
        bounds = sorted(float(b) for b in buckets if b != float("inf"))
        if not bounds:
            raise ValueError("at least one finite runtime bucket is needed")
        self._bounds = bounds
        self._les = [floatToGoString(b) for b in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        #: (worker, type, task) -> [count, created]
        self._events: dict[tuple[str, str, str], list[float]] = {}
        self._runtime: dict[tuple[str, str], _Runtime] = {}
        self._prefetch_time: dict[tuple[str, str], float] = {}
        self._prefetched: dict[tuple[str, str], float] = {}
        self._online: dict[str, float] = {}
        self._executing: dict[str, float] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    # -- ingestion ------------------------------------------------------------

    def observe(self, event: Mapping[str, Any], record: TaskState | WorkerState | None) -> None:
        """Update the series for one applied *event* (*record*: what the state returned)."""
        type_ = event.get("type")
        worker = event.get("hostname")
        if type(type_) is not str or type(worker) is not str:
            return
        if type_.startswith("task-"):
            if type(record) is TaskState:
                self._observe_task(worker, type_, event, record)
        elif type_ in _ONLINE:
            self._online[worker] = _ONLINE[type_]
            active = event.get("active")
            if type_ == "worker-heartbeat" and isinstance(active, int | float):
                self._executing[worker] = active

    def _observe_task(
        self, worker: str, type_: str, event: Mapping[str, Any], task: TaskState
    ) -> None:
        name = event.get("name") or task.name or ""
        if type(name) is not str:
            name = str(name)
        key = (worker, type_, name)
        counter = self._events.get(key)
        if counter is None:
            self._events[key] = [1, time.time()]
        else:
            counter[0] += 1
        pair = (worker, name)
        runtime = event.get("runtime")
        if runtime and (type(runtime) is float or type(runtime) is int):
            child = self._runtime.get(pair)
            if child is None:
                child = self._runtime[pair] = _Runtime(len(self._les))
            child.counts[bisect_left(self._bounds, runtime)] += 1
            child.total += runtime
        # As Flower: prefetch series only for tasks without an eta, once received.
        if task.eta or not task.received:
            return
        if type_ == "task-received":
            self._prefetched[pair] = self._prefetched.get(pair, 0) + 1
        elif type_ == "task-started":
            if task.started:
                self._prefetch_time[pair] = task.started - task.received
                self._prefetched[pair] = self._prefetched.get(pair, 0) - 1
        elif type_ in _PREFETCH_END:
            if task.started:
                self._prefetch_time[pair] = 0
        elif type_ in _PREFETCH_DROP and not task.started:
            self._prefetched[pair] = self._prefetched.get(pair, 0) - 1

    # -- exposition -------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        """The families (empty), for the registry's name checks."""
        return self._families(with_samples=False)

    def collect(self) -> Iterable[Metric]:
        """The families with their samples (called by ``generate_latest``)."""
        return self._families(with_samples=True)

    def _families(self, *, with_samples: bool) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "flower_events", _EVENTS_HELP, labels=["worker", "type", "task"]
        )
        runtime = HistogramMetricFamily(
            "flower_task_runtime_seconds", _RUNTIME_HELP, labels=["worker", "task"]
        )
        prefetch_time = GaugeMetricFamily(
            "flower_task_prefetch_time_seconds", _PREFETCH_TIME_HELP, labels=["worker", "task"]
        )
        prefetched = GaugeMetricFamily(
            "flower_worker_prefetched_tasks", _PREFETCHED_HELP, labels=["worker", "task"]
        )
        online = GaugeMetricFamily("flower_worker_online", _ONLINE_HELP, labels=["worker"])
        executing = GaugeMetricFamily(
            "flower_worker_number_of_currently_executing_tasks", _EXECUTING_HELP, labels=["worker"]
        )
        if with_samples:
            for (worker, type_, name), (count, created) in list(self._events.items()):
                events.add_metric([worker, type_, name], count, created=created)
            les = self._les
            for (worker, name), child in list(self._runtime.items()):
                cumulative, running = [], 0
                for le, count in zip(les, child.counts, strict=True):
                    running += count
                    cumulative.append((le, float(running)))
                runtime.add_metric([worker, name], cumulative, child.total)
            for pair, value in list(self._prefetch_time.items()):
                prefetch_time.add_metric(list(pair), value)
            for pair, value in list(self._prefetched.items()):
                prefetched.add_metric(list(pair), value)
            for worker, value in list(self._online.items()):
                online.add_metric([worker], value)
            for worker, value in list(self._executing.items()):
                executing.add_metric([worker], value)
        yield from (events, runtime, prefetch_time, prefetched, online, executing)

    # -- housekeeping -------------------------------------------------------------

    def remove_workers(self, hostnames: Iterable[str]) -> int:
        """Remove every series of *hostnames*; returns how many workers had series."""
        gone = set(hostnames) & set(self.workers())
        if not gone:
            return 0
        tables: tuple[dict[Any, Any], ...] = (
            self._events,
            self._runtime,
            self._prefetch_time,
            self._prefetched,
        )
        for table in tables:
            for key in [k for k in table if k[0] in gone]:
                del table[key]
        for single in (self._online, self._executing):
            for worker in gone:
                single.pop(worker, None)
        return len(gone)

    def workers(self) -> list[str]:
        """Workers that have series now."""
        found: dict[str, None] = dict.fromkeys(self._online)
        found.update(dict.fromkeys(self._executing))
        for table in (self._events, self._runtime, self._prefetch_time, self._prefetched):
            found.update(dict.fromkeys(k[0] for k in table))
        return list(found)
