"""What :class:`~aiocelev.ClusterState` keeps, and how it stays consistent.

:class:`StateStore` owns every container: the tasks (with their eviction
queues and :class:`~aiocelev._state_index.TaskIndex` indexes), the workers,
the counters and samples.  Its methods create and drop tasks (every kept index
is updated in the same step) and keep the eviction queues in step with the
finished line.  The indexes by state, name and worker are built by the first
query that needs one and kept from then on; until then a change only stamps
the task with a sequence number, the order the indexes are built in.  The
reducer (``_state_reducer``) decides *what* changes; the query mixins read.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any

from ._exceptions import ConfigurationError
from ._state_index import TaskIndex
from ._state_liveness import DeafSpans, LossEstimate
from ._state_models import CUSTOM_RANK, PRECEDENCE, READY_STATES, TaskState, WorkerState
from ._state_stats import RateCounter, Reservoir

__all__ = ["StateStore"]

_PENDING = PRECEDENCE["PENDING"]

#: ``TaskState`` fields that :meth:`StateStore.restore_task` copies as they are.
_TASK_PLAIN = (
    "client",
    "args",
    "kwargs",
    "result",
    "exception",
    "traceback",
    "runtime",
    "retries",
    "eta",
    "expires",
    "root_id",
    "queue",
    "exchange",
    "routing_key",
    "sent",
    "received",
    "started",
    "succeeded",
    "failed",
    "retried",
    "revoked",
    "rejected",
    "timestamp",
    "clock",
)
#: ``WorkerState`` fields that :meth:`StateStore.restore_worker` copies as they are.
_WORKER_PLAIN = (
    "pid",
    "clock",
    "active",
    "processed",
    "loadavg",
    "sw_ident",
    "sw_ver",
    "sw_sys",
    "utcoffset",
    "timestamp",
    "drift",
)


_STATE = attrgetter("state")
_NAME = attrgetter("name")
_WORKER = attrgetter("worker")
_SEQ_STATE = attrgetter("_seq_state")
_SEQ_NAME = attrgetter("_seq_name")
_SEQ_WORKER = attrgetter("_seq_worker")


def _rank(state: str) -> int:
    return PRECEDENCE.get(state, CUSTOM_RANK)


def _optional_str(value: Any) -> bool:
    return value is None or type(value) is str


def _optional_number(value: Any) -> bool:
    return value is None or type(value) is float or type(value) is int


class StateStore:
    """The containers of a cluster state and their bookkeeping (see the module doc)."""

    __slots__ = (
        "_by_name",
        "_by_state",
        "_by_worker",
        "_deaf",
        "_expire_window",
        "_indexed",
        "_pending_children",
        "_rates",
        "_ready",
        "_seq",
        "_tasks",
        "_time_source",
        "_unready",
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
        time_source: Callable[[], float] = time.time,
        rate_window: int = 10,
        reservoir_size: int = 10_000,
    ) -> None:
        if type(max_tasks) is not int or max_tasks < 1:
            raise ConfigurationError(
                f"max_tasks must be an integer of at least 1, not {max_tasks!r}"
            )
        if type(max_workers) is not int or max_workers < 1:
            raise ConfigurationError(
                f"max_workers must be an integer of at least 1, not {max_workers!r}"
            )
        if type(expire_window) not in (int, float) or not expire_window > 0:
            raise ConfigurationError(
                f"expire_window must be a positive number, not {expire_window!r}"
            )
        if not callable(time_source):
            raise ConfigurationError(f"time_source must be callable, not {time_source!r}")
        try:
            rates = RateCounter(rate_window)
            runtimes, queue_waits = Reservoir(reservoir_size), Reservoir(reservoir_size)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        #: How many tasks are kept (see "Bounds and eviction" in ``docs/state.md``).
        self.max_tasks = max_tasks
        #: How many workers are kept.
        self.max_workers = max_workers
        self._expire_window = float(expire_window)
        self._time_source = time_source
        #: When the state could not hear the cluster (see ``connection_lost``).
        self._deaf = DeafSpans()
        #: Every task by id, ordered by the arrival of its latest event.
        self._tasks: dict[str, TaskState] = {}
        #: Finished tasks, in the order they finished (eviction candidates first).
        self._ready: OrderedDict[str, TaskState] = OrderedDict()
        #: Unfinished tasks, in the order they were created or became unfinished.
        self._unready: OrderedDict[str, TaskState] = OrderedDict()
        self._by_state: TaskIndex[TaskState] = TaskIndex()
        self._by_name: TaskIndex[TaskState] = TaskIndex()
        self._by_worker: TaskIndex[TaskState] = TaskIndex()
        #: Whether the three indexes above are kept: from the first query that
        #: needs one (:meth:`_ensure_indexed`) on.  Until then a change of
        #: state, name or worker only stamps the task with the next ``_seq``
        #: (its ``_seq_state`` / ``_seq_name`` / ``_seq_worker``), the order
        #: in which the indexes are built.
        self._indexed = False
        self._seq = 0
        #: parent id -> child ids seen before the parent itself.
        self._pending_children: OrderedDict[str, dict[str, None]] = OrderedDict()
        #: Every worker by hostname, the one heard from least recently first.
        self._workers: OrderedDict[str, WorkerState] = OrderedDict()
        self._rates = rates
        #: Recent ``runtime`` values of ``task-succeeded`` events.
        self.runtimes = runtimes
        #: Recent ``started - received`` delays (tasks without ``eta``).
        self.queue_waits = queue_waits
        #: Events applied (ignored ones included).
        self.event_count = 0
        #: Events that could not be used (no type, task event without ``uuid``,
        #: worker event without ``hostname``).
        self.ignored_events = 0
        #: Tasks dropped to stay within ``max_tasks``.
        self.evicted_tasks = 0
        #: Workers dropped to stay within ``max_workers``.
        self.evicted_workers = 0

    # ------------------------------------------------------------------ tasks

    def _new_task(self, uuid: str, state: str = "PENDING", rank: int = _PENDING) -> TaskState:
        """Create, index and store task *uuid* (unknown so far), evicting one if full.

        The task starts in *state* (of precedence *rank*): every state ranks
        at or before ``PENDING``, so the first event of a task always sets it.
        """
        tasks = self._tasks
        if len(tasks) >= self.max_tasks:
            self._evict_task()
        t = TaskState(uuid)
        tasks[uuid] = t
        if state in READY_STATES:
            self._ready[uuid] = t
        else:
            self._unready[uuid] = t
        t.state = state
        t._rank = rank
        if self._indexed:
            self._by_state.add(state, uuid, t)
        else:
            self._seq = t._seq_state = self._seq + 1
        if self._pending_children:
            pending = self._pending_children.pop(uuid, None)
            if pending is not None:
                t._children = pending
        return t

    def _set_state(self, t: TaskState, state: str, rank: int) -> None:
        """Put task *t* in another *state* (of precedence *rank*), every index in step.

        Moves it to the newest end of its state group, and to the other
        eviction queue when it crosses the finished line.
        """
        old = t.state
        if self._indexed:
            self._by_state.move(old, state, t.uuid, t)
        else:
            self._seq = t._seq_state = self._seq + 1
        ready = state in READY_STATES
        if ready is not (old in READY_STATES):
            self._requeue(t, ready)
        t.state = state
        t._rank = rank

    def _set_name(self, t: TaskState, name: str | None) -> None:
        """Give task *t* another ``name``, the index by name in step."""
        if self._indexed:
            self._by_name.move(t.name, name, t.uuid, t)
        else:
            self._seq = t._seq_name = self._seq + 1
        t.name = name

    def _set_worker(self, t: TaskState, worker: str | None) -> None:
        """Attribute task *t* to another ``worker``, the index by worker in step."""
        if self._indexed:
            self._by_worker.move(t.worker, worker, t.uuid, t)
        else:
            self._seq = t._seq_worker = self._seq + 1
        t.worker = worker

    def _ensure_indexed(self) -> None:
        """Build the indexes by state, name and worker if they are not kept yet.

        Each group is filled in the order its tasks joined it (their
        ``_seq_*`` stamps), so the result is what keeping the index from the
        start would have given.  From then on every change keeps them.
        """
        if self._indexed:
            return
        tasks = list(self._tasks.values())
        for index, key, seq in (
            (self._by_state, _STATE, _SEQ_STATE),
            (self._by_name, _NAME, _SEQ_NAME),
            (self._by_worker, _WORKER, _SEQ_WORKER),
        ):
            index.clear()
            for t in sorted(tasks, key=seq):
                value = key(t)
                if value is not None:
                    index.add(value, t.uuid, t)
        self._indexed = True

    def _requeue(self, t: TaskState, ready: bool) -> None:
        """Move a task whose state crossed the finished line to the other eviction queue."""
        uuid = t.uuid
        if ready:
            del self._unready[uuid]
            self._ready[uuid] = t
        else:
            del self._ready[uuid]
            self._unready[uuid] = t

    def _evict_task(self) -> None:
        """Drop one task: the oldest finished one, else the oldest unfinished one."""
        # OrderedDict: taking the oldest entry is O(1) (a plain dict would
        # rescan the holes its deletions left at the front).
        uuid, t = (self._ready or self._unready).popitem(last=False)
        del self._tasks[uuid]
        self.evicted_tasks += 1
        if self._indexed:
            self._by_state.remove(t.state, uuid)
            self._by_name.remove(t.name, uuid)
            self._by_worker.remove(t.worker, uuid)

    def forget_task(self, uuid: str) -> TaskState | None:
        """Drop task *uuid* from the state as eviction would (not counted as evicted).

        Every index and queue follows; the ``children`` links of other tasks
        are left as they are.  Returns the task dropped, ``None`` if it was not kept.
        """
        t = self._tasks.pop(uuid, None)
        if t is None:
            return None
        if uuid in self._ready:
            del self._ready[uuid]
        else:
            del self._unready[uuid]
        if self._indexed:
            self._by_state.remove(t.state, uuid)
            self._by_name.remove(t.name, uuid)
            self._by_worker.remove(t.worker, uuid)
        return t

    def _add_child(self, parent_id: str, uuid: str) -> None:
        """Link task *uuid* to its parent, remembered until the parent is seen."""
        parent = self._tasks.get(parent_id)
        if parent is not None:
            children = parent._children
            if children is None:
                children = parent._children = {}
            children[uuid] = None
            return
        pending = self._pending_children
        children = pending.get(parent_id)
        if children is None:
            children = pending[parent_id] = {}
            if len(pending) > self.max_tasks:
                pending.popitem(last=False)
        children[uuid] = None

    # ------------------------------------------------------------------ workers

    def _new_worker(self, hostname: str) -> WorkerState:
        """Create and store a worker record, evicting the least recently heard one if full."""
        w = WorkerState(hostname, self._time_source, self._expire_window, self._deaf)
        workers = self._workers
        workers[hostname] = w
        if len(workers) > self.max_workers:
            workers.popitem(last=False)
            self.evicted_workers += 1
        return w

    # ------------------------------------------------------------------ restore

    def restore_task(self, fields: Mapping[str, Any]) -> TaskState:
        """Put a task known from elsewhere (a stored history...) into the state.

        *fields* is shaped as :meth:`TaskState.to_dict` gives it (``uuid``
        required; a missing key leaves that field as it was, ``None`` for a new
        task; ``ready`` is derived from ``state`` and unknown keys are
        ignored).  The task is created if new (evicting one beyond
        ``max_tasks``, as for an event) or overwritten, and moved to the recent
        end; every index, the finished / unfinished queues and the parent and
        ``children`` links follow.  ``state``, ``name``, ``worker`` and
        ``parent_id`` of the wrong type are not used.  No event is counted and
        no rate, runtime or queue wait is recorded.  Events applied afterwards
        follow the usual precedence rules.

        :raises ConfigurationError: ``uuid`` is missing or not a string.
        """
        uuid = fields.get("uuid")
        if type(uuid) is not str:
            raise ConfigurationError(f"a task needs a string 'uuid', not {uuid!r}")
        state = fields.get("state")
        if type(state) is not str:
            state = None
        tasks = self._tasks
        t = tasks.pop(uuid, None)
        if t is None:
            t = self._new_task(
                uuid, state or "PENDING", _PENDING if state is None else _rank(state)
            )
        else:
            tasks[uuid] = t
            if state is not None and state != t.state:
                self._set_state(t, state, _rank(state))
        if "name" in fields:
            name = fields["name"]
            if name != t.name and _optional_str(name):
                self._set_name(t, name)
        if "worker" in fields:
            worker = fields["worker"]
            if worker != t.worker and _optional_str(worker):
                self._set_worker(t, worker)
        for key in _TASK_PLAIN:
            if key in fields:
                setattr(t, key, fields[key])
        if "parent_id" in fields:
            parent_id = fields["parent_id"]
            if _optional_str(parent_id):
                t.parent_id = parent_id
                if parent_id is not None:
                    self._add_child(parent_id, uuid)
        children = fields.get("children")
        if children:
            kept = t._children
            if kept is None:
                kept = t._children = {}
            for child in children:
                if type(child) is str:
                    kept[child] = None
        if "extra" in fields:
            extra = fields["extra"]
            t.extra = dict(extra) if extra else None
        # A restored attempt's queue wait is history, not a new sample.
        t._waited = t.received is not None and t.started is not None
        return t

    def restore_worker(self, fields: Mapping[str, Any]) -> WorkerState:
        """Put a worker known from elsewhere (a stored history...) into the state.

        *fields* is shaped as :meth:`WorkerState.to_dict` gives it
        (``hostname`` required; a missing key leaves that field as it was;
        ``alive``, ``status``, ``heartbeat_expires`` and the loss estimates are
        derived and ignored, as are unknown keys).  The worker is created if new
        (evicting the least recently heard one beyond ``max_workers``) or
        overwritten, and counts as the most recently heard.  Liveness follows
        from ``last_seen``, ``freq`` and ``offline`` as for any worker; the
        lost-event estimate starts afresh with the next heartbeat.  A ``freq``
        that is not a positive number and counters of the wrong type are not
        used.

        :raises ConfigurationError: ``hostname`` is missing or not a string.
        """
        hostname = fields.get("hostname")
        if type(hostname) is not str:
            raise ConfigurationError(f"a worker needs a string 'hostname', not {hostname!r}")
        workers = self._workers
        w = workers.get(hostname)
        if w is None:
            w = self._new_worker(hostname)
        else:
            workers.move_to_end(hostname)
        for key in _WORKER_PLAIN:
            if key in fields:
                setattr(w, key, fields[key])
        freq = fields.get("freq")
        if (type(freq) is float or type(freq) is int) and freq > 0:
            w.freq = freq
        for key in ("last_seen", "last_heartbeat"):
            if key in fields and _optional_number(fields[key]):
                setattr(w, key, fields[key])
        for key in ("heartbeat_count", "restarts"):
            value = fields.get(key)
            if type(value) is int and value >= 0:
                setattr(w, key, value)
        if "offline" in fields:
            w.offline = bool(fields["offline"])
        w._loss = LossEstimate()
        counts = fields.get("event_counts")
        if isinstance(counts, Mapping):
            w.event_counts = {
                k: v for k, v in counts.items() if type(k) is str and type(v) is int and v >= 0
            }
            # Worker events seen so far: a restored worker is not new to restart detection.
            w._worker_events = sum(v for k, v in w.event_counts.items() if k.startswith("worker-"))
        return w

    # ------------------------------------------------------------------ all

    def clear(self) -> None:
        """Forget every task, worker, counter and sample (the bounds stay)."""
        for d in (
            self._tasks,
            self._ready,
            self._unready,
            self._by_state,
            self._by_name,
            self._by_worker,
            self._pending_children,
            self._workers,
        ):
            d.clear()
        self._rates.clear()
        self.runtimes.clear()
        self.queue_waits.clear()
        self.event_count = self.ignored_events = 0
        self.evicted_tasks = self.evicted_workers = 0
