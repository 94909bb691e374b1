"""Prometheus metrics with Flower's names, types and labels.

Flower's Grafana dashboard and alert rules read these series; the names, help
texts, label names and update rules follow ``flower/events.py`` of Flower 2.2
(``PrometheusMetrics.observe_task`` / ``observe_worker``).  Each dashboard app
has a registry of its own, so several apps (or tests) in one process do not
share counters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from aiocelev import TaskState, WorkerState

__all__ = ["DEFAULT_RUNTIME_BUCKETS", "FlowerMetrics"]

#: ``prometheus_client.Histogram.DEFAULT_BUCKETS``, Flower's default for
#: ``--task_runtime_metric_buckets``.
DEFAULT_RUNTIME_BUCKETS: tuple[float, ...] = tuple(Histogram.DEFAULT_BUCKETS)

#: Worker events and the value they give ``flower_worker_online``.
_ONLINE = {"worker-online": 1, "worker-heartbeat": 1, "worker-offline": 0}


class FlowerMetrics:
    """The six Flower series, fed one event at a time."""

    def __init__(self, buckets: Sequence[float] = DEFAULT_RUNTIME_BUCKETS) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events = Counter(
            "flower_events_total", "Number of events", ["worker", "type", "task"], registry=r
        )
        self.runtime = Histogram(
            "flower_task_runtime_seconds",
            "Task runtime",
            ["worker", "task"],
            buckets=tuple(buckets),
            registry=r,
        )
        self.prefetch_time = Gauge(
            "flower_task_prefetch_time_seconds",
            "The time the task spent waiting at the celery worker to be executed.",
            ["worker", "task"],
            registry=r,
        )
        self.prefetched = Gauge(
            "flower_worker_prefetched_tasks",
            "Number of tasks of given type prefetched at a worker",
            ["worker", "task"],
            registry=r,
        )
        self.online = Gauge("flower_worker_online", "Worker online status", ["worker"], registry=r)
        self.executing = Gauge(
            "flower_worker_number_of_currently_executing_tasks",
            "Number of tasks currently executing at a worker",
            ["worker"],
            registry=r,
        )
        # Label sets written per worker, so a purge removes exactly those
        # (prometheus_client has no public way to list a metric's children).
        self._labels: dict[str, set[tuple[str, tuple[str, ...]]]] = {}
        # The children already made: ``labels()`` validates and locks on every
        # call, which was the largest cost per event; a hit here is one lookup.
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._by_name: dict[str, Any] = {
            "events": self.events,
            "runtime": self.runtime,
            "prefetch_time": self.prefetch_time,
            "prefetched": self.prefetched,
            "online": self.online,
            "executing": self.executing,
        }

    def _child(self, metric: str, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            self._labels.setdefault(labels[0], set()).add(key)
            child = self._children[key] = self._by_name[metric].labels(*labels)
        return child

    def observe(self, event: Mapping[str, Any], record: TaskState | WorkerState | None) -> None:
        """Update the series for one applied *event* (*record*: what the state returned)."""
        type_ = event.get("type")
        worker = event.get("hostname")
        if type(type_) is not str or type(worker) is not str:
            return
        if type_.startswith("task-"):
            if isinstance(record, TaskState):
                self._observe_task(worker, type_, event, record)
        elif type_ in _ONLINE:
            self._child("online", worker).set(_ONLINE[type_])
            active = event.get("active")
            if type_ == "worker-heartbeat" and isinstance(active, int | float):
                self._child("executing", worker).set(active)

    def _observe_task(
        self, worker: str, type_: str, event: Mapping[str, Any], task: TaskState
    ) -> None:
        name = event.get("name") or task.name or ""
        if type(name) is not str:
            name = str(name)
        self._child("events", worker, type_, name).inc()
        runtime = event.get("runtime")
        if isinstance(runtime, int | float) and runtime:
            self._child("runtime", worker, name).observe(runtime)
        # As Flower: prefetch series only for tasks without an eta, once received.
        if task.eta or not task.received:
            return
        if type_ == "task-received":
            self._child("prefetched", worker, name).inc()
        elif type_ == "task-started" and task.started:
            self._child("prefetch_time", worker, name).set(task.started - task.received)
            self._child("prefetched", worker, name).dec()
        elif type_ in ("task-succeeded", "task-failed") and task.started:
            self._child("prefetch_time", worker, name).set(0)
        elif type_ in ("task-revoked", "task-rejected") and not task.started:
            self._child("prefetched", worker, name).dec()

    def remove_workers(self, hostnames: Iterable[str]) -> int:
        """Remove every series of *hostnames*; returns how many workers had series."""
        removed = 0
        for hostname in hostnames:
            labelsets = self._labels.pop(hostname, None)
            if not labelsets:
                continue
            removed += 1
            for metric, labels in labelsets:
                self._children.pop((metric, labels), None)
                try:
                    self._by_name[metric].remove(*labels)
                except KeyError:
                    pass
        return removed

    def workers(self) -> list[str]:
        """Workers that have series now."""
        return list(self._labels)
