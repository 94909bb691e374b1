"""``ClusterState``: the cluster as seen through its monitoring events.

A bounded, fast, in-memory model of tasks and workers with the semantics of
``celery.events.state.State`` (what Flower shows), plus the indexes and
statistics dashboards and exporters need.  Feed it with :meth:`ClusterState.apply`
or :meth:`ClusterState.follow`.  The design and every rule are described in
``docs/state.md``.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from itertools import islice
from types import MappingProxyType
from typing import Any

from ._events import Event
from ._state_models import (
    CUSTOM_RANK,
    PRECEDENCE,
    READY_STATES,
    RETRY_RANK,
    TaskState,
    WorkerState,
)
from ._state_stats import RateCounter, Reservoir

__all__ = ["ClusterState"]

_Handler = Callable[[Mapping[str, Any], float], TaskState | WorkerState | None]

# Worker event kinds.
_ONLINE, _HEARTBEAT, _OFFLINE, _OTHER = 0, 1, 2, 3

# Fields of the event envelope, never copied into ``TaskState.extra``.
_COMMON = frozenset(
    {"type", "hostname", "timestamp", "utcoffset", "pid", "clock", "local_received", "uuid"}
)

_NUMBER = (float, int)

_RECEIVED_FIELDS = ("args", "kwargs", "root_id", "retries", "eta", "expires")
_SENT_FIELDS = (*_RECEIVED_FIELDS, "queue", "exchange", "routing_key")


class ClusterState:
    """Tasks and workers of a Celery cluster, kept up to date from its events.

    :param max_tasks: how many tasks to keep; beyond it finished tasks are
        evicted first (oldest finished first), unfinished ones only when no
        finished task is left (oldest first).
    :param max_workers: how many workers to keep (the one heard from least
        recently is evicted).
    :param expire_window: a worker is alive until ``freq * expire_window / 100``
        seconds after the last event received from it (Celery's 200: twice
        the heartbeat interval).
    :param clock: the time source (epoch seconds) used for liveness, rates and
        for events that carry no ``local_received``; inject one in tests.
    :param rate_window: seconds averaged by :meth:`rates`.
    :param reservoir_size: how many recent runtimes and queue waits are kept
        for :meth:`runtime_percentiles` / :meth:`queue_wait_percentiles`.
    """

    __slots__ = (
        "_by_name",
        "_by_state",
        "_by_worker",
        "_counts",
        "_expire_window",
        "_handlers",
        "_now",
        "_pending_children",
        "_rates",
        "_ready",
        "_tasks",
        "_unready",
        "_w",
        "_workers",
        "event_count",
        "evicted_tasks",
        "evicted_workers",
        "ignored_events",
        "max_tasks",
        "max_workers",
        "queue_waits",
        "runtimes",
    )

    def __init__(
        self,
        *,
        max_tasks: int = 10_000,
        max_workers: int = 5_000,
        expire_window: float = 200.0,
        clock: Callable[[], float] = time.time,
        rate_window: int = 10,
        reservoir_size: int = 10_000,
    ) -> None:
        if max_tasks < 1 or max_workers < 1:
            raise ValueError("max_tasks and max_workers must be at least 1")
        self.max_tasks = max_tasks
        self.max_workers = max_workers
        self._expire_window = float(expire_window)
        self._now = clock
        #: Every task by id, ordered by the arrival of its latest event.
        self._tasks: dict[str, TaskState] = {}
        #: Finished tasks, in the order they finished (eviction candidates first).
        self._ready: OrderedDict[str, TaskState] = OrderedDict()
        #: Unfinished tasks, in the order they were created or became unfinished.
        self._unready: OrderedDict[str, TaskState] = OrderedDict()
        self._by_state: dict[str, dict[str, TaskState]] = {}
        self._by_name: dict[str, dict[str, TaskState]] = {}
        self._by_worker: dict[str, dict[str, TaskState]] = {}
        #: parent id -> child ids seen before the parent itself.
        self._pending_children: OrderedDict[str, dict[str, None]] = OrderedDict()
        self._workers: OrderedDict[str, WorkerState] = OrderedDict()
        self._counts: dict[str, int] = {}
        #: The worker of the task event being applied (for the loss counters).
        self._w: WorkerState | None = None
        self._rates = RateCounter(rate_window)
        #: Recent ``runtime`` values of ``task-succeeded`` events.
        self.runtimes = Reservoir(reservoir_size)
        #: Recent ``started - received`` delays (tasks without ``eta``).
        self.queue_waits = Reservoir(reservoir_size)
        #: Events applied (ignored ones included).
        self.event_count = 0
        #: Events that could not be used (no type, task event without ``uuid``,
        #: worker event without ``hostname``).
        self.ignored_events = 0
        self.evicted_tasks = 0
        self.evicted_workers = 0
        self._handlers: dict[str, _Handler] = {
            "task-sent": self._on_task_sent,
            "task-received": self._on_task_received,
            "task-started": self._on_task_started,
            "task-succeeded": self._on_task_succeeded,
            "task-failed": self._on_task_failed,
            "task-retried": self._on_task_retried,
            "task-revoked": self._on_task_revoked,
            "task-rejected": self._on_task_rejected,
            "worker-heartbeat": self._on_worker_heartbeat,
            "worker-online": self._on_worker_online,
            "worker-offline": self._on_worker_offline,
        }

    # ------------------------------------------------------------------ feeding

    def apply(self, event: Event | Mapping[str, Any]) -> TaskState | WorkerState | None:
        """Apply one event; returns the task or worker record it touched, if any.

        *event* is an :class:`~aiocelev.Event` or a wire dict (as
        :meth:`Event.from_dict` would accept; it is read, never kept or changed).
        """
        if type(event) is dict:
            f: Mapping[str, Any] = event
        elif isinstance(event, Event):
            f = event._fields
        else:
            f = event
        self.event_count += 1
        type_ = f.get("type")
        if type(type_) is not str:
            self.ignored_events += 1
            return None
        counts = self._counts
        counts[type_] = counts.get(type_, 0) + 1
        lr = f.get("local_received")
        if type(lr) is not float and type(lr) is not int:
            lr = self._now()
        rates = self._rates
        try:
            sec = int(lr)
        except (ValueError, OverflowError):  # NaN or infinity in a hand-made dict
            lr = self._now()
            sec = int(lr)
        if sec == rates.current_sec:
            bucket = rates.current
            bucket[type_] = bucket.get(type_, 0) + 1
        else:
            rates.add(type_, lr)
        handler = self._handlers.get(type_)
        if handler is None:
            group, _, subject = type_.partition("-")
            if group == "task":
                return self._on_task_custom(f, lr, subject.upper())
            if group == "worker":
                return self._on_worker(f, lr, _OTHER)
            return None
        return handler(f, lr)

    def apply_many(self, events: Iterable[Event | Mapping[str, Any]]) -> None:
        """Apply every event of *events* in order."""
        apply = self.apply
        for event in events:
            apply(event)

    async def follow(self, receiver: AsyncIterable[Event]) -> AsyncIterator[Event]:
        """Apply each event from *receiver*, then yield it.

        ``receiver`` is any async iterable of events (e.g. an ``EventReceiver``).
        The generator owns nothing: closing it (``aclose``, or leaving an
        ``async with contextlib.aclosing(...)`` block) simply stops reading.
        """
        apply = self.apply
        async for event in receiver:
            apply(event)
            yield event

    # ------------------------------------------------------------------ tasks

    def _task(self, f: Mapping[str, Any], lr: float, worker_side: bool) -> TaskState | None:
        """The task an event is about (created if new), moved to the recent end.

        For worker-side events, also attributes the task to the sending worker
        and counts the event as a sign of life from it.
        """
        uuid = f.get("uuid")
        if type(uuid) is not str:
            self.ignored_events += 1
            return None
        tasks = self._tasks
        t = tasks.pop(uuid, None)
        if t is None:
            t = TaskState(uuid)
            tasks[uuid] = t
            self._unready[uuid] = t
            by_state = self._by_state
            idx = by_state.get("PENDING")
            if idx is None:
                idx = by_state["PENDING"] = {}
            idx[uuid] = t
            pending = self._pending_children.pop(uuid, None)
            if pending is not None:
                t._children = pending
            if len(tasks) > self.max_tasks:
                self._evict_task()
        else:
            tasks[uuid] = t
        self._w = None
        if worker_side:
            hostname = f.get("hostname")
            if type(hostname) is str:
                if t.worker != hostname:
                    self._set_task_worker(t, hostname)
                w = self._workers.get(hostname)
                if w is None:
                    w = self._new_worker(hostname)
                seen = w.last_seen
                if seen is None or lr > seen:
                    w.last_seen = lr
                counts = w.event_counts
                type_ = f["type"]
                counts[type_] = counts.get(type_, 0) + 1
                self._w = w
        return t

    def _transition(self, t: TaskState, state: str, rank: int, f: Mapping[str, Any]) -> bool:
        """Apply Celery's precedence rule; returns whether the event set the state.

        An event whose state ranks as logically older than the current one (and
        neither is ``RETRY``) leaves ``state`` unchanged.
        """
        cur = t._rank
        if rank > cur and rank != RETRY_RANK and cur != RETRY_RANK:
            return False
        t.timestamp = f.get("timestamp")
        clock = f.get("clock")
        if clock is not None:
            t.clock = clock
        old = t.state
        if old != state:
            uuid = t.uuid
            by_state = self._by_state
            idx = by_state[old]
            del idx[uuid]
            if not idx:
                del by_state[old]
            new_idx = by_state.get(state)
            if new_idx is None:
                new_idx = by_state[state] = {}
            new_idx[uuid] = t
            now_ready = state in READY_STATES
            if (old in READY_STATES) != now_ready:
                if now_ready:
                    del self._unready[uuid]
                    self._ready[uuid] = t
                else:
                    del self._ready[uuid]
                    self._unready[uuid] = t
            t.state = state
        t._rank = rank
        return True

    def _set_task_name(self, t: TaskState, name: Any) -> None:
        """Change a task's name, keeping the by-name index in step."""
        by_name = self._by_name
        uuid = t.uuid
        old = t.name
        if old is not None:
            idx = by_name[old]
            del idx[uuid]
            if not idx:
                del by_name[old]
        t.name = name
        if name is not None:
            new_idx = by_name.get(name)
            if new_idx is None:
                new_idx = by_name[name] = {}
            new_idx[uuid] = t

    def _set_task_worker(self, t: TaskState, hostname: str) -> None:
        """Change a task's worker, keeping the by-worker index in step."""
        by_worker = self._by_worker
        uuid = t.uuid
        old = t.worker
        if old is not None:
            idx = by_worker[old]
            del idx[uuid]
            if not idx:
                del by_worker[old]
        t.worker = hostname
        new_idx = by_worker.get(hostname)
        if new_idx is None:
            new_idx = by_worker[hostname] = {}
        new_idx[uuid] = t

    def _set_parent(self, t: TaskState, parent_id: Any) -> None:
        """Record ``parent_id`` and link the task into its parent's children."""
        t.parent_id = parent_id
        if parent_id is None:
            return
        parent = self._tasks.get(parent_id)
        if parent is not None:
            children = parent._children
            if children is None:
                children = parent._children = {}
            children[t.uuid] = None
            return
        pending = self._pending_children
        children = pending.get(parent_id)
        if children is None:
            children = pending[parent_id] = {}
            if len(pending) > self.max_tasks:
                pending.popitem(last=False)
        children[t.uuid] = None

    def _copy_fields(self, t: TaskState, f: Mapping[str, Any], names: tuple[str, ...]) -> None:
        """Copy the present fields *names* (plus ``name``/``parent_id``) onto the task."""
        if "name" in f:
            name = f["name"]
            if name != t.name and (name is None or type(name) is str):
                self._set_task_name(t, name)
        if "parent_id" in f:
            parent_id = f["parent_id"]
            if parent_id != t.parent_id and (parent_id is None or type(parent_id) is str):
                self._set_parent(t, parent_id)
        for key in names:
            if key in f:
                setattr(t, key, f[key])

    def _record_wait(self, t: TaskState) -> None:
        """Add ``started - received`` to the queue-wait reservoir once per attempt."""
        r, s = t.received, t.started
        if (
            not t._waited and t.eta is None and type(r) in _NUMBER and type(s) in _NUMBER and s >= r  # type: ignore[operator]
        ):
            t._waited = True
            self.queue_waits.add(s - r)  # type: ignore[operator]

    def _on_task_sent(self, f: Mapping[str, Any], lr: float) -> TaskState | None:
        """``task-sent``: PENDING; the sender is the task's client."""
        t = self._task(f, lr, False)
        if t is None:
            return None
        t.client = f.get("hostname")
        t.sent = f.get("timestamp")
        self._copy_fields(t, f, _SENT_FIELDS)
        self._transition(t, "PENDING", 8, f)
        return t

    def _on_task_received(self, f: Mapping[str, Any], lr: float) -> TaskState | None:
        """``task-received``: RECEIVED; name/args/... are taken even when late."""
        t = self._task(f, lr, True)
        if t is None:
            return None
        t.received = f.get("timestamp")
        t._waited = False
        self._copy_fields(t, f, _RECEIVED_FIELDS)
        self._transition(t, "RECEIVED", 5, f)
        if t.started is not None:
            self._record_wait(t)
        return t

    def _on_task_started(self, f: Mapping[str, Any], lr: float) -> TaskState | None:
        """``task-started``: STARTED."""
        t = self._task(f, lr, True)
        if t is None:
            return None
        t.started = f.get("timestamp")
        self._transition(t, "STARTED", 4, f)
        if t.received is not None:
            self._record_wait(t)
        self._count_worker(started=True)
        return t

    def _on_task_succeeded(self, f: Mapping[str, Any], lr: float) -> TaskState | None:
        """``task-succeeded``: SUCCESS, with ``result`` and ``runtime``."""
        t = self._task(f, lr, True)
        if t is None:
            return None
        t.succeeded = f.get("timestamp")
        if "result" in f:
            t.result = f["result"]
        runtime = f.get("runtime")
        if runtime is not None:
            t.runtime = runtime
            if type(runtime) in _NUMBER:
                self.runtimes.add(runtime)
        self._transition(t, "SUCCESS", 0, f)
        self._count_worker()
        return t

    def _on_task_failed(self, f: Mapping[str, Any], lr: float) -> TaskState | None:
        """``task-failed``: FAILURE, with ``exception`` and ``traceback``."""
        t = self._task(f, lr, True)
        if t is None:
            return None
        t.failed = f.get("timestamp")
        if "exception" in f:
            t.exception = f["exception"]
        if "traceback" in f:
            t.traceback = f["traceback"]
        self._transition(t, "FAILURE", 1, f)
        self._count_worker()
        return t

    def _on_task_retried(self, f: Mapping[str, Any], lr: float) -> TaskState | None:
        """``task-retried``: RETRY (always overrides and is always overridden)."""
        t = self._task(f, lr, True)
        if t is None:
            return None
        t.retried = f.get("timestamp")
        if "exception" in f:
            t.exception = f["exception"]
        if "traceback" in f:
            t.traceback = f["traceback"]
        self._transition(t, "RETRY", RETRY_RANK, f)
        self._count_worker()
        return t

    def _on_task_revoked(self, f: Mapping[str, Any], lr: float) -> TaskState | None:
        """``task-revoked``: REVOKED (counts as a completion only when it terminated a run)."""
        t = self._task(f, lr, True)
        if t is None:
            return None
        t.revoked = f.get("timestamp")
        self._transition(t, "REVOKED", 3, f)
        if f.get("terminated"):
            self._count_worker()
        return t

    def _on_task_rejected(self, f: Mapping[str, Any], lr: float) -> TaskState | None:
        """``task-rejected``: REJECTED (ignored after STARTED, as in Celery)."""
        t = self._task(f, lr, True)
        if t is None:
            return None
        was_started = t.state == "STARTED"
        t.rejected = f.get("timestamp")
        self._transition(t, "REJECTED", 6, f)
        if was_started:
            # A task that ran and rejected its message (``Reject`` raised).
            self._count_worker()
        return t

    def _on_task_custom(self, f: Mapping[str, Any], lr: float, state: str) -> TaskState | None:
        """A custom task event (``task-progress``...): the upper-cased subject is the state."""
        t = self._task(f, lr, True)
        if t is None:
            return None
        extra = t.extra
        if extra is None:
            extra = t.extra = {}
        for key, value in f.items():
            if key not in _COMMON:
                extra[key] = value
        self._transition(t, state, PRECEDENCE.get(state, CUSTOM_RANK), f)
        if state == "CANCELLED":
            self._count_worker()
        return t

    def _evict_task(self) -> None:
        """Drop one task: the oldest finished one, else the oldest unfinished one."""
        # OrderedDict: taking the oldest entry is O(1) (a plain dict would
        # rescan the holes its deletions left at the front).
        uuid, t = (self._ready or self._unready).popitem(last=False)
        del self._tasks[uuid]
        self.evicted_tasks += 1
        by_state = self._by_state
        idx = by_state[t.state]
        del idx[uuid]
        if not idx:
            del by_state[t.state]
        if t.name is not None:
            idx = self._by_name[t.name]
            del idx[uuid]
            if not idx:
                del self._by_name[t.name]
        if t.worker is not None:
            idx = self._by_worker[t.worker]
            del idx[uuid]
            if not idx:
                del self._by_worker[t.worker]

    # ------------------------------------------------------------------ workers

    def _new_worker(self, hostname: str) -> WorkerState:
        """Create and store a worker record, evicting the least recently heard one if full."""
        w = WorkerState(hostname, self._now, self._expire_window)
        workers = self._workers
        workers[hostname] = w
        if len(workers) > self.max_workers:
            workers.popitem(last=False)
            self.evicted_workers += 1
        return w

    def _count_worker(self, started: bool = False) -> None:
        """Count a started/finished task event for the loss estimate of its worker."""
        w = self._w
        if w is None:
            return
        if started:
            w.started_seen += 1
        else:
            w.done_seen += 1

    def _on_worker_online(self, f: Mapping[str, Any], lr: float) -> WorkerState | None:
        """``worker-online``."""
        return self._on_worker(f, lr, _ONLINE)

    def _on_worker_heartbeat(self, f: Mapping[str, Any], lr: float) -> WorkerState | None:
        """``worker-heartbeat``."""
        return self._on_worker(f, lr, _HEARTBEAT)

    def _on_worker_offline(self, f: Mapping[str, Any], lr: float) -> WorkerState | None:
        """``worker-offline``."""
        return self._on_worker(f, lr, _OFFLINE)

    def _on_worker(self, f: Mapping[str, Any], lr: float, kind: int) -> WorkerState | None:
        """Any ``worker-*`` event: fields, liveness, drift, restarts, loss baseline."""
        hostname = f.get("hostname")
        if type(hostname) is not str:
            self.ignored_events += 1
            return None
        workers = self._workers
        w = workers.get(hostname)
        if w is None:
            if kind == _OFFLINE:
                # Like Celery: a goodbye from an unknown worker creates nothing.
                return None
            w = self._new_worker(hostname)
            first = True
        else:
            workers.move_to_end(hostname)
            first = w._worker_events == 0
        w._worker_events += 1
        counts = w.event_counts
        type_ = f["type"]
        counts[type_] = counts.get(type_, 0) + 1
        get = f.get
        pid = get("pid")
        processed = get("processed")
        active = get("active")
        clock = get("clock")

        if not first:
            new_process = (pid is not None and w.pid is not None and pid != w.pid) or (
                type(processed) is int and type(w.processed) is int and processed < w.processed
            )
            restarted = new_process or (kind == _ONLINE and w.offline)
            if not restarted and type(clock) is int and type(w.clock) is int:
                # The Lamport clock of a fresh process starts again near zero.
                back = w.clock - clock
                restarted = back > 10 and back * 2 > w.clock
                new_process = restarted
            if restarted:
                w.restarts += 1
            if new_process and w._base_done is not None:
                w._missed_done_before += w._missed_done_now()
                w._missed_started_before += w._missed_started_now()
                w._base_done = None

        if pid is not None:
            w.pid = pid
        if clock is not None:
            w.clock = clock
        freq = get("freq")
        if (type(freq) is float or type(freq) is int) and freq > 0:
            w.freq = freq
        if active is not None:
            w.active = active
        if processed is not None:
            w.processed = processed
        loadavg = get("loadavg")
        if loadavg is not None:
            w.loadavg = loadavg
        if "sw_ident" in f:
            w.sw_ident = f["sw_ident"]
            w.sw_ver = get("sw_ver")
            w.sw_sys = get("sw_sys")
        if "utcoffset" in f:
            w.utcoffset = f["utcoffset"]
        ts = get("timestamp")
        if ts is not None:
            w.timestamp = ts
            received_at = get("local_received")
            if type(ts) in _NUMBER and type(received_at) in _NUMBER:
                w.drift = received_at - ts

        if kind == _OFFLINE:
            w.offline = True
            w.last_seen = None
        else:
            w.offline = False
            seen = w.last_seen
            if seen is None or lr > seen:
                w.last_seen = lr
            if kind == _HEARTBEAT:
                w.heartbeat_count += 1
                w.last_heartbeat = lr

        if w._base_done is None and type(processed) is int and type(active) is int:
            w._base_done = processed - active
            w._base_started = processed
            w._base_seen_done = w.done_seen
            w._base_seen_started = w.started_seen
        return w

    # ------------------------------------------------------------------ queries

    @property
    def tasks(self) -> Mapping[str, TaskState]:
        """Every kept task by id (read-only live view, least recently updated first)."""
        return MappingProxyType(self._tasks)

    @property
    def workers(self) -> Mapping[str, WorkerState]:
        """Every kept worker by hostname (read-only live view)."""
        return MappingProxyType(self._workers)

    def task(self, uuid: str) -> TaskState | None:
        """The task *uuid*, if kept."""
        return self._tasks.get(uuid)

    def worker(self, hostname: str) -> WorkerState | None:
        """The worker *hostname*, if kept."""
        return self._workers.get(hostname)

    @staticmethod
    def _newest(idx: dict[str, TaskState] | None, limit: int | None) -> list[TaskState]:
        """The values of an index, most recently added first."""
        if not idx:
            return []
        return list(islice(reversed(idx.values()), limit))

    def recent_tasks(self, limit: int | None = 100) -> list[TaskState]:
        """Tasks by their latest event, newest first."""
        return self._newest(self._tasks, limit)

    def tasks_by_time(self, limit: int | None = 100) -> list[TaskState]:
        """Tasks by the sender timestamp of the event that set their state, newest first.

        Unlike :meth:`recent_tasks` (arrival order, free) this sorts: O(n log limit).
        """

        def key(t: TaskState) -> float:
            ts = t.timestamp
            return ts if type(ts) is float or type(ts) is int else float("-inf")

        tasks = self._tasks.values()
        if limit is None:
            return sorted(tasks, key=key, reverse=True)
        return heapq.nlargest(limit, tasks, key=key)

    def tasks_by_state(self, state: str, limit: int | None = None) -> list[TaskState]:
        """Tasks currently in *state*, the most recent to enter it first."""
        return self._newest(self._by_state.get(state), limit)

    def tasks_by_name(self, name: str, limit: int | None = None) -> list[TaskState]:
        """Tasks named *name*, most recently named first."""
        return self._newest(self._by_name.get(name), limit)

    def tasks_by_worker(self, hostname: str, limit: int | None = None) -> list[TaskState]:
        """Tasks last handled by worker *hostname*, most recently assigned first."""
        return self._newest(self._by_worker.get(hostname), limit)

    def ready_tasks(self, limit: int | None = None) -> list[TaskState]:
        """Finished tasks, the most recently finished first."""
        return self._newest(self._ready, limit)

    def unready_tasks(self, limit: int | None = None) -> list[TaskState]:
        """Unfinished tasks, the most recently created (or re-opened) first."""
        return self._newest(self._unready, limit)

    def state_counts(self) -> dict[str, int]:
        """How many kept tasks are in each state."""
        return {state: len(idx) for state, idx in self._by_state.items()}

    def name_counts(self) -> dict[str, int]:
        """How many kept tasks have each name."""
        return {name: len(idx) for name, idx in self._by_name.items()}

    def worker_task_counts(self) -> dict[str, int]:
        """How many kept tasks each worker handled last."""
        return {host: len(idx) for host, idx in self._by_worker.items()}

    def task_names(self) -> list[str]:
        """The names of the kept tasks, sorted."""
        return sorted(self._by_name)

    def children(self, uuid: str) -> list[TaskState]:
        """The kept child tasks of task *uuid*."""
        t = self._tasks.get(uuid)
        if t is None or not t._children:
            return []
        tasks = self._tasks
        return [tasks[c] for c in t._children if c in tasks]

    def alive_workers(self) -> list[WorkerState]:
        """The workers currently alive."""
        return [w for w in self._workers.values() if w.alive]

    def event_counts(self) -> dict[str, int]:
        """How many events of each type were applied."""
        return dict(self._counts)

    def rates(self) -> dict[str, float]:
        """Events per second by type over the last ``rate_window`` complete seconds."""
        return self._rates.rates(self._now())

    def rate(self, type_: str | None = None) -> float:
        """Events per second of *type_* (of every type when ``None``)."""
        rates = self.rates()
        if type_ is None:
            return sum(rates.values())
        return rates.get(type_, 0.0)

    def runtime_percentiles(
        self, qs: Iterable[float] = (50, 90, 95, 99)
    ) -> dict[float, float | None]:
        """Percentiles of the recent task runtimes (seconds): ``{q: value}``."""
        return self.runtimes.percentiles(qs)

    def queue_wait_percentiles(
        self, qs: Iterable[float] = (50, 90, 95, 99)
    ) -> dict[float, float | None]:
        """Percentiles of the recent ``started - received`` delays (seconds)."""
        return self.queue_waits.percentiles(qs)

    def clear(self) -> None:
        """Forget every task, worker, counter and sample."""
        for d in (
            self._tasks,
            self._ready,
            self._unready,
            self._by_state,
            self._by_name,
            self._by_worker,
            self._pending_children,
            self._workers,
            self._counts,
        ):
            d.clear()
        self._rates.clear()
        self.runtimes.clear()
        self.queue_waits.clear()
        self.event_count = self.ignored_events = 0
        self.evicted_tasks = self.evicted_workers = 0

    def __len__(self) -> int:
        return len(self._tasks)

    def __repr__(self) -> str:
        return (
            f"<ClusterState tasks={len(self._tasks)} workers={len(self._workers)} "
            f"events={self.event_count}>"
        )
