"""The store interface, and what every backend shares: queries, cursors, restore, retention."""

from __future__ import annotations

import abc
import base64
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, NamedTuple

import anyio
import anyio.lowlevel

from .._codec import loads
from .._events import Event
from .._state import ClusterState
from .._url import mask_url
from ._filter import SEARCH_FIELDS, QueryError, TaskFilter, Term
from ._rows import (
    TASK_COLUMNS,
    Batch,
    Prepared,
    RowCache,
    clean_text,
    dumps,
    seed_task,
    seed_worker,
    task_dict,
)

__all__ = ["EventStore", "StoreStatistics", "TaskPage"]

_SELECT_TASKS = ", ".join(TASK_COLUMNS)
_MAX_LIMIT = 10_000


class TaskPage(NamedTuple):
    """One page of a task query, newest first."""

    tasks: list[dict[str, Any]]
    """Tasks shaped as :meth:`aiocelev.TaskState.to_dict` gives them, plus ``broker``."""
    cursor: str | None
    """Pass it back as ``cursor=`` for the next page; ``None`` after the last one."""


class StoreStatistics(NamedTuple):
    """Counters of an :class:`EventStore` since it was opened."""

    events: int
    """Events written (committed)."""
    batches: int
    """Write transactions committed."""
    tasks: int
    """Task rows written (one per task per batch)."""
    workers: int
    """Worker rows written."""
    ignored: int
    """Events that change no row (no ``type``; a task event without a string ``uuid``)."""
    rejected: Mapping[str, int]
    """Events the database refused, by reason (see :class:`~aiocelev.store.StoreWriter`)."""
    pruned: int
    """Task rows deleted by retention."""
    conflicts: int = 0
    """Times this store found rows it had cached changed by another writer (PostgreSQL:
    task rows written again over their new content; SQLite: batches after another
    connection committed): they were read again and the events replayed over them."""


def _escape_like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def encode_cursor(ts: float, uuid: str) -> str:
    """An opaque cursor for the position just after the row ``(ts, uuid)``."""
    return base64.urlsafe_b64encode(dumps([ts, uuid]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The ``(ts, uuid)`` of a cursor from :func:`encode_cursor`.

    :raises QueryError: not such a cursor.
    """
    try:
        data = loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        ts, uuid = data
        if type(ts) not in (int, float) or type(uuid) is not str:
            raise ValueError(cursor)
        return float(ts), uuid
    except Exception as exc:
        raise QueryError(f"invalid cursor {cursor!r}") from exc


class Where:
    """SQL conditions and their parameters (``?`` placeholders; backends renumber)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.params: list[Any] = []

    def add(self, sql: str, *params: Any) -> None:
        """Add one condition."""
        self.parts.append(sql)
        self.params.extend(params)

    def sql(self) -> str:
        """``WHERE ...`` (or nothing)."""
        return f" WHERE {' AND '.join(self.parts)}" if self.parts else ""


class EventStore(abc.ABC):
    """Task history on a database: one row per task, one per worker, optionally every event.

    Use it as an async context manager (or :meth:`open` then :meth:`aclose`), in one
    task.  :meth:`write` applies a batch of events in one transaction with the rules
    of :class:`~aiocelev.ClusterState` (Celery's precedence for out-of-order events);
    writing the same events again leaves the task rows as they are.  Every method
    raises :class:`~aiocelev.StoreError` (or :class:`~aiocelev.StoreConnectionError`)
    on a database failure, never a driver's exception.  Cancelling a call leaves no
    half-written batch: a transaction either commits whole or not at all.
    """

    #: The URL scheme(s) of the backend.
    schemes: tuple[str, ...] = ()

    def __init__(self, url: str, *, event_log: bool = False) -> None:
        self._url = url
        #: Whether every event is also kept in the ``events`` table.
        self.event_log = event_log
        self._events = self._batches = self._tasks_written = self._workers_written = 0
        self._ignored = self._pruned = self._conflicts = 0
        self._rejected: Counter[str] = Counter()
        #: The rows this store wrote last (see :class:`~aiocelev.store._rows.RowCache`).
        self._cache = RowCache()
        #: Held while a batch is replayed over the cache.
        self._cache_lock = anyio.Lock()

    # -- lifecycle ----------------------------------------------------------

    @property
    def url(self) -> str:
        """The store URL, password masked."""
        return mask_url(self._url)

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, and create or migrate the schema (idempotent)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close every connection (idempotent); waits for a write in progress."""

    async def __aenter__(self) -> EventStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url!r}>"

    @property
    @abc.abstractmethod
    def schema_version(self) -> int:
        """The schema version of the open database."""

    # -- writing --------------------------------------------------------------

    async def write(
        self, events: Iterable[Event | Mapping[str, Any]], *, broker: str | None = None
    ) -> int:
        """Apply *events* (in order) in one transaction; returns how many were used.

        :param broker: the (masked) URL of the broker the events came from, kept
            with rows created by this batch.
        """
        batch = Batch(events)
        if batch.events:
            await self.write_prepared(await self.prepare(batch, broker))
        else:
            self._ignored += batch.ignored
        return len(batch.events)

    async def prepare(
        self,
        events: Batch | Iterable[Event | Mapping[str, Any]],
        broker: str | None = None,
        *,
        after: Prepared | None = None,
    ) -> Prepared:
        """Replay *events* over the rows this store wrote last (reading the others):
        the rows :meth:`write_prepared` will write.

        Prepared batches are written in the order they were prepared.  *after* is
        the batch prepared just before, when it may not be written yet (the next
        batch may be prepared while the previous one is written, as
        :class:`StoreWriter` does).  If the cache was dropped since *after* was
        prepared (it failed, retention ran...), or has to start afresh for this
        batch, nothing is replayed now: the batch is prepared when it is written.
        """
        batch = events if isinstance(events, Batch) else Batch(events)
        async with self._cache_lock:
            cache = self._cache
            try:
                while True:
                    if cache.needs_room(batch) and (after is None or after.epoch == cache.epoch):
                        cache.compact(batch)  # else it starts afresh (below)
                    if after is not None and (
                        after.epoch != cache.epoch or cache.needs_room(batch)
                    ):
                        # Rows of the batches before it, not written yet, would be read
                        # back from the database, or missed: prepare it when written.
                        return Prepared(batch, broker, -1, 0)
                    task_keys, host_keys = cache.misses(batch)
                    epoch = cache.epoch
                    tasks, workers = await self._read_rows(task_keys, host_keys)
                    if cache.epoch == epoch:
                        break  # else dropped meanwhile: what was missing is not known
                prepared = Prepared(batch, broker, epoch, secrets.randbits(63))
                for _ in batch.steps(cache, tasks, workers, prepared):
                    await anyio.lowlevel.checkpoint()
            except BaseException:
                cache.clear()
                raise
        return prepared

    def is_current(self, prepared: Prepared) -> bool:
        """Whether *prepared* was prepared over the cache as it still is (not dropped
        since).  A batch that is not is prepared again when it is written, and the
        next one should be prepared only after that (:class:`StoreWriter` waits)."""
        return prepared.epoch == self._cache.epoch

    async def write_prepared(self, prepared: Prepared) -> None:
        """Write a batch from :meth:`prepare` in one transaction (prepared again first
        if what it was prepared over is no longer trusted)."""
        batch = prepared.batch
        try:
            tasks, workers = await self._write(prepared)
        except BaseException:
            # The cache may hold what was not committed.
            self._cache.clear()
            raise
        self._events += len(batch.events)
        self._batches += 1
        self._tasks_written += tasks
        self._workers_written += workers
        self._ignored += batch.ignored

    async def _prepare_again(self, prepared: Prepared) -> Prepared:
        """*prepared* replayed again over the cache as it is now (its predecessors written)."""
        return await self.prepare(prepared.batch, prepared.broker)

    @abc.abstractmethod
    async def _read_rows(
        self, uuids: Sequence[str], hosts: Sequence[str]
    ) -> tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]:
        """The stored task rows *uuids* and worker rows *hosts* (with their version)."""

    def count_rejected(self, reason: str, n: int = 1) -> None:
        """Count *n* events refused by the database for *reason* (used by the writer)."""
        self._rejected[reason] += n

    def statistics(self) -> StoreStatistics:
        """A snapshot of the counters."""
        return StoreStatistics(
            events=self._events,
            batches=self._batches,
            tasks=self._tasks_written,
            workers=self._workers_written,
            ignored=self._ignored,
            rejected=dict(self._rejected),
            pruned=self._pruned,
            conflicts=self._conflicts,
        )

    @abc.abstractmethod
    async def _write(self, prepared: Prepared) -> tuple[int, int]:
        """Write *prepared* in one transaction; ``(task rows, worker rows)`` written."""

    # -- reading ----------------------------------------------------------------

    @abc.abstractmethod
    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Mapping[str, Any]]:
        """Rows of a read query (``?`` placeholders)."""

    @abc.abstractmethod
    async def _execute(self, sql: str, params: Sequence[Any]) -> int:
        """Run one statement in its own transaction; the number of rows it changed."""

    @abc.abstractmethod
    def _search(self, where: Where, term: Term) -> None:
        """Add the condition of one free-text term (backend-specific index)."""

    def _where(self, f: TaskFilter | Mapping[str, str] | str | None) -> Where:
        if f is None:
            f = TaskFilter()
        elif isinstance(f, str):
            f = TaskFilter.from_params({"search": f})
        elif not isinstance(f, TaskFilter):
            f = TaskFilter.from_params(f)
        where = Where()
        if f.state is not None:
            where.add("state = ?", f.state.upper())
        if f.name is not None:
            where.add("name = ?", f.name)
        if f.worker is not None:
            where.add("worker = ?", f.worker)
        if f.broker is not None:
            where.add("broker = ?", f.broker)
        for column, low, high in (
            ("received", f.received_start, f.received_end),
            ("started", f.started_start, f.started_end),
        ):
            if low is not None:
                where.add(f"{column} >= ?", low)
            if high is not None:
                where.add(f"{column} <= ?", high)
        for term in f.search:
            term = Term(clean_text(term.text), term.field, term.negate)
            if term.field is None or term.field in SEARCH_FIELDS:
                self._search(where, term)
            else:
                not_ = "NOT " if term.negate else ""
                where.add(f"{not_}{self._ilike(term.field)}", _escape_like(term.text))
        return where

    def _ilike(self, column: str) -> str:
        """A case-insensitive substring test of *column* against one ``?`` pattern."""
        return f"coalesce({column}, '') LIKE ? ESCAPE '\\'"

    async def query(
        self,
        filter: TaskFilter | Mapping[str, str] | str | None = None,  # noqa: A002
        *,
        cursor: str | None = None,
        limit: int = 50,
    ) -> TaskPage:
        """One page of the tasks matching *filter*, newest first (by the timestamp of
        the event that set their state), and the cursor of the next page.

        *filter* is a :class:`TaskFilter`, a mapping of the dashboard's (and Flower's)
        query parameters, or a search string.

        :raises QueryError: a bad filter value or cursor.
        """
        limit = max(1, min(int(limit), _MAX_LIMIT))
        where = self._where(filter)
        if cursor is not None:
            ts, uuid = decode_cursor(cursor)
            where.add("(ts, uuid) < (?, ?)", ts, uuid)
        sql = f"SELECT {_SELECT_TASKS} FROM tasks{where.sql()} ORDER BY ts DESC, uuid DESC LIMIT ?"
        rows = await self._fetch(sql, [*where.params, limit + 1])
        more = len(rows) > limit
        rows = rows[:limit]
        tasks = await self._with_children([task_dict(r) for r in rows], rows)
        next_cursor = encode_cursor(rows[-1]["ts"], rows[-1]["uuid"]) if more else None
        return TaskPage(tasks, next_cursor)

    async def count(
        self,
        filter: TaskFilter | Mapping[str, str] | str | None = None,  # noqa: A002
    ) -> int:
        """How many stored tasks match *filter*."""
        where = self._where(filter)
        rows = await self._fetch(f"SELECT count(*) AS n FROM tasks{where.sql()}", where.params)
        return int(rows[0]["n"])

    async def _with_children(
        self, tasks: list[dict[str, Any]], rows: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        if not tasks:
            return tasks
        keys = [r["uuid"] for r in rows]
        by_key = {r["uuid"]: t for r, t in zip(rows, tasks, strict=True)}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            found = await self._fetch(
                f"SELECT parent_id, uuid FROM tasks WHERE parent_id IN ({marks}) ORDER BY ts",
                chunk,
            )
            for row in found:
                by_key[row["parent_id"]]["children"].append(row["uuid"])
        return tasks

    async def get(self, uuid: str) -> dict[str, Any] | None:
        """The task *uuid* (shaped as :meth:`TaskState.to_dict`, plus ``broker``), or ``None``."""
        rows = await self._fetch(
            f"SELECT {_SELECT_TASKS} FROM tasks WHERE uuid = ?", [clean_text(uuid)]
        )
        if not rows:
            return None
        return (await self._with_children([task_dict(rows[0])], rows))[0]

    async def unfinished(self, limit: int = 10_000) -> list[dict[str, Any]]:
        """Tasks not in a ready state (``SUCCESS``, ``FAILURE``, ``REVOKED``), newest first."""
        rows = await self._fetch(
            f"SELECT {_SELECT_TASKS} FROM tasks WHERE NOT ready "
            "ORDER BY ts DESC, uuid DESC LIMIT ?",
            [max(0, limit)],
        )
        return [task_dict(r) for r in rows]

    async def _worker_rows(self) -> list[Mapping[str, Any]]:
        return await self._fetch(
            "SELECT hostname, broker, last_seen, last_heartbeat, heartbeat_count, offline, ts, "
            "raw FROM workers ORDER BY hostname",
            [],
        )

    async def workers(self) -> list[dict[str, Any]]:
        """Every stored worker, shaped as :meth:`WorkerState.to_dict` (liveness as of now),
        plus ``broker``."""
        rows = await self._worker_rows()
        state = ClusterState(max_workers=len(rows) + 1)
        out = []
        for row in rows:
            d = seed_worker(state, row).to_dict()
            d["broker"] = row["broker"]
            out.append(d)
        return out

    async def events(self, uuid: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Events of the raw log (``event_log`` on), oldest first; of one task if *uuid*."""
        if uuid is None:
            rows = await self._fetch(
                "SELECT data FROM events ORDER BY timestamp, key LIMIT ?", [limit]
            )
        else:
            rows = await self._fetch(
                "SELECT data FROM events WHERE uuid = ? ORDER BY timestamp, key LIMIT ?",
                [uuid, limit],
            )
        return [loads(r["data"]) for r in rows]

    async def restore(self, state: ClusterState, *, recent: int = 0) -> tuple[int, int]:
        """Load every stored worker and the unfinished tasks (newest ones, at most
        ``state.max_tasks``) into *state*, plus the *recent* most recently finished
        tasks; ``(tasks, workers)`` loaded.

        Call it before feeding *state* with live events: what arrives next is
        applied on top, with the usual precedence rules.  Lost-event estimates
        start afresh.
        """
        rows = await self._worker_rows()
        for row in rows:
            seed_worker(state, row)
        limit = state.max_tasks
        tasks = await self.unfinished(limit)
        if recent > 0:
            done = await self._fetch(
                f"SELECT {_SELECT_TASKS} FROM tasks WHERE ready ORDER BY ts DESC, uuid DESC "
                "LIMIT ?",
                [min(recent, limit)],
            )
            tasks += [task_dict(r) for r in done]
        tasks.sort(key=lambda d: d["timestamp"] if type(d["timestamp"]) is float else 0.0)
        for d in tasks[-limit:]:
            seed_task(state, d)
        return min(len(tasks), limit), len(rows)

    # -- retention ----------------------------------------------------------------

    async def prune(
        self,
        *,
        max_age: float | None = None,
        max_rows: int | None = None,
        batch_size: int = 1000,
        now: float | None = None,
    ) -> int:
        """Delete tasks older than *max_age* seconds (by the timestamp of their state)
        and the oldest beyond *max_rows*, *batch_size* rows per transaction (no long
        locks; writers go on between batches).  Returns the rows deleted.
        """
        deleted = 0
        if max_age is not None:
            cutoff = (time.time() if now is None else now) - max_age
            deleted += await self._delete_batches("ts < ?", [cutoff], batch_size)
            if self.event_log:
                await self._delete_events(cutoff, batch_size)
        if max_rows is not None:
            rows = await self._fetch(
                "SELECT ts, uuid FROM tasks ORDER BY ts DESC, uuid DESC LIMIT 1 OFFSET ?",
                [max(0, max_rows)],
            )
            if rows:
                deleted += await self._delete_batches(
                    "(ts, uuid) <= (?, ?)", [rows[0]["ts"], rows[0]["uuid"]], batch_size
                )
        self._pruned += deleted
        return deleted

    async def _delete_batches(self, cond: str, params: list[Any], batch_size: int) -> int:
        total = 0
        while True:
            n = await self._execute(
                f"DELETE FROM tasks WHERE uuid IN (SELECT uuid FROM tasks WHERE {cond} "
                "ORDER BY ts, uuid LIMIT ?)",
                [*params, batch_size],
            )
            total += n
            if n < batch_size:
                return total
            await anyio.lowlevel.checkpoint()

    async def _delete_events(self, cutoff: float, batch_size: int) -> None:
        while True:
            n = await self._execute(
                "DELETE FROM events WHERE key IN (SELECT key FROM events WHERE timestamp < ? "
                "LIMIT ?)",
                [cutoff, batch_size],
            )
            if n < batch_size:
                return
            await anyio.lowlevel.checkpoint()
