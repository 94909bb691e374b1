"""The reducer of :class:`~aiocelev.ClusterState`: how each event changes the state.

Task events follow Celery's task state machine: each event names a state,
and the state changes only if the new one does not rank as logically older
than the current one (:data:`~aiocelev._state_models.PRECEDENCE`, ``RETRY``
excepted) while the event's fields are merged all the same.  Worker events
update the worker record, with the restart and loss heuristics of
``_state_liveness``.  Every rule is described in ``docs/state.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._events import Event
from ._state_liveness import detect_restart
from ._state_models import CUSTOM_RANK, PRECEDENCE, TaskState, WorkerState
from ._state_store import StateStore

__all__ = ["Reducer"]

#: What every handler is given besides the event and its receive time: its
#: ``uuid``, ``hostname``, ``timestamp`` and ``clock`` (``None`` when missing).
_Head = tuple[Any, Any, Any, Any]
_Handler = Callable[..., TaskState | WorkerState | None]


def _read(f: Mapping[str, Any]) -> tuple[Any, Any, _Head]:
    """``type``, ``local_received`` and the head of *f* (``None`` for what is missing).

    A received event has them all: one subscript each, no method call.
    """
    try:
        return (
            f["type"],
            f["local_received"],
            (f["uuid"], f["hostname"], f["timestamp"], f["clock"]),
        )
    except (KeyError, TypeError):
        get = f.get
        return (
            get("type"),
            get("local_received"),
            (get("uuid"), get("hostname"), get("timestamp"), get("clock")),
        )


# Worker event kinds.
_ONLINE, _HEARTBEAT, _OFFLINE, _OTHER = 0, 1, 2, 3

# Fields of the event envelope, never copied into ``TaskState.extra``.
_COMMON = frozenset(
    {"type", "hostname", "timestamp", "utcoffset", "pid", "clock", "local_received", "uuid"}
)

_NUMBER = (float, int)

_UNSET: Any = object()

_rank_of = PRECEDENCE.get

# The rank of the state each built-in task event names, read once from the
# one table.  An event of rank R sets the state of a task of rank ``cur``
# when ``cur >= R`` (it is not logically older) or either is RETRY.
_PENDING = PRECEDENCE["PENDING"]
_RECEIVED = PRECEDENCE["RECEIVED"]
_STARTED = PRECEDENCE["STARTED"]
_SUCCESS = PRECEDENCE["SUCCESS"]
_FAILURE = PRECEDENCE["FAILURE"]
_RETRY = PRECEDENCE["RETRY"]
_REVOKED = PRECEDENCE["REVOKED"]
_REJECTED = PRECEDENCE["REJECTED"]


class Reducer(StateStore):
    """Applies events to the containers of :class:`StateStore`."""

    __slots__ = ("_handlers",)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
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

    def apply(self, event: Event | Mapping[str, Any]) -> TaskState | WorkerState | None:
        """Apply one event; returns the task or worker record it touched, if any.

        *event* is an :class:`~aiocelev.Event` or a wire dict (as
        :meth:`Event.from_dict` would accept; it is read, never kept or changed).
        Never raises on odd input: an unusable event is counted in
        ``ignored_events`` and ``None`` is returned.
        """
        f: Mapping[str, Any] = event._fields if isinstance(event, Event) else event
        self.event_count += 1
        type_, lr, head = _read(f)
        try:
            handler = self._handlers.get(type_)
        except TypeError:  # an unhashable type
            handler = None
        if handler is None and type(type_) is not str:
            self.ignored_events += 1
            return None
        if type(lr) is not float and type(lr) is not int:
            lr = self._time_source()
        rates = self._rates
        try:
            sec = int(lr)
        except (ValueError, OverflowError):  # NaN or infinity in a hand-made dict
            lr = self._time_source()
            sec = int(lr)
        if sec != rates.current_sec:
            rates.advance(sec)
        bucket = rates.current
        bucket[type_] = bucket.get(type_, 0) + 1
        if handler is None:
            return self._on_other(f, lr, head, type_)
        return handler(f, lr, *head)

    def apply_many(self, events: Iterable[Event | Mapping[str, Any]]) -> None:
        """Apply every event of *events* in order (as :meth:`apply` does, in one loop).

        The events of one received message share their ``local_received``
        value: its second is worked out once per message, not once per event.
        """
        rates = self._rates
        handlers_get = self._handlers.get
        time_source = self._time_source
        event_cls = Event
        bucket = rates.current
        last_lr: Any = _UNSET  # the last valid local_received seen, by identity
        count = 0
        f: Mapping[str, Any]
        try:
            for event in events:
                count += 1
                if type(event) is dict:  # what receiver.batches(dicts=True) hands over
                    f = event
                elif isinstance(event, event_cls):
                    f = event._fields
                else:
                    f = event
                try:  # _read, inlined: a received event has all six
                    type_, lr = f["type"], f["local_received"]
                    uuid, host, ts, clock = f["uuid"], f["hostname"], f["timestamp"], f["clock"]
                except (KeyError, TypeError):
                    type_, lr, (uuid, host, ts, clock) = _read(f)
                try:
                    handler = handlers_get(type_)
                except TypeError:  # an unhashable type
                    handler = None
                if handler is None and type(type_) is not str:
                    self.ignored_events += 1
                    continue
                if lr is not last_lr:
                    if type(lr) is float or type(lr) is int:
                        try:
                            sec = int(lr)
                            last_lr = lr
                        except (ValueError, OverflowError):  # NaN or infinity
                            lr = time_source()
                            sec = int(lr)
                    else:
                        lr = time_source()
                        sec = int(lr)
                    if sec != rates.current_sec:
                        rates.advance(sec)
                        bucket = rates.current
                bucket[type_] = bucket.get(type_, 0) + 1
                if handler is None:
                    self._on_other(f, lr, (uuid, host, ts, clock), type_)
                else:
                    handler(f, lr, uuid, host, ts, clock)
        finally:
            self.event_count += count

    def _on_other(
        self, f: Mapping[str, Any], lr: float, head: _Head, type_: str
    ) -> TaskState | WorkerState | None:
        """An event type without a handler: a custom task or worker event, or nothing."""
        group, _, subject = type_.partition("-")
        if group == "task":
            return self._on_task_custom(f, lr, head, type_, subject.upper())
        if group == "worker":
            return self._on_worker(f, lr, _OTHER)
        return None

    # ------------------------------------------------------------------ tasks

    def _worker_task(
        self, uuid: str, hostname: Any, lr: float, type_: str, state: str, rank: int
    ) -> tuple[TaskState, WorkerState | None]:
        """The task of a worker-side event and the worker that sent it.

        The task is moved to the recent end, or created in the event's *state*
        (of precedence *rank*) if new; it is attributed to the sending worker
        (``hostname``, when a string), whose record is created if new, kept
        alive (``last_seen``) and counts the event.
        """
        tasks = self._tasks
        t = tasks.pop(uuid, None)
        if t is None:
            t = self._new_task(uuid, state, rank)
        else:
            tasks[uuid] = t
        if type(hostname) is not str:
            return t, None
        if t.worker != hostname:
            if self._indexed:
                self._by_worker.move(t.worker, hostname, uuid, t)
            else:
                self._seq = t._seq_worker = self._seq + 1
            t.worker = hostname
        w = self._workers.get(hostname)
        if w is None:
            w = self._new_worker(hostname)
        seen = w.last_seen
        if seen is None or lr > seen:
            w.last_seen = lr
        counts = w.event_counts
        counts[type_] = counts.get(type_, 0) + 1
        return t, w

    def _set_parent(self, t: TaskState, parent_id: str | None) -> None:
        """Record ``parent_id`` and link the task into its parent's children."""
        t.parent_id = parent_id
        if parent_id is not None:
            self._add_child(parent_id, t.uuid)

    def _copy_fields(self, t: TaskState, f: Mapping[str, Any]) -> None:
        """Copy the message fields of ``task-sent`` / ``task-received`` present in *f*.

        ``name`` and ``parent_id`` go through their index and parent links;
        ``args``, ``kwargs``, ``root_id``, ``retries``, ``eta`` and ``expires``
        are copied as they are.
        """
        try:
            # What Celery's task-received carries: every field at once, one
            # lookup each (instead of a membership test and a lookup).
            name = f["name"]
            parent_id = f["parent_id"]
            args, kwargs, root_id = f["args"], f["kwargs"], f["root_id"]
            retries, eta, expires = f["retries"], f["eta"], f["expires"]
        except KeyError:
            pass
        else:
            if name != t.name and (name is None or type(name) is str):
                self._set_name(t, name)
            if parent_id != t.parent_id and (parent_id is None or type(parent_id) is str):
                self._set_parent(t, parent_id)
            t.args, t.kwargs, t.root_id = args, kwargs, root_id
            t.retries, t.eta, t.expires = retries, eta, expires
            return
        if "name" in f:
            name = f["name"]
            if name != t.name and (name is None or type(name) is str):
                self._set_name(t, name)
        if "parent_id" in f:
            parent_id = f["parent_id"]
            if parent_id != t.parent_id and (parent_id is None or type(parent_id) is str):
                self._set_parent(t, parent_id)
        # Plain attribute stores: much cheaper than setattr() in a loop.
        if "args" in f:
            t.args = f["args"]
        if "kwargs" in f:
            t.kwargs = f["kwargs"]
        if "root_id" in f:
            t.root_id = f["root_id"]
        if "retries" in f:
            t.retries = f["retries"]
        if "eta" in f:
            t.eta = f["eta"]
        if "expires" in f:
            t.expires = f["expires"]

    def _record_wait(self, t: TaskState) -> None:
        """Add ``started - received`` to the queue-wait reservoir once per attempt."""
        r, s = t.received, t.started
        if (
            not t._waited
            and t.eta is None
            and (type(r) is float or type(r) is int)
            and (type(s) is float or type(s) is int)
            and s >= r
        ):
            t._waited = True
            self.queue_waits.add(s - r)

    # Each handler below applies Celery's precedence rule with the rank of its
    # state: the state, ``timestamp`` and ``clock`` change only when the event
    # is not logically older than the current state (RETRY excepted); the
    # event's fields are merged all the same.

    def _on_task_sent(
        self, f: Mapping[str, Any], lr: float, uuid: Any, host: Any, ts: Any, clock: Any
    ) -> TaskState | None:
        """``task-sent``: PENDING; the sender is the task's client."""
        if type(uuid) is not str:
            self.ignored_events += 1
            return None
        tasks = self._tasks
        t = tasks.pop(uuid, None)
        if t is None:
            t = self._new_task(uuid, "PENDING", _PENDING)
        else:
            tasks[uuid] = t
        t.client = host
        t.sent = ts
        self._copy_fields(t, f)
        if "queue" in f:
            t.queue = f["queue"]
        if "exchange" in f:
            t.exchange = f["exchange"]
        if "routing_key" in f:
            t.routing_key = f["routing_key"]
        cur = t._rank
        if cur >= _PENDING or cur == _RETRY:
            t.timestamp = ts
            if clock is not None:
                t.clock = clock
            if t.state != "PENDING":
                self._set_state(t, "PENDING", _PENDING)
        return t

    def _on_task_received(
        self, f: Mapping[str, Any], lr: float, uuid: Any, host: Any, ts: Any, clock: Any
    ) -> TaskState | None:
        """``task-received``: RECEIVED; name/args/... are taken even when late."""
        if type(uuid) is not str:
            self.ignored_events += 1
            return None
        t, _ = self._worker_task(uuid, host, lr, "task-received", "RECEIVED", _RECEIVED)
        t.received = ts
        t._waited = False
        self._copy_fields(t, f)
        cur = t._rank
        if cur >= _RECEIVED or cur == _RETRY:
            t.timestamp = ts
            if clock is not None:
                t.clock = clock
            if t.state != "RECEIVED":
                self._set_state(t, "RECEIVED", _RECEIVED)
        if t.started is not None:
            self._record_wait(t)
        return t

    def _on_task_started(
        self, f: Mapping[str, Any], lr: float, uuid: Any, host: Any, ts: Any, clock: Any
    ) -> TaskState | None:
        """``task-started``: STARTED."""
        if type(uuid) is not str:
            self.ignored_events += 1
            return None
        t, w = self._worker_task(uuid, host, lr, "task-started", "STARTED", _STARTED)
        t.started = ts
        cur = t._rank
        if cur >= _STARTED or cur == _RETRY:
            t.timestamp = ts
            if clock is not None:
                t.clock = clock
            if t.state != "STARTED":
                self._set_state(t, "STARTED", _STARTED)
        if t.received is not None:
            self._record_wait(t)
        if w is not None:
            w.started_seen += 1
        return t

    def _on_task_succeeded(
        self, f: Mapping[str, Any], lr: float, uuid: Any, host: Any, ts: Any, clock: Any
    ) -> TaskState | None:
        """``task-succeeded``: SUCCESS, with ``result`` and ``runtime``."""
        if type(uuid) is not str:
            self.ignored_events += 1
            return None
        t, w = self._worker_task(uuid, host, lr, "task-succeeded", "SUCCESS", _SUCCESS)
        t.succeeded = ts
        if "result" in f:
            t.result = f["result"]
        runtime = f.get("runtime")
        if runtime is not None:
            t.runtime = runtime
            if type(runtime) is float or type(runtime) is int:
                self.runtimes.add(runtime)
        cur = t._rank
        if cur >= _SUCCESS or cur == _RETRY:
            t.timestamp = ts
            if clock is not None:
                t.clock = clock
            if t.state != "SUCCESS":
                self._set_state(t, "SUCCESS", _SUCCESS)
        if w is not None:
            w.done_seen += 1
        return t

    def _on_task_failed(
        self, f: Mapping[str, Any], lr: float, uuid: Any, host: Any, ts: Any, clock: Any
    ) -> TaskState | None:
        """``task-failed``: FAILURE, with ``exception`` and ``traceback``."""
        if type(uuid) is not str:
            self.ignored_events += 1
            return None
        t, w = self._worker_task(uuid, host, lr, "task-failed", "FAILURE", _FAILURE)
        t.failed = ts
        if "exception" in f:
            t.exception = f["exception"]
        if "traceback" in f:
            t.traceback = f["traceback"]
        cur = t._rank
        if cur >= _FAILURE or cur == _RETRY:
            t.timestamp = ts
            if clock is not None:
                t.clock = clock
            if t.state != "FAILURE":
                self._set_state(t, "FAILURE", _FAILURE)
        if w is not None:
            w.done_seen += 1
        return t

    def _on_task_retried(
        self, f: Mapping[str, Any], lr: float, uuid: Any, host: Any, ts: Any, clock: Any
    ) -> TaskState | None:
        """``task-retried``: RETRY (always overrides and is always overridden)."""
        if type(uuid) is not str:
            self.ignored_events += 1
            return None
        t, w = self._worker_task(uuid, host, lr, "task-retried", "RETRY", _RETRY)
        t.retried = ts
        if "exception" in f:
            t.exception = f["exception"]
        if "traceback" in f:
            t.traceback = f["traceback"]
        t.timestamp = ts
        if clock is not None:
            t.clock = clock
        if t.state != "RETRY":
            self._set_state(t, "RETRY", _RETRY)
        if w is not None:
            w.done_seen += 1
        return t

    def _on_task_revoked(
        self, f: Mapping[str, Any], lr: float, uuid: Any, host: Any, ts: Any, clock: Any
    ) -> TaskState | None:
        """``task-revoked``: REVOKED (counts as a completion only when it terminated a run)."""
        if type(uuid) is not str:
            self.ignored_events += 1
            return None
        t, w = self._worker_task(uuid, host, lr, "task-revoked", "REVOKED", _REVOKED)
        t.revoked = ts
        cur = t._rank
        if cur >= _REVOKED or cur == _RETRY:
            t.timestamp = ts
            if clock is not None:
                t.clock = clock
            if t.state != "REVOKED":
                self._set_state(t, "REVOKED", _REVOKED)
        if w is not None and f.get("terminated"):
            w.done_seen += 1
        return t

    def _on_task_rejected(
        self, f: Mapping[str, Any], lr: float, uuid: Any, host: Any, ts: Any, clock: Any
    ) -> TaskState | None:
        """``task-rejected``: REJECTED (ignored after STARTED, as in Celery)."""
        if type(uuid) is not str:
            self.ignored_events += 1
            return None
        t, w = self._worker_task(uuid, host, lr, "task-rejected", "REJECTED", _REJECTED)
        was_started = t.state == "STARTED"
        t.rejected = ts
        cur = t._rank
        if cur >= _REJECTED or cur == _RETRY:
            t.timestamp = ts
            if clock is not None:
                t.clock = clock
            if t.state != "REJECTED":
                self._set_state(t, "REJECTED", _REJECTED)
        if w is not None and was_started:
            # A task that ran and rejected its message (``Reject`` raised).
            w.done_seen += 1
        return t

    def _on_task_custom(
        self, f: Mapping[str, Any], lr: float, head: _Head, type_: str, state: str
    ) -> TaskState | None:
        """A custom task event (``task-progress``...): the upper-cased subject is the state."""
        uuid, host, ts, clock = head
        if type(uuid) is not str:
            self.ignored_events += 1
            return None
        rank = _rank_of(state, CUSTOM_RANK)
        t, w = self._worker_task(uuid, host, lr, type_, state, rank)
        extra = t.extra
        if extra is None:
            extra = t.extra = {}
        for key, value in f.items():
            if key not in _COMMON:
                extra[key] = value
        cur = t._rank
        if cur >= rank or cur == _RETRY or rank == _RETRY:
            t.timestamp = ts
            if clock is not None:
                t.clock = clock
            if t.state != state:
                self._set_state(t, state, rank)
        if w is not None and state == "CANCELLED":
            w.done_seen += 1
        return t

    # ------------------------------------------------------------------ workers

    def _on_worker_online(self, f: Mapping[str, Any], lr: float, *_head: Any) -> WorkerState | None:
        """``worker-online``."""
        return self._on_worker(f, lr, _ONLINE)

    def _on_worker_heartbeat(
        self, f: Mapping[str, Any], lr: float, *_head: Any
    ) -> WorkerState | None:
        """``worker-heartbeat``."""
        return self._on_worker(f, lr, _HEARTBEAT)

    def _on_worker_offline(
        self, f: Mapping[str, Any], lr: float, *_head: Any
    ) -> WorkerState | None:
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

        loss = w._loss
        if not first:
            restarted, new_process = detect_restart(w, pid, processed, clock, kind == _ONLINE)
            if restarted:
                w.restarts += 1
            if new_process:
                loss.new_process(w)

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

        if not loss.has_baseline and type(processed) is int and type(active) is int:
            loss.set_baseline(w, processed, active)
        return w
