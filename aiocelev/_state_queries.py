"""The read side of :class:`~aiocelev.ClusterState`: tasks and workers.

Every query reads the containers kept by
:class:`~aiocelev._state_store.StateStore`; "newest first" lists come from
insertion-ordered indexes, so only :meth:`TaskQueries.tasks_by_time` sorts.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from types import MappingProxyType

from ._state_index import newest
from ._state_models import TaskState, WorkerState
from ._state_store import StateStore

__all__ = ["TaskQueries"]


def _time_key(t: TaskState) -> float:
    """A task's ``timestamp`` for sorting (missing or odd values sort last)."""
    ts = t.timestamp
    return ts if type(ts) is float or type(ts) is int else float("-inf")


class TaskQueries(StateStore):
    """Queries on the kept tasks and workers."""

    __slots__ = ()

    @property
    def tasks(self) -> Mapping[str, TaskState]:
        """Every kept task by id (read-only live view, least recently updated first)."""
        return MappingProxyType(self._tasks)

    @property
    def workers(self) -> Mapping[str, WorkerState]:
        """Every kept worker by hostname (read-only live view, least recently heard first)."""
        return MappingProxyType(self._workers)

    def task(self, uuid: str) -> TaskState | None:
        """The task *uuid*, if kept."""
        return self._tasks.get(uuid)

    def worker(self, hostname: str) -> WorkerState | None:
        """The worker *hostname*, if kept."""
        return self._workers.get(hostname)

    def recent_tasks(self, limit: int | None = 100) -> list[TaskState]:
        """Tasks by the arrival of their latest event, newest first (no sorting)."""
        return newest(self._tasks, limit)

    def tasks_by_time(self, limit: int | None = 100) -> list[TaskState]:
        """Tasks by the sender timestamp of the event that set their state, newest first.

        Unlike :meth:`recent_tasks` (arrival order, free) this sorts: O(n log limit).
        """
        tasks = self._tasks.values()
        if limit is None:
            return sorted(tasks, key=_time_key, reverse=True)
        return heapq.nlargest(limit, tasks, key=_time_key)

    def tasks_by_state(self, state: str, limit: int | None = None) -> list[TaskState]:
        """Tasks currently in *state*, the most recent to enter it first."""
        self._ensure_indexed()
        return self._by_state.newest(state, limit)

    def tasks_by_name(self, name: str, limit: int | None = None) -> list[TaskState]:
        """Tasks named *name*, most recently named first."""
        self._ensure_indexed()
        return self._by_name.newest(name, limit)

    def tasks_by_worker(self, hostname: str, limit: int | None = None) -> list[TaskState]:
        """Tasks last handled by worker *hostname*, most recently assigned first."""
        self._ensure_indexed()
        return self._by_worker.newest(hostname, limit)

    def ready_tasks(self, limit: int | None = None) -> list[TaskState]:
        """Finished tasks, the most recently finished first."""
        return newest(self._ready, limit)

    def unready_tasks(self, limit: int | None = None) -> list[TaskState]:
        """Unfinished tasks, the most recently created (or re-opened) first."""
        return newest(self._unready, limit)

    def state_counts(self) -> dict[str, int]:
        """How many kept tasks are in each state."""
        self._ensure_indexed()
        return self._by_state.counts()

    def name_counts(self) -> dict[str, int]:
        """How many kept tasks have each name."""
        self._ensure_indexed()
        return self._by_name.counts()

    def worker_task_counts(self) -> dict[str, int]:
        """How many kept tasks each worker handled last."""
        self._ensure_indexed()
        return self._by_worker.counts()

    def task_names(self) -> list[str]:
        """The names of the kept tasks, sorted."""
        self._ensure_indexed()
        return self._by_name.keys()

    def children(self, uuid: str) -> list[TaskState]:
        """The kept child tasks of task *uuid*, in the order they were seen."""
        t = self._tasks.get(uuid)
        if t is None or not t._children:
            return []
        tasks = self._tasks
        return [tasks[c] for c in t._children if c in tasks]

    def alive_workers(self) -> list[WorkerState]:
        """The workers alive now (see :attr:`WorkerState.alive`)."""
        return [w for w in self._workers.values() if w.alive]
