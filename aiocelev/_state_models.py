"""The task and worker records kept by :class:`~aiocelev.ClusterState`.

Both are mutable records owned by the state (slotted: a task's rarely set
fields live in its ``__dict__``, created only when one is set): read them, do
not change them.  ``to_dict()`` gives a plain snapshot suitable for JSON.  The one
precedence table of task states lives here too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._state_liveness import DeafSpans, LossEstimate

__all__ = [
    "CUSTOM_RANK",
    "PRECEDENCE",
    "READY_STATES",
    "TaskState",
    "WorkerState",
]

#: Celery's state precedence, strongest ("logically latest") first; ``None``
#: marks where every state not listed (a custom one, e.g. ``PROGRESS``) ranks.
_PRECEDENCE_ORDER = (
    "SUCCESS",
    "FAILURE",
    None,
    "REVOKED",
    "STARTED",
    "RECEIVED",
    "REJECTED",
    "RETRY",
    "PENDING",
)

#: The rank of each known state: a lower rank is "later / stronger".
PRECEDENCE: dict[str, int] = {
    state: rank for rank, state in enumerate(_PRECEDENCE_ORDER) if state is not None
}
#: The rank of any state missing from :data:`PRECEDENCE`.
CUSTOM_RANK = _PRECEDENCE_ORDER.index(None)

#: States in which the task has finished (its result is ready).
READY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})

_PENDING_RANK = PRECEDENCE["PENDING"]


class TaskState:
    """What is known about one task.

    ``state`` follows Celery's rules (see ``docs/state.md``).  Times
    (``sent``, ``received``, ``started``, ``succeeded``, ``failed``,
    ``retried``, ``revoked``, ``rejected``, ``timestamp``) are the sender's
    epoch timestamps of the corresponding events.  ``worker`` is the hostname
    of the worker that sent the latest worker-side event, ``client`` the
    hostname that sent ``task-sent``.  ``extra`` holds the fields of custom
    task events (``task-progress``...), newest value per key.
    """

    # The fields most tasks set are slots, given in __init__; the others
    # (client, exception, traceback, queue, exchange, routing_key, sent, failed,
    # retried, revoked, rejected, extra) read their class default, None, until
    # set: a task that only ran and succeeded never creates its __dict__, is
    # 80 bytes smaller and costs 12 fewer stores to create.
    __slots__ = (
        "__dict__",
        "_children",
        "_rank",
        "_seq_name",
        "_seq_state",
        "_seq_worker",
        "_waited",
        "args",
        "clock",
        "eta",
        "expires",
        "kwargs",
        "name",
        "parent_id",
        "received",
        "result",
        "retries",
        "root_id",
        "runtime",
        "started",
        "state",
        "succeeded",
        "timestamp",
        "uuid",
        "worker",
    )

    uuid: str
    state: str
    name: str | None
    worker: str | None
    client: str | None = None
    args: str | None
    kwargs: str | None
    result: Any
    exception: str | None = None
    traceback: str | None = None
    runtime: float | None
    retries: int | None
    eta: str | None
    expires: str | None
    parent_id: str | None
    root_id: str | None
    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    sent: float | None = None
    received: float | None
    started: float | None
    succeeded: float | None
    failed: float | None = None
    retried: float | None = None
    revoked: float | None = None
    rejected: float | None = None
    timestamp: float | None
    clock: int | None
    extra: dict[str, Any] | None = None
    _rank: int
    _seq_state: int
    _seq_name: int
    _seq_worker: int
    _waited: bool
    _children: dict[str, None] | None

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self.state = "PENDING"
        self._rank = _PENDING_RANK
        self._waited = False
        self._children = None
        self._seq_state = self._seq_name = self._seq_worker = 0
        self.name = self.worker = self.args = self.kwargs = self.result = None
        self.runtime = self.retries = self.eta = self.expires = None
        self.parent_id = self.root_id = None
        self.received = self.started = self.succeeded = self.timestamp = self.clock = None

    @property
    def id(self) -> str:
        """The task id (same as ``uuid``)."""
        return self.uuid

    @property
    def ready(self) -> bool:
        """Whether the task has finished: ``SUCCESS``, ``FAILURE`` or ``REVOKED``."""
        return self.state in READY_STATES

    @property
    def children(self) -> list[str]:
        """Ids of the tasks seen with this task as ``parent_id``, in the order seen."""
        return list(self._children) if self._children else []

    @property
    def queue_wait(self) -> float | None:
        """``started - received`` in seconds, when both are known and ordered."""
        r, s = self.received, self.started
        if r is None or s is None or s < r:
            return None
        return float(s - r)

    def to_dict(self) -> dict[str, Any]:
        """A plain snapshot of the record (``children`` as a list of ids)."""
        return {
            "uuid": self.uuid,
            "name": self.name,
            "state": self.state,
            "ready": self.ready,
            "worker": self.worker,
            "client": self.client,
            "args": self.args,
            "kwargs": self.kwargs,
            "result": self.result,
            "exception": self.exception,
            "traceback": self.traceback,
            "runtime": self.runtime,
            "retries": self.retries,
            "eta": self.eta,
            "expires": self.expires,
            "parent_id": self.parent_id,
            "root_id": self.root_id,
            "children": self.children,
            "queue": self.queue,
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "sent": self.sent,
            "received": self.received,
            "started": self.started,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "retried": self.retried,
            "revoked": self.revoked,
            "rejected": self.rejected,
            "timestamp": self.timestamp,
            "clock": self.clock,
            "extra": dict(self.extra) if self.extra else {},
        }

    def __repr__(self) -> str:
        return f"<TaskState {self.name}[{self.uuid}] {self.state}>"


class WorkerState:
    """What is known about one worker.

    Fields copied from its ``worker-*`` events: ``pid``, ``freq``, ``clock``,
    ``active``, ``processed``, ``loadavg``, ``sw_ident``, ``sw_ver``,
    ``sw_sys``, ``utcoffset``, ``timestamp``.  ``last_seen`` is the receive
    time (``local_received``) of the newest event from this worker since it
    last went offline, which drives :attr:`alive`; ``last_heartbeat`` the
    receive time of its newest ``worker-heartbeat``; ``event_counts`` the number
    of events (task and worker ones) it sent, by type, as Flower's workers page
    shows them; ``drift`` is
    ``local_received - timestamp`` of its newest worker event (seconds, positive
    when its clock is behind the receiver's or the event took time to arrive).
    """

    __slots__ = (
        "_deaf",
        "_expire",
        "_loss",
        "_time_source",
        "_worker_events",
        "active",
        "clock",
        "done_seen",
        "drift",
        "event_counts",
        "freq",
        "heartbeat_count",
        "hostname",
        "last_heartbeat",
        "last_seen",
        "loadavg",
        "offline",
        "pid",
        "processed",
        "restarts",
        "started_seen",
        "sw_ident",
        "sw_sys",
        "sw_ver",
        "timestamp",
        "utcoffset",
    )

    hostname: str
    pid: int | None
    freq: float
    clock: int | None
    active: int | None
    processed: int | None
    loadavg: list[float] | None
    sw_ident: str | None
    sw_ver: str | None
    sw_sys: str | None
    utcoffset: float | None
    timestamp: float | None
    last_seen: float | None
    last_heartbeat: float | None
    heartbeat_count: int
    event_counts: dict[str, int]
    _worker_events: int
    offline: bool
    restarts: int
    drift: float | None
    done_seen: int
    started_seen: int
    _time_source: Callable[[], float]
    _expire: float
    _loss: LossEstimate
    _deaf: DeafSpans | None

    def __init__(
        self,
        hostname: str,
        time_source: Callable[[], float],
        expire_window: float = 200.0,
        deaf: DeafSpans | None = None,
    ) -> None:
        self.hostname = hostname
        self._deaf = deaf
        self._time_source = time_source
        self._expire = expire_window / 100.0
        self.pid = self.clock = self.active = self.processed = None
        self.loadavg = self.sw_ident = self.sw_ver = self.sw_sys = None
        self.utcoffset = self.timestamp = self.drift = None
        self.freq = 60.0
        self.last_seen = self.last_heartbeat = None
        self.heartbeat_count = self._worker_events = self.restarts = 0
        self.event_counts = {}
        self.offline = False
        self.done_seen = self.started_seen = 0
        self._loss = LossEstimate()

    @property
    def id(self) -> str:
        """``hostname.pid``, as Celery names a worker incarnation."""
        return f"{self.hostname}.{self.pid}"

    @property
    def heartbeat_expires(self) -> float | None:
        """When :attr:`alive` turns false without news: ``last_seen + freq * window``.

        Pushed back by the time the state could not hear the cluster since
        ``last_seen`` (see :meth:`ClusterState.connection_lost`).
        """
        seen = self.last_seen
        if seen is None:
            return None
        expires = float(seen + self.freq * self._expire)
        if self._deaf is not None:
            expires += self._deaf.after(seen, self._time_source())
        return expires

    @property
    def alive(self) -> bool:
        """Heard from within the expiry window (``2 x freq`` by default) and not offline.

        Time during which the state could not hear the cluster does not count
        (see :meth:`ClusterState.connection_lost`).
        """
        seen = self.last_seen
        if seen is None:
            return False
        now = self._time_source()
        limit = seen + self.freq * self._expire
        if now < limit:
            return True
        deaf = self._deaf
        return deaf is not None and now < limit + deaf.after(seen, now)

    @property
    def status(self) -> str:
        """``"online"`` (alive), ``"offline"`` (said goodbye) or ``"lost"`` (heartbeats stopped)."""
        if self.alive:
            return "online"
        return "offline" if self.offline else "lost"

    @property
    def missed_tasks_estimate(self) -> int:
        """Estimated task completions whose event never arrived (see ``docs/state.md``).

        Heartbeats report ``processed`` (tasks accepted since the worker process
        started) and ``active`` (running now), so ``processed - active`` counts
        completed executions; each normally produces exactly one
        ``task-succeeded``, ``task-failed``, ``task-retried``,
        ``task-cancelled``, terminating ``task-revoked`` or requeueing
        ``task-rejected`` event.  The estimate is the growth of
        ``processed - active`` since the first heartbeat minus the number of
        such events seen since then, summed over worker restarts, never negative.
        """
        return self._loss.missed_done(self)

    @property
    def missed_started_estimate(self) -> int:
        """Estimated ``task-started`` events never received: growth of ``processed`` minus those seen."""
        return self._loss.missed_started(self)

    def to_dict(self) -> dict[str, Any]:
        """A plain snapshot of the record, with ``alive`` and ``status`` evaluated now."""
        return {
            "hostname": self.hostname,
            "alive": self.alive,
            "status": self.status,
            "pid": self.pid,
            "freq": self.freq,
            "clock": self.clock,
            "active": self.active,
            "processed": self.processed,
            "loadavg": self.loadavg,
            "sw_ident": self.sw_ident,
            "sw_ver": self.sw_ver,
            "sw_sys": self.sw_sys,
            "utcoffset": self.utcoffset,
            "timestamp": self.timestamp,
            "last_seen": self.last_seen,
            "last_heartbeat": self.last_heartbeat,
            "heartbeat_count": self.heartbeat_count,
            "heartbeat_expires": self.heartbeat_expires,
            "event_counts": dict(self.event_counts),
            "offline": self.offline,
            "restarts": self.restarts,
            "drift": self.drift,
            "missed_tasks_estimate": self.missed_tasks_estimate,
            "missed_started_estimate": self.missed_started_estimate,
        }

    def __repr__(self) -> str:
        return f"<WorkerState {self.hostname} {self.status} clock={self.clock}>"
