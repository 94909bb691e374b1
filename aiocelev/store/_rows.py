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
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
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


_texts = operator.attrgetter(*TEXT_FIELDS)
_times = operator.attrgetter("runtime", *TIME_FIELDS)
_TEXT_TYPES = frozenset((str, type(None)))
_TIME_TYPES = frozenset((float, type(None)))


def task_row(t: TaskState, broker: str | None) -> tuple[Any, ...]:
    """The ``tasks`` row of *t*, in :data:`TASK_COLUMNS` order."""
    uuid, state, retries, ts, clock = t.uuid, t.state, t.retries, t.timestamp, t.clock
    texts, times = _texts(t), _times(t)
    # The common case at once: plain ASCII texts, float times, 64-bit integers, no extra.
    if (
        type(ts) is float
        and math.isfinite(ts)
        and type(uuid) is str
        and type(state) is str
        and _TEXT_TYPES.issuperset(map(type, texts))
        and _TIME_TYPES.issuperset(map(type, times))
        and (retries is None or (type(retries) is int and _INT_MIN <= retries <= _INT_MAX))
        and (clock is None or (type(clock) is int and _INT_MIN <= clock <= _INT_MAX))
        and not t.extra
    ):
        plain = "\x01".join((uuid, state, *filter(None, texts)))
        if plain.isascii() and "\x00" not in plain:
            return (
                uuid, state, state in READY_STATES, broker, *texts, retries, *times, ts, clock, None
            )  # fmt: skip
    return _task_row(t, broker)


def _task_row(t: TaskState, broker: str | None) -> tuple[Any, ...]:
    """:func:`task_row` for any values (a sanitised column, the exact value in ``raw``)."""
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
#: Events replayed between two checkpoints while a batch is prepared.
_SLICE = 1_000

_Rows = list[tuple[Any, ...]]
_Pair = tuple[tuple[Any, ...], int | None]


class RowCache:
    """The rows a writer wrote last, kept in a long-lived :class:`~aiocelev.ClusterState`.

    A batch touching tasks and workers of the cache replays its events over
    them instead of reading their rows back.  Each cached row carries the
    ``version`` it was written with (PostgreSQL: the row's version column,
    checked when the row is written again; SQLite: unused, the whole cache is
    dropped when another connection committed) and the row's ``broker``.

    The cache never evicts in the middle of a batch: when a batch would not fit,
    it starts afresh first.  :meth:`clear` (a batch failed, retention deleted
    rows, another connection wrote) starts a new ``epoch``: a batch prepared in
    an older one is prepared again before it is written.
    """

    __slots__ = ("epoch", "max_tasks", "meta", "state", "wmeta")

    def __init__(self, max_tasks: int | None = None) -> None:
        self.max_tasks = max(1, CACHE_TASKS if max_tasks is None else max_tasks)
        self.state = self._new_state(self.max_tasks, 0)
        #: Task row key -> (version, broker) of every cached task.
        self.meta: dict[str, tuple[int, str | None]] = {}
        #: Worker row key -> (version, broker) of every cached worker.
        self.wmeta: dict[str, tuple[int, str | None]] = {}
        #: Bumped by every :meth:`clear`.
        self.epoch = 0

    @staticmethod
    def _new_state(tasks: int, workers: int) -> ClusterState:
        return ClusterState(max_tasks=tasks + 1, max_workers=max(workers, 5_000) + 1)

    def clear(self, tasks: int = 0, workers: int = 0) -> None:
        """Forget every cached row (they are read back when next touched).

        New containers: a batch being prepared over the old ones goes on
        harmlessly, and is prepared again (its epoch is over).
        """
        self.state = self._new_state(max(self.max_tasks, tasks), workers)
        self.meta = {}
        self.wmeta = {}
        self.epoch += 1

    def compact(self, batch: Batch) -> bool:
        """Make room for *batch*, keeping the rows most likely to be written again.

        The cache keeps every worker, the cached tasks *batch* touches and the
        newest unfinished tasks, up to a quarter of the cache; the other tasks
        are dropped in place (read back when next touched; a batch prepared
        before and not written yet settles only the rows still cached).  The
        kept rows are untouched and keep their versions, so the epoch stays:
        batches prepared before are still valid.  ``False`` (nothing changed)
        when *batch* does not fit even so: the cache has to start afresh.
        """
        state, meta = self.state, self.meta
        cached = state.tasks
        keep = {raw for raw in batch.keys if raw in cached}
        budget = self.max_tasks - len(batch.keys)
        if len(keep) > budget:
            return False
        limit = min(budget, self.max_tasks // 4)
        if len(keep) < limit:
            for t in state.unready_tasks(limit):  # newest first
                keep.add(t.uuid)
                if len(keep) >= limit:
                    break
        forget = state.forget_task
        for raw in [raw for raw in cached if raw not in keep]:
            forget(raw)
        kept = {_clean(raw) for raw in keep}
        self.meta = {key: entry for key, entry in meta.items() if key in kept}
        return True

    def needs_room(self, batch: Batch) -> bool:
        """Whether *batch* fits only in a cache started afresh."""
        state = self.state
        return (
            len(state.tasks) + len(batch.keys) > state.max_tasks
            or len(state.workers) + len(batch.raw_hosts) > state.max_workers
        )

    def misses(self, batch: Batch) -> tuple[list[str], list[str]]:
        """Keys of the tasks and of the workers of *batch* that are not cached, sorted:
        the rows to read before :meth:`Batch.reduce`.

        The cache first makes room for the batch (starting afresh if it would not fit).
        """
        if self.needs_room(batch):
            self.clear(len(batch.keys), len(batch.raw_hosts))
        state = self.state
        meta, cached = self.meta, state.tasks
        wmeta, wcached = self.wmeta, state.workers
        return (
            sorted({k for raw, k in batch.keys.items() if k not in meta or raw not in cached}),
            sorted(
                {k for raw, k in batch.raw_hosts.items() if k not in wmeta or raw not in wcached}
            ),
        )

    def settle(
        self,
        prepared: Prepared,
        versions: Mapping[str, int] | None,
        wversions: Mapping[str, int] | None,
    ) -> None:
        """After the commit of *prepared*: the versions the rows were written with
        (``None``: every row at the batch's own, which the cache holds already).

        A row of the batch without one (another writer changed it meanwhile, it
        was written again over that) is forgotten: it is read back when next touched.
        """
        if prepared.epoch != self.epoch:
            return
        token = prepared.token
        for meta, rows, written in (
            (self.meta, prepared.task_rows, versions),
            (self.wmeta, prepared.worker_rows, wversions),
        ):
            if written is None:
                continue
            for row in rows:
                key = row[0]
                entry = meta.get(key)
                if entry is None or entry[0] != token:
                    continue  # a later batch, prepared already, took it over
                version = written.get(key)
                if version is None:
                    del meta[key]
                elif version != token:
                    meta[key] = (version, entry[1])


class Prepared:
    """A batch replayed over a :class:`RowCache`: the rows to write, not written yet."""

    __slots__ = (
        "batch",
        "broker",
        "epoch",
        "task_expected",
        "task_rows",
        "token",
        "worker_expected",
        "worker_rows",
    )

    def __init__(self, batch: Batch, broker: str | None, epoch: int, token: int) -> None:
        self.batch = batch
        self.broker = broker
        #: The cache epoch it was prepared in.
        self.epoch = epoch
        #: The version its rows are written with.
        self.token = token
        #: Task rows (sorted by key), and the version each had when it was cached.
        self.task_rows: _Rows = []
        self.task_expected: list[int | None] = []
        #: Worker rows (sorted by key), and their cached versions.
        self.worker_rows: _Rows = []
        self.worker_expected: list[int | None] = []


#: Every field of a task that is not set yet (a stale cached task made new again).
_BLANK = dict.fromkeys((
    "name", "worker", "parent_id", "extra", "client", "args", "kwargs", "result", "exception",
    "traceback", "runtime", "retries", "eta", "expires", "root_id", "queue", "exchange",
    "routing_key", *TIME_FIELDS, "timestamp", "clock",
))  # fmt: skip


def _clean(value: str) -> str:
    return value if value.isascii() and "\x00" not in value else clean_text(value)


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
        self.keys: dict[str, str] = {u: _clean(u) for u in uuids}
        #: Row keys of the tasks touched, sorted (rows are locked in this order).
        self.uuids: list[str] = sorted(set(self.keys.values()))
        #: Worker hostname as sent -> row key.
        self.raw_hosts: dict[str, str] = {h: _clean(h) for h in hosts}
        #: Row keys of the workers touched, sorted.
        self.hosts: list[str] = sorted(set(self.raw_hosts.values()))
        #: Events that can change no row (no type; a task event without a string uuid).
        self.ignored = ignored

    def steps(
        self,
        cache: RowCache,
        tasks: Sequence[Mapping[str, Any]],
        workers: Sequence[Mapping[str, Any]],
        prepared: Prepared,
    ) -> Iterator[None]:
        """Replay the batch over *cache* into *prepared*, one slice of events per step.

        *tasks* and *workers* are the stored rows (with ``version`` where the
        backend keeps one) the cache misses (:meth:`RowCache.misses`, called
        just before); a missed row that is not stored is new.  The cache holds
        the result (each row at ``prepared.token``) as soon as it is built.
        """
        state, meta, wmeta = cache.state, cache.meta, cache.wmeta
        broker, token = prepared.broker, prepared.token
        restore = state.restore_task
        read: set[str] = set()
        for row in tasks:
            key = row["uuid"]
            read.add(key)
            restore(task_dict(row))
            meta[key] = (int(_version(row) or 0), row["broker"])
        cached = state.tasks
        expected: dict[str, int | None] = {}
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
        wread: set[str] = set()
        for row in workers:
            key = row["hostname"]
            wread.add(key)
            seed_worker(state, row)
            wmeta[key] = (int(_version(row) or 0), row["broker"])
        wexpected: dict[str, int | None] = {}
        wcached = state.workers
        for raw, key in self.raw_hosts.items():
            entry = wmeta.get(key)
            if entry is None or (key not in wread and raw not in wcached):
                wmeta.pop(key, None)
                wexpected[key] = None
            else:
                wexpected[key] = entry[0]
        events = self.events
        apply_many = state.apply_many
        for start in range(0, len(events), _SLICE):
            apply_many(events[start : start + _SLICE])
            yield
        cached = state.tasks
        pairs = []
        for raw, key in self.keys.items():
            t = cached.get(raw)
            if t is not None:
                entry = meta.get(key)
                row_broker = (entry[1] if entry is not None else None) or broker
                pairs.append((task_row(t, row_broker), expected[key]))
                meta[key] = (token, row_broker)
        pairs.sort(key=_first_key)
        if len(self.uuids) != len(self.keys):
            pairs = _last_per_key(pairs)  # ids that differ only in NUL or bad surrogates
        prepared.task_rows = [p[0] for p in pairs]
        prepared.task_expected = [p[1] for p in pairs]
        wpairs = []
        wcached = state.workers
        for raw, key in self.raw_hosts.items():
            w = wcached.get(raw)
            if w is not None:
                entry = wmeta.get(key)
                row_broker = (entry[1] if entry is not None else None) or broker
                wpairs.append((worker_row(w, row_broker), wexpected[key]))
                wmeta[key] = (token, row_broker)
        wpairs.sort(key=_first_key)
        if len(self.hosts) != len(self.raw_hosts):
            wpairs = _last_per_key(wpairs)
        prepared.worker_rows = [p[0] for p in wpairs]
        prepared.worker_expected = [p[1] for p in wpairs]

    def reduce(
        self,
        cache: RowCache,
        tasks: Sequence[Mapping[str, Any]],
        workers: Sequence[Mapping[str, Any]],
        broker: str | None,
        token: int = 0,
    ) -> Prepared:
        """:meth:`steps` in one go."""
        prepared = Prepared(self, broker, cache.epoch, token)
        for _ in self.steps(cache, tasks, workers, prepared):
            pass
        return prepared

    def replay(
        self,
        keys: Iterable[str],
        tasks: Sequence[Mapping[str, Any]],
        hosts: Iterable[str],
        workers: Sequence[Mapping[str, Any]],
        broker: str | None,
    ) -> tuple[_Rows, _Rows]:
        """The rows of the tasks *keys* and workers *hosts* of the batch, replayed over
        their stored rows *tasks* and *workers* in a throw-away state."""
        wanted, wanted_hosts = set(keys), set(hosts)
        raws = {raw for raw, key in self.keys.items() if key in wanted}
        raw_hosts = {raw for raw, key in self.raw_hosts.items() if key in wanted_hosts}
        state = ClusterState(max_tasks=len(self.keys) + 1, max_workers=len(self.raw_hosts) + 1)
        brokers: dict[str, str | None] = {}
        for row in tasks:
            d = task_dict(row)
            state.restore_task(d)
            brokers[d["uuid"]] = row["broker"]
        wbrokers: dict[str, str | None] = {}
        for row in workers:
            wbrokers[seed_worker(state, row).hostname] = row["broker"]
        state.apply_many(
            f for f in self.events if f.get("uuid") in raws or f.get("hostname") in raw_hosts
        )
        found, wfound = state.tasks, state.workers
        return (
            sorted(
                (task_row(found[r], brokers.get(r) or broker) for r in raws if r in found),
                key=_key,
            ),
            sorted(
                (
                    worker_row(wfound[h], wbrokers.get(h) or broker)
                    for h in raw_hosts
                    if h in wfound
                ),
                key=_key,
            ),
        )


def _key(row: tuple[Any, ...]) -> Any:
    return row[0]


def _last_per_key(pairs: list[_Pair]) -> list[_Pair]:
    """One pair per row key (the last one), in key order: a row is written once."""
    return list({pair[0][0]: pair for pair in pairs}.values())


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
