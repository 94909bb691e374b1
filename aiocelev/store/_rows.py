"""Task and worker rows: built by replaying events over what is stored.

A batch of events is applied by a :class:`~aiocelev.ClusterState` holding the
stored rows of the tasks and workers it touches, so the store follows exactly
the reducer's rules (Celery's precedence for out-of-order events, field merges,
worker counters): the rules live in one place.  That state is the writer's
:class:`RowCache` of the rows it wrote last: only the tasks it does not hold
(or no longer trusts) are read back.

Rows keep every value in typed columns when it fits; a value that does not
(a string with NUL bytes or lone surrogates, a non-string ``result``, an
integer beyond 64 bits...) gets a sanitised copy in its column, for filters
and search, and its exact value in the row's ``raw`` JSON overlay, which wins
when the row is read back.  Nothing is ever dropped or altered on the way back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from .._codec import loads
from .._events import Event
from .._state import ClusterState
from .._state_models import READY_STATES, TaskState, WorkerState

__all__ = [
    "TASK_COLUMNS",
    "WORKER_COLUMNS",
    "Batch",
    "dumps",
    "seed_task",
    "seed_worker",
    "task_dict",
]

#: Text columns of a task row (a non-string or unclean value also goes to ``raw``).
TEXT_FIELDS = (
    "name",
    "worker",
    "client",
    "args",
    "kwargs",
    "result",
    "exception",
    "traceback",
    "eta",
    "expires",
    "parent_id",
    "root_id",
    "queue",
    "exchange",
    "routing_key",
)
#: Times (epoch seconds) kept in REAL / double columns.
TIME_FIELDS = (
    "sent",
    "received",
    "started",
    "succeeded",
    "failed",
    "retried",
    "revoked",
    "rejected",
)
#: Every column of the ``tasks`` table, in the order rows are built.
TASK_COLUMNS = (
    "uuid",
    "state",
    "ready",
    "broker",
    *TEXT_FIELDS,
    "retries",
    "runtime",
    *TIME_FIELDS,
    "ts",
    "clock",
    "raw",
)
#: Every column of the ``workers`` table.
WORKER_COLUMNS = (
    "hostname",
    "broker",
    "last_seen",
    "last_heartbeat",
    "heartbeat_count",
    "offline",
    "ts",
    "raw",
)
#: Fields of a worker kept in its ``raw`` JSON.
_WORKER_RAW = (
    "pid",
    "freq",
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
    "restarts",
    "event_counts",
    "done_seen",
    "started_seen",
)

_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_encode = msgspec.json.Encoder().encode


def dumps(value: Any) -> str:
    """JSON text of *value* that any database can store (NUL and lone surrogates escaped)."""
    try:
        return _encode(value).decode()
    except (UnicodeEncodeError, TypeError, OverflowError, msgspec.EncodeError):
        return json.dumps(value, ensure_ascii=True, default=repr)


def clean_text(value: str) -> str:
    """*value* with NUL bytes and lone surrogates replaced by U+FFFD (valid UTF-8 text)."""
    if value.isascii() and "\x00" not in value:
        return value
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode()
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode().replace("?", "\ufffd")
    return value


def _text_of(value: Any) -> str:
    return value if type(value) is str else repr(value)


def _number(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return math.isfinite(value)
    return kind is int and _INT_MIN <= value <= _INT_MAX


def _text_column(name: str, value: Any, raw: dict[str, Any]) -> str | None:
    if value is None:
        return None
    if type(value) is str:
        if "\x00" not in value and value.isascii():
            return value
        clean = clean_text(value)
        if clean != value:
            raw[name] = value
        return clean
    raw[name] = value
    return clean_text(_text_of(value))


def _float_column(name: str, value: Any, raw: dict[str, Any]) -> float | None:
    if value is None:
        return None
    if _number(value):
        if type(value) is int and float(value) != value:
            raw[name] = value
        return float(value)
    raw[name] = value
    return None


def _int_column(name: str, value: Any, raw: dict[str, Any]) -> int | None:
    if value is None:
        return None
    if type(value) is int and _INT_MIN <= value <= _INT_MAX:
        return value
    raw[name] = value
    return None


def task_row(t: TaskState, broker: str | None) -> tuple[Any, ...]:
    """The ``tasks`` row of *t*, in :data:`TASK_COLUMNS` order."""
    raw: dict[str, Any] = {}
    row: list[Any] = [clean_text(t.uuid), clean_text(t.state), t.state in READY_STATES, broker]
    if row[0] != t.uuid:
        raw["uuid"] = t.uuid
    if row[1] != t.state:
        raw["state"] = t.state
    append = row.append
    for name in TEXT_FIELDS:
        v = getattr(t, name)
        # The common case inline: absent, or plain ASCII text.
        if v is None or (type(v) is str and v.isascii() and "\x00" not in v):
            append(v)
        else:
            append(_text_column(name, v, raw))
    v = t.retries
    append(
        v
        if v is None or (type(v) is int and _INT_MIN <= v <= _INT_MAX)
        else _int_column("retries", v, raw)
    )
    for name in ("runtime", *TIME_FIELDS):
        v = getattr(t, name)
        append(v if v is None or type(v) is float else _float_column(name, v, raw))
    ts: Any = t.timestamp
    if _number(ts):
        row.append(float(ts))
        if type(ts) is int and float(ts) != ts:
            raw["timestamp"] = ts
    else:
        row.append(0.0)
        raw["timestamp"] = ts
    row.append(_int_column("clock", t.clock, raw))
    if t.extra:
        raw["extra"] = t.extra
    row.append(dumps(raw) if raw else None)
    return tuple(row)


def task_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored row as :meth:`TaskState.to_dict` shapes a task, plus ``broker``.

    ``children`` is empty: the store fills it in where it is asked for.
    """
    raw = loads(row["raw"]) if row["raw"] else {}
    get = raw.get
    state = get("state", row["state"])
    out: dict[str, Any] = {"uuid": get("uuid", row["uuid"]), "name": None, "state": state}
    out["ready"] = state in READY_STATES
    for name in ("worker", "client", "args", "kwargs", "result", "exception", "traceback"):
        out[name] = get(name, row[name])
    out["runtime"] = get("runtime", row["runtime"])
    out["retries"] = get("retries", row["retries"])
    for name in ("eta", "expires", "parent_id", "root_id"):
        out[name] = get(name, row[name])
    out["children"] = []
    for name in ("queue", "exchange", "routing_key"):
        out[name] = get(name, row[name])
    for name in TIME_FIELDS:
        out[name] = get(name, row[name])
    out["timestamp"] = raw["timestamp"] if "timestamp" in raw else row["ts"]
    out["clock"] = get("clock", row["clock"])
    out["extra"] = dict(get("extra") or {})
    out["name"] = get("name", row["name"])
    out["broker"] = row["broker"]
    return out


def seed_task(state: ClusterState, d: Mapping[str, Any]) -> TaskState:
    """Put task *d* (a :func:`task_dict`) into *state*, overwriting what it held."""
    return state.restore_task(d)


def worker_row(w: WorkerState, broker: str | None) -> tuple[Any, ...]:
    """The ``workers`` row of *w*, in :data:`WORKER_COLUMNS` order."""
    raw = {name: getattr(w, name) for name in _WORKER_RAW}
    ts: Any = w.timestamp
    seen: Any = w.last_seen
    beat: Any = w.last_heartbeat
    return (
        clean_text(w.hostname),
        broker,
        float(seen) if _number(seen) else None,
        float(beat) if _number(beat) else None,
        w.heartbeat_count,
        w.offline,
        float(ts) if _number(ts) else 0.0,
        dumps({"hostname": w.hostname, **raw}),
    )


def seed_worker(state: ClusterState, row: Mapping[str, Any]) -> WorkerState:
    """Put a stored worker row into *state* (its lost-event baseline starts afresh)."""
    raw = loads(row["raw"]) if row["raw"] else {}
    fields = {name: raw[name] for name in _WORKER_RAW if name in raw}
    fields["hostname"] = raw.get("hostname", row["hostname"])
    fields["last_seen"] = row["last_seen"]
    fields["last_heartbeat"] = row["last_heartbeat"]
    fields["heartbeat_count"] = int(row["heartbeat_count"] or 0)
    fields["offline"] = bool(row["offline"])
    w = state.restore_worker(fields)
    # Counters of the loss estimate (not part of ``to_dict``), kept as they were.
    for name in ("done_seen", "started_seen"):
        value = raw.get(name)
        if type(value) is int:
            setattr(w, name, value)
    return w


#: Tasks a writer keeps in its :class:`RowCache` by default.
CACHE_TASKS = 20_000


class RowCache:
    """The task rows a writer wrote last, kept in a long-lived :class:`~aiocelev.ClusterState`.

    A batch touching tasks of the cache replays its events over the cached
    tasks instead of reading their rows back.  Each cached task carries the
    ``version`` of the row it was written as (PostgreSQL: the row's version
    column, checked when the row is written again; SQLite: unused, the whole
    cache is dropped when another connection committed) and the row's
    ``broker``.  Worker rows are few: they are read back with every batch.

    The cache never evicts in the middle of a batch: when a batch would not fit,
    it starts afresh first.  A batch that fails leaves it untrustworthy, so the
    store clears it.
    """

    __slots__ = ("max_tasks", "meta", "state")

    def __init__(self, max_tasks: int | None = None) -> None:
        self.max_tasks = max(1, CACHE_TASKS if max_tasks is None else max_tasks)
        self.state = self._new_state(self.max_tasks, 0)
        #: Row key -> (version, broker) of every cached task.
        self.meta: dict[str, tuple[int, str | None]] = {}

    @staticmethod
    def _new_state(tasks: int, workers: int) -> ClusterState:
        return ClusterState(max_tasks=tasks + 1, max_workers=max(workers, 5_000) + 1)

    def clear(self) -> None:
        """Forget every cached task (their rows are read back when next touched)."""
        if self.meta or self.state.tasks or self.state.workers:
            self.state = self._new_state(self.max_tasks, 0)
            self.meta.clear()

    def make_room(self, batch: Batch) -> None:
        """Start afresh unless *batch* fits without evicting anything."""
        state = self.state
        tasks, workers = len(batch.keys), len(batch.hosts)
        if (
            len(state.tasks) + tasks > state.max_tasks
            or len(state.workers) + workers > state.max_workers
        ):
            self.state = self._new_state(max(self.max_tasks, tasks), workers)
            self.meta.clear()

    def misses(self, batch: Batch) -> list[str]:
        """Keys of the tasks of *batch* that are not cached, sorted: the rows to read
        before :meth:`Batch.reduce` (the cache first makes room for the batch)."""
        self.make_room(batch)
        meta, tasks = self.meta, self.state.tasks
        return sorted(
            {key for raw, key in batch.keys.items() if key not in meta or raw not in tasks}
        )

    def commit(self, batch: Batch, versions: Mapping[str, int], broker: str | None) -> None:
        """Record the versions of the rows a batch wrote (after its commit).

        A task of *batch* without a version (its row was written by someone else
        meanwhile) is forgotten: it is read back when next touched.
        """
        meta = self.meta
        for key in batch.uuids:
            version = versions.get(key)
            if version is None:
                meta.pop(key, None)
            else:
                old = meta.get(key)
                meta[key] = (version, (old[1] if old is not None else None) or broker)


#: Every field of a task that is not set yet (a stale cached task made new again).
_BLANK = dict.fromkeys((
    "name", "worker", "parent_id", "extra", "client", "args", "kwargs", "result", "exception",
    "traceback", "runtime", "retries", "eta", "expires", "root_id", "queue", "exchange",
    "routing_key", *TIME_FIELDS, "timestamp", "clock",
))  # fmt: skip


class Batch:
    """Events to write together, and the keys of the rows they touch.

    :param events: :class:`~aiocelev.Event` objects or wire dicts, in arrival order.
    """

    __slots__ = ("events", "hosts", "ignored", "keys", "raw_hosts", "uuids")

    def __init__(self, events: Iterable[Event | Mapping[str, Any]]) -> None:
        self.events: list[Mapping[str, Any]] = []
        uuids: set[str] = set()
        hosts: set[str] = set()
        ignored = 0
        append = self.events.append
        for event in events:
            f = event._fields if isinstance(event, Event) else event
            type_ = f.get("type")
            if type(type_) is not str:
                ignored += 1
                continue
            append(f)
            hostname = f.get("hostname")
            if type_.startswith("task-"):
                uuid = f.get("uuid")
                if type(uuid) is str:
                    uuids.add(uuid)
                    if type_ != "task-sent" and type(hostname) is str:
                        hosts.add(hostname)
                else:
                    ignored += 1
            elif type_.startswith("worker-") and type(hostname) is str:
                hosts.add(hostname)
        #: Task id as sent -> row key (NUL and lone surrogates replaced).
        self.keys: dict[str, str] = {
            u: u if u.isascii() and "\x00" not in u else clean_text(u) for u in uuids
        }
        #: Row keys of the tasks touched, sorted (rows are locked in this order).
        self.uuids: list[str] = sorted(set(self.keys.values()))
        #: Worker hostnames as sent.
        self.raw_hosts: set[str] = hosts
        #: Row keys of the workers touched, sorted.
        self.hosts: list[str] = sorted({clean_text(h) for h in hosts})
        #: Events that can change no row (no type; a task event without a string uuid).
        self.ignored = ignored

    def reduce(
        self,
        cache: RowCache,
        tasks: Sequence[Mapping[str, Any]],
        workers: Sequence[Mapping[str, Any]],
        broker: str | None,
    ) -> tuple[list[tuple[Any, ...]], list[int | None], list[tuple[Any, ...]]]:
        """The new task and worker rows, replayed over *cache*.

        *tasks* are the stored rows (with ``version`` where the backend keeps
        one) of the tasks of the batch the cache misses (:meth:`RowCache.misses`,
        called just before); a missed task without
        a stored row is new.  *workers* are the stored rows of the batch's
        workers.  Returns the task rows (sorted by key), the version each task
        row had when read (``None``: none stored) and the worker rows.
        """
        state, meta = cache.state, cache.meta
        restore = state.restore_task
        read: set[str] = set()
        for row in tasks:
            key = row["uuid"]
            read.add(key)
            restore(task_dict(row))
            meta[key] = (int(_version(row) or 0), row["broker"])
        expected: dict[str, int | None] = {}
        cached = state.tasks
        for raw, key in self.keys.items():
            entry = meta.get(key)
            if key in read and entry is not None:
                expected[key] = entry[0]
            elif entry is None or raw not in cached:
                # No stored row: the task is new to the database (a cached leftover too).
                meta.pop(key, None)
                if raw in cached:
                    restore({"uuid": raw, "state": "PENDING", **_BLANK})
                expected[key] = None
            else:
                expected[key] = entry[0]
        wbrokers: dict[str, str | None] = {}
        for row in workers:
            w = seed_worker(state, row)
            wbrokers[w.hostname] = row["broker"]
        state.apply_many(self.events)
        cached = state.tasks
        pairs = sorted(
            (
                (
                    task_row(cached[raw], (meta[key][1] if key in meta else None) or broker),
                    expected[key],
                )
                for raw, key in self.keys.items()
                if raw in cached
            ),
            key=_first_key,
        )
        task_rows = [p[0] for p in pairs]
        versions = [p[1] for p in pairs]
        found = state.workers
        worker_rows = sorted(
            (
                worker_row(found[host], wbrokers.get(host) or broker)
                for host in self.raw_hosts
                if host in found
            ),
            key=_key,
        )
        return task_rows, versions, worker_rows

    def replay(
        self, keys: Iterable[str], tasks: Sequence[Mapping[str, Any]], broker: str | None
    ) -> list[tuple[Any, ...]]:
        """The rows of the tasks *keys* of the batch, replayed over their stored rows
        *tasks* in a throw-away state (worker rows are not rebuilt)."""
        wanted = set(keys)
        raws = {raw for raw, key in self.keys.items() if key in wanted}
        state = ClusterState(max_tasks=len(raws) + 1, max_workers=len(self.hosts) + 1)
        brokers: dict[str, str | None] = {}
        for row in tasks:
            d = task_dict(row)
            state.restore_task(d)
            brokers[d["uuid"]] = row["broker"]
        state.apply_many(
            f for f in self.events if f["type"].startswith("task-") and f.get("uuid") in raws
        )
        found = state.tasks
        return sorted(
            (task_row(found[raw], brokers.get(raw) or broker) for raw in raws if raw in found),
            key=_key,
        )


def _key(row: tuple[Any, ...]) -> Any:
    return row[0]


def _first_key(pair: tuple[tuple[Any, ...], Any]) -> Any:
    return pair[0][0]


def _version(row: Mapping[str, Any]) -> Any:
    try:
        return row["version"]
    except (KeyError, IndexError):
        return None


def event_key(f: Mapping[str, Any]) -> str:
    """A key naming one event across redeliveries (for the raw event log)."""
    return dumps([f.get("type"), f.get("hostname"), f.get("timestamp"), f.get("uuid")])


def event_row(f: Mapping[str, Any]) -> tuple[Any, ...]:
    """An ``events`` log row: key, type, hostname, uuid, timestamp, the event as JSON."""
    uuid = f.get("uuid")
    hostname = f.get("hostname")
    ts: Any = f.get("timestamp")
    return (
        event_key(f),
        clean_text(f["type"]),
        clean_text(hostname) if type(hostname) is str else None,
        clean_text(uuid) if type(uuid) is str else None,
        float(ts) if _number(ts) else 0.0,
        dumps(dict(f)),
    )
