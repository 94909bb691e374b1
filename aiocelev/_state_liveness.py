"""Worker liveness heuristics of :class:`~aiocelev.ClusterState`.

Two questions are answered here, from the worker events alone:

* did the worker process restart (:func:`detect_restart`)?
* how many task events of this worker never arrived (:class:`LossEstimate`)?

Both are described in ``docs/state.md`` ("Workers", "Lost-event estimate").
:class:`DeafSpans` records when the state could not hear the cluster (its
receiver was disconnected), so that workers do not age meanwhile.
Whether a worker is alive right now is a property of the record
(:attr:`~aiocelev.WorkerState.alive`).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._state_models import WorkerState

__all__ = ["DeafSpans", "LossEstimate", "detect_restart"]

#: A Lamport clock that falls back by more than this (and by more than half)
#: belongs to a new process: a fresh process starts counting near zero.
_CLOCK_FALLBACK = 10


def detect_restart(
    w: WorkerState, pid: Any, processed: Any, clock: Any, online: bool
) -> tuple[bool, bool]:
    """Whether the worker event with these fields shows a restart of *w*.

    Compares with the fields of *w* before the event is applied.  Returns
    ``(restarted, new_process)``: a ``worker-online`` after a
    ``worker-offline`` is a restart of the same process as far as the loss
    estimate is concerned; a new process id, a ``processed`` counter that went
    down or a Lamport clock that fell back are a new process.
    """
    new_process = (pid is not None and w.pid is not None and pid != w.pid) or (
        type(processed) is int and type(w.processed) is int and processed < w.processed
    )
    restarted = new_process or (online and w.offline)
    if not restarted and type(clock) is int and type(w.clock) is int:
        back = w.clock - clock
        restarted = new_process = back > _CLOCK_FALLBACK and back * 2 > w.clock
    return restarted, new_process


class LossEstimate:
    """The lost-event estimate of one worker, summed over its processes.

    A baseline is taken from the first worker event that carries both
    ``processed`` and ``active``; from then on the growth of the counters is
    compared with the task events seen from the worker
    (:attr:`~aiocelev.WorkerState.done_seen`,
    :attr:`~aiocelev.WorkerState.started_seen`).  On a new process the
    estimate so far is kept and the next counters start a new baseline.
    """

    __slots__ = (
        "_base_done",
        "_base_seen_done",
        "_base_seen_started",
        "_base_started",
        "_missed_done_before",
        "_missed_started_before",
    )

    def __init__(self) -> None:
        self._base_done: int | None = None
        self._base_started = self._base_seen_done = self._base_seen_started = 0
        self._missed_done_before = self._missed_started_before = 0

    @property
    def has_baseline(self) -> bool:
        """Whether the current process has a baseline yet."""
        return self._base_done is not None

    def set_baseline(self, w: WorkerState, processed: int, active: int) -> None:
        """Start counting for the current process of *w* from these counters."""
        self._base_done = processed - active
        self._base_started = processed
        self._base_seen_done = w.done_seen
        self._base_seen_started = w.started_seen

    def new_process(self, w: WorkerState) -> None:
        """Keep the estimate of the process that ended; wait for a new baseline."""
        if self._base_done is not None:
            self._missed_done_before += self._missed_done_now(w)
            self._missed_started_before += self._missed_started_now(w)
            self._base_done = None

    def missed_done(self, w: WorkerState) -> int:
        """Estimated completion events of *w* that never arrived (all processes)."""
        return self._missed_done_before + self._missed_done_now(w)

    def missed_started(self, w: WorkerState) -> int:
        """Estimated ``task-started`` events of *w* that never arrived (all processes)."""
        return self._missed_started_before + self._missed_started_now(w)

    def _missed_done_now(self, w: WorkerState) -> int:
        """The completion estimate for the current process."""
        base = self._base_done
        processed, active = w.processed, w.active
        if base is None or type(processed) is not int or type(active) is not int:
            return 0
        missed = (processed - active - base) - (w.done_seen - self._base_seen_done)
        return missed if missed > 0 else 0

    def _missed_started_now(self, w: WorkerState) -> int:
        """The ``task-started`` estimate for the current process."""
        processed = w.processed
        if self._base_done is None or type(processed) is not int:
            return 0
        missed = (processed - self._base_started) - (w.started_seen - self._base_seen_started)
        return missed if missed > 0 else 0


class DeafSpans:
    """When the state could not hear its workers (disconnected from the broker).

    A worker that was alive when the connection dropped must not turn *lost*
    because its heartbeats could not arrive: liveness discounts the deaf time
    after a worker's last event (:meth:`after`).  Several links may feed one
    state: it is deaf while any of them is down.  The newest spans are kept
    (older ones only matter for workers silent for longer than that).
    """

    __slots__ = ("_down", "_since", "_spans")

    _KEEP = 64

    def __init__(self) -> None:
        self._spans: deque[tuple[float, float]] = deque(maxlen=self._KEEP)
        self._down = 0
        self._since = 0.0

    @property
    def deaf(self) -> bool:
        """Whether a link is down now."""
        return self._down > 0

    def lost(self, at: float) -> None:
        """A link went down at *at* (epoch seconds)."""
        if self._down == 0:
            self._since = at
        self._down += 1

    def restored(self, at: float) -> None:
        """A link came back at *at*; the deaf span ends when every link is back."""
        if self._down == 0:
            return
        self._down -= 1
        if self._down == 0 and at > self._since:
            self._spans.append((self._since, at))

    def after(self, t: float, now: float) -> float:
        """Seconds of deafness between *t* and *now*."""
        total = 0.0
        for start, end in self._spans:
            if end > t:
                total += end - (start if start > t else t)
        if self._down:
            since = self._since if self._since > t else t
            if now > since:
                total += now - since
        return total
