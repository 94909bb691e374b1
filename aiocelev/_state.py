"""``ClusterState``: the cluster as seen through its monitoring events.

A bounded, fast, in-memory model of tasks and workers with the semantics of
``celery.events.state.State`` (what Flower shows), plus the indexes and
statistics dashboards and exporters need.  Feed it with :meth:`ClusterState.apply`
or :meth:`ClusterState.follow`.  The design and every rule are described in
``docs/state.md``.

The class is assembled from one module per question:

* ``_state_store``: what is kept, bounds and eviction, index bookkeeping
  (with the index helper of ``_state_index``);
* ``_state_reducer``: how each event changes tasks and workers (Celery's task
  state machine and precedence);
* ``_state_liveness``: worker restarts and lost-event estimates;
* ``_state_queries``: tasks and workers by id, state, name, worker, time;
* ``_state_stats``: counters, rates and percentiles;
* ``_state_models``: the ``TaskState`` / ``WorkerState`` records and the
  precedence table.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Callable

from ._events import Event
from ._link import ConnectionStatus
from ._state_queries import TaskQueries
from ._state_reducer import Reducer
from ._state_stats import StatisticsQueries

__all__ = ["ClusterState"]


class ClusterState(TaskQueries, StatisticsQueries, Reducer):
    """Tasks and workers of a Celery cluster, kept up to date from its events.

    :param max_tasks: how many tasks to keep; beyond it finished tasks are
        evicted first (oldest finished first), unfinished ones only when no
        finished task is left (oldest first).
    :param max_workers: how many workers to keep (the one heard from least
        recently is evicted).
    :param expire_window: a worker is alive until ``freq * expire_window / 100``
        seconds after the last event received from it (Celery's 200: twice
        the heartbeat interval).
    :param time_source: returns the current time in epoch seconds; used for
        liveness, rates and for events that carry no ``local_received``
        (default :func:`time.time`; inject a fake one in tests).
    :param rate_window: seconds averaged by :meth:`rates`.
    :param reservoir_size: how many recent runtimes and queue waits are kept
        for :meth:`runtime_percentiles` / :meth:`queue_wait_percentiles`.
    :raises ConfigurationError: if a bound or window is not a positive number
        or *time_source* is not callable.
    """

    __slots__ = ()

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
        super().__init__(
            max_tasks=max_tasks,
            max_workers=max_workers,
            expire_window=expire_window,
            time_source=time_source,
            rate_window=rate_window,
            reservoir_size=reservoir_size,
        )

    async def follow(self, receiver: AsyncIterable[Event]) -> AsyncIterator[Event]:
        """Apply each event from *receiver*, then yield it.

        ``receiver`` is any async iterable of events (e.g. an ``EventReceiver``).
        The generator owns nothing: closing it (``aclose``, or leaving an
        ``async with contextlib.aclosing(...)`` block) simply stops reading.
        When *receiver* reports its connection (``add_connection_listener``, as
        ``EventReceiver`` does), its losses and recoveries are tracked with
        :meth:`connection_lost` / :meth:`connection_restored` while following.
        """
        apply = self.apply
        add_listener = getattr(receiver, "add_connection_listener", None)
        remove = add_listener(self.track_connection) if callable(add_listener) else None
        try:
            async for event in receiver:
                apply(event)
                yield event
        finally:
            if callable(remove):
                remove()

    # -- connection -------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """False while a receiver feeding this state is disconnected (see :meth:`connection_lost`)."""
        return not self._deaf.deaf

    def connection_lost(self, at: float | None = None) -> None:
        """The receiver feeding this state lost its broker at *at* (default: now).

        Until :meth:`connection_restored`, workers do not age: one that was
        alive stays alive (its heartbeats cannot arrive), and afterwards the
        deaf time is not counted against it.  With several receivers, call it
        once per lost one: the state is deaf until each is restored.
        """
        self._deaf.lost(self._time_source() if at is None else at)

    def connection_restored(self, at: float | None = None) -> None:
        """The receiver is connected again at *at* (default: now); see :meth:`connection_lost`."""
        self._deaf.restored(self._time_source() if at is None else at)

    def track_connection(self, status: ConnectionStatus) -> None:
        """An ``on_connection`` callback: :meth:`connection_lost` or :meth:`connection_restored`."""
        if status.connected:
            self.connection_restored()
        else:
            self.connection_lost()

    def __len__(self) -> int:
        """How many tasks are kept."""
        return len(self._tasks)

    def __repr__(self) -> str:
        return (
            f"<ClusterState tasks={len(self._tasks)} workers={len(self._workers)} "
            f"events={self.event_count}>"
        )
