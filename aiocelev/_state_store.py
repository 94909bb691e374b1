"""What :class:`~aiocelev.ClusterState` keeps, and how it stays consistent.

:class:`StateStore` owns every container: the tasks (with their eviction
queues and :class:`~aiocelev._state_index.TaskIndex` indexes), the workers,
the counters and samples.  Its methods create and drop tasks (every index is
updated in the same step) and keep the eviction queues in step with the
finished line.  The reducer (``_state_reducer``) decides *what* changes and
moves a task between index groups with the index helper; the query mixins
read.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from ._exceptions import ConfigurationError
from ._state_index import TaskIndex
from ._state_liveness import DeafSpans
from ._state_models import PRECEDENCE, READY_STATES, TaskState, WorkerState
from ._state_stats import RateCounter, Reservoir

__all__ = ["StateStore"]

_PENDING = PRECEDENCE["PENDING"]


class StateStore:
    """The containers of a cluster state and their bookkeeping (see the module doc)."""

    __slots__ = (
        "_by_name",
        "_by_state",
        "_by_worker",
        "_deaf",
        "_expire_window",
        "_pending_children",
        "_rates",
        "_ready",
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
        self._by_state.add(state, uuid, t)
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
        self._by_state.move(old, state, t.uuid, t)
        ready = state in READY_STATES
        if ready is not (old in READY_STATES):
            self._requeue(t, ready)
        t.state = state
        t._rank = rank

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
        self._by_state.remove(t.state, uuid)
        self._by_name.remove(t.name, uuid)
        self._by_worker.remove(t.worker, uuid)

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
