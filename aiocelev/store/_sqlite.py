"""The SQLite store (``sqlite:///path.db``): stdlib ``sqlite3`` in worker threads, WAL mode.

One connection writes and one reads, each used by one thread at a time (a
capacity limiter of one), so a dashboard reads while a batch is being written.
A write is one ``BEGIN IMMEDIATE`` transaction: the batch is replayed over the
writer's cache of the rows it wrote last (the rows it does not hold are read)
and written back before anyone else may write.  When another connection
committed since the last batch (``PRAGMA data_version``), the cache is dropped
and every row read again, which keeps several processes writing one file safe.  Text search is an FTS5
trigram index over ``args``, ``kwargs``, ``result`` and ``exception`` of the
finished tasks, kept in step by triggers (a task is indexed once, when it
finishes); the unfinished ones are few and scanned.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio
import anyio.to_thread

from .._exceptions import ConfigurationError, StoreConnectionError, StoreError
from ._base import EventStore, Where, _escape_like
from ._filter import Term
from ._rows import TASK_COLUMNS, TEXT_FIELDS, WORKER_COLUMNS, Prepared, _Rows, event_row

__all__ = ["SQLiteStore"]

_T = TypeVar("_T")


_FTS_COLUMNS = "args, kwargs, result, exception, ready"
_FTS_CHANGED = (
    "old.args IS NOT new.args OR old.kwargs IS NOT new.kwargs "
    "OR old.result IS NOT new.result OR old.exception IS NOT new.exception"
)

SCHEMA_V1 = [
    f"""CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        uuid TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL DEFAULT 'PENDING',
        ready INTEGER NOT NULL DEFAULT 0,
        broker TEXT,
        {", ".join(f"{c} TEXT" for c in TEXT_FIELDS)},
        retries INTEGER,
        runtime REAL,
        sent REAL, received REAL, started REAL, succeeded REAL, failed REAL,
        retried REAL, revoked REAL, rejected REAL,
        ts REAL NOT NULL DEFAULT 0,
        clock INTEGER,
        raw TEXT
    )""",
    "CREATE INDEX tasks_ts ON tasks (ts, uuid)",
    "CREATE INDEX tasks_state ON tasks (state, name, ts, uuid)",
    "CREATE INDEX tasks_name ON tasks (name, ts, uuid)",
    "CREATE INDEX tasks_worker ON tasks (worker, ts, uuid)",
    "CREATE INDEX tasks_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL",
    "CREATE INDEX tasks_unfinished ON tasks (ts) WHERE NOT ready",
    "CREATE VIRTUAL TABLE tasks_fts USING fts5(args, kwargs, result, exception, "
    "content='tasks', content_rowid='id', tokenize='trigram')",
    # Finished tasks only: one index insert per task instead of one per event
    # (unfinished ones, few, are scanned; see ``_search``).
    """CREATE TRIGGER tasks_fts_insert AFTER INSERT ON tasks WHEN new.ready BEGIN
        INSERT INTO tasks_fts (rowid, args, kwargs, result, exception)
        VALUES (new.id, new.args, new.kwargs, new.result, new.exception);
    END""",
    """CREATE TRIGGER tasks_fts_delete AFTER DELETE ON tasks WHEN old.ready BEGIN
        INSERT INTO tasks_fts (tasks_fts, rowid, args, kwargs, result, exception)
        VALUES ('delete', old.id, old.args, old.kwargs, old.result, old.exception);
    END""",
    f"""CREATE TRIGGER tasks_fts_update AFTER UPDATE OF {_FTS_COLUMNS} ON tasks
    WHEN (old.ready OR new.ready) AND (old.ready IS NOT new.ready OR {_FTS_CHANGED})
    BEGIN
        INSERT INTO tasks_fts (tasks_fts, rowid, args, kwargs, result, exception)
        SELECT 'delete', old.id, old.args, old.kwargs, old.result, old.exception
        WHERE old.ready;
        INSERT INTO tasks_fts (rowid, args, kwargs, result, exception)
        SELECT new.id, new.args, new.kwargs, new.result, new.exception
        WHERE new.ready;
    END""",
    """CREATE TABLE workers (
        hostname TEXT PRIMARY KEY,
        broker TEXT,
        last_seen REAL,
        last_heartbeat REAL,
        heartbeat_count INTEGER NOT NULL DEFAULT 0,
        offline INTEGER NOT NULL DEFAULT 0,
        ts REAL NOT NULL DEFAULT 0,
        raw TEXT
    )""",
    """CREATE TABLE events (
        key TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        hostname TEXT,
        uuid TEXT,
        timestamp REAL NOT NULL,
        data TEXT NOT NULL
    )""",
    "CREATE INDEX events_uuid ON events (uuid, timestamp)",
    "CREATE INDEX events_ts ON events (timestamp)",
]

#: Schema migrations, in order: ``(version, statements)``.
MIGRATIONS: list[tuple[int, list[str]]] = [(1, SCHEMA_V1)]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _upsert(table: str, columns: Sequence[str], key: str, rows: int = 1) -> str:
    marks = "(" + ", ".join("?" * len(columns)) + ")"
    sets = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([marks] * rows)} "
        f"ON CONFLICT ({key}) DO UPDATE SET {sets}"
    )


#: Rows per statement: 32,766 parameters at most (the default limit of older SQLite).
_ROWS_PER_STATEMENT = 32_766 // len(TASK_COLUMNS)


def _upsert_rows(
    con: sqlite3.Connection, table: str, columns: Sequence[str], key: str, rows: _Rows
) -> None:
    """Upsert *rows*, many per statement: the rows are bound at once and the
    database works without the interpreter lock (one statement per row would take
    it back for every row, contending with the event loop)."""
    step = _ROWS_PER_STATEMENT
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        sql = _upsert(table, columns, key, len(chunk))
        con.execute(sql, [value for row in chunk for value in row])


_INSERT_EVENTS = "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?)"
_SELECT_TASKS = f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks WHERE uuid IN "
_SELECT_WORKERS = f"SELECT {', '.join(WORKER_COLUMNS)} FROM workers WHERE hostname IN "
_CHUNK = 500
_SYNC_MODES = ("off", "normal", "full", "extra")


def _translate(exc: BaseException, doing: str) -> StoreError:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and (
        "locked" in text or "busy" in text or "unable to open" in text or "disk" in text
    ):
        return StoreConnectionError(f"SQLite {doing}: {text}")
    return StoreError(f"SQLite {doing}: {type(exc).__name__}: {text}")


def parse_sqlite_url(url: str) -> tuple[str, dict[str, str]]:
    """``(path, options)`` of ``sqlite:///relative.db`` / ``sqlite:////abs.db`` / ``sqlite:///:memory:``."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc:
        raise ConfigurationError(
            f"not a SQLite store URL: {url!r} (expected sqlite:///path.db or sqlite:////abs/path.db)"
        )
    path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not path:
        raise ConfigurationError(f"no database path in {url!r} (expected sqlite:///path.db)")
    return path, dict(parse_qsl(parts.query))


class SQLiteStore(EventStore):
    """An :class:`EventStore` on one SQLite file (see the module doc).

    :param url: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or
        ``sqlite:///:memory:``; query options ``synchronous`` (``normal``, the
        default: a commit survives the process being killed; ``full``: also a
        power cut) and ``events=1`` (keep the raw event log).
    :param event_log: keep every event in the ``events`` table too.
    """

    schemes = ("sqlite",)

    def __init__(self, url: str, *, event_log: bool = False) -> None:
        path, options = parse_sqlite_url(url)
        unknown = set(options) - {"synchronous", "events"}
        if unknown:
            raise ConfigurationError(
                f"unknown SQLite store option(s): {', '.join(sorted(unknown))}"
            )
        sync = options.get("synchronous", "normal").lower()
        if sync not in _SYNC_MODES:
            raise ConfigurationError(f"synchronous must be one of {', '.join(_SYNC_MODES)}")
        events = options.get("events", "").lower() in ("1", "true", "yes", "on")
        super().__init__(url, event_log=event_log or events)
        self.path = path
        self._sync = sync
        self._memory = path == ":memory:"
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._wlimiter = anyio.CapacityLimiter(1)
        self._rlimiter = self._wlimiter if self._memory else anyio.CapacityLimiter(1)
        self._version = 0
        self._data_version: int | None = None

    @property
    def schema_version(self) -> int:
        """The schema version of the open database."""
        return self._version

    async def _run(self, limiter: anyio.CapacityLimiter, fn: Callable[[], _T], doing: str) -> _T:
        try:
            return await anyio.to_thread.run_sync(fn, limiter=limiter)
        except (sqlite3.Error, UnicodeError, OverflowError, ValueError) as exc:
            raise _translate(exc, doing) from exc

    # -- lifecycle ------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if not self._memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA busy_timeout = 30000")
        if not self._memory:
            con.execute("PRAGMA journal_mode = WAL")
        con.execute(f"PRAGMA synchronous = {self._sync}")
        return con

    def _open_sync(self) -> None:
        writer = self._connect()
        try:
            self._version = self._migrate(writer)
            reader = writer if self._memory else self._connect()
        except BaseException:
            writer.close()
            raise
        self._writer, self._reader = writer, reader

    @staticmethod
    def _migrate(con: sqlite3.Connection) -> int:
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute(
                "CREATE TABLE IF NOT EXISTS aiocelev_meta (key TEXT PRIMARY KEY, value TEXT)"
            )
            row = con.execute(
                "SELECT value FROM aiocelev_meta WHERE key = 'schema_version'"
            ).fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the database has schema version {version}, newer than this aiocelev "
                    f"knows ({SCHEMA_VERSION}): upgrade aiocelev"
                )
            for target, statements in MIGRATIONS:
                if target > version:
                    for sql in statements:
                        con.execute(sql)
                    version = target
            con.execute(
                "INSERT OR REPLACE INTO aiocelev_meta VALUES ('schema_version', ?)", (str(version),)
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return version

    async def open(self) -> None:
        """Open (creating the file and schema, or migrating it) in WAL mode."""
        if self._writer is not None:
            return
        await self._run(self._wlimiter, self._open_sync, f"opening {self.path}")

    async def aclose(self) -> None:
        """Close both connections (after a write in progress)."""
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None

        def close() -> None:
            if reader is not None and reader is not writer:
                reader.close()
            if writer is not None:
                writer.close()

        with anyio.CancelScope(shield=True):
            await self._run(self._wlimiter, close, "closing")

    def _con(self, con: sqlite3.Connection | None) -> sqlite3.Connection:
        if con is None:
            raise StoreError("the store is not open")
        return con

    # -- writing ----------------------------------------------------------------

    async def _read_rows(
        self, uuids: Sequence[str], hosts: Sequence[str]
    ) -> tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]:
        if not uuids and not hosts:
            return [], []
        con = self._con(self._reader)
        return await self._run(
            self._rlimiter,
            lambda: (_select(con, _SELECT_TASKS, uuids), _select(con, _SELECT_WORKERS, hosts)),
            "reading rows",
        )

    async def _write(self, prepared: Prepared) -> tuple[int, int]:
        con = self._con(self._writer)
        done = await self._run(
            self._wlimiter, lambda: self._write_sync(con, prepared), "writing a batch"
        )
        if done is not None:
            return done
        # Another connection wrote, or the cache was dropped, since the batch was
        # prepared: replay it over rows read within the transaction.
        async with self._cache_lock:
            return await self._run(
                self._wlimiter, lambda: self._write_again_sync(con, prepared), "writing a batch"
            )

    def _write_sync(self, con: sqlite3.Connection, prepared: Prepared) -> tuple[int, int] | None:
        con.execute("BEGIN IMMEDIATE")
        try:
            version = con.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version or prepared.epoch != self._cache.epoch:
                con.execute("ROLLBACK")
                return None
            result = self._write_rows(con, prepared)
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return result

    def _write_again_sync(self, con: sqlite3.Connection, prepared: Prepared) -> tuple[int, int]:
        cache, batch = self._cache, prepared.batch
        con.execute("BEGIN IMMEDIATE")
        try:
            version = con.execute("PRAGMA data_version").fetchone()[0]
            if self._data_version is not None and version != self._data_version:
                self._conflicts += 1  # another connection wrote
            cache.clear()
            uuids, hosts = cache.misses(batch)
            again = batch.reduce(
                cache,
                _select(con, _SELECT_TASKS, uuids),
                _select(con, _SELECT_WORKERS, hosts),
                prepared.broker,
            )
            result = self._write_rows(con, again)
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        self._data_version = version
        return result

    def _write_rows(self, con: sqlite3.Connection, prepared: Prepared) -> tuple[int, int]:
        _upsert_rows(con, "tasks", TASK_COLUMNS, "uuid", prepared.task_rows)
        _upsert_rows(con, "workers", WORKER_COLUMNS, "hostname", prepared.worker_rows)
        if self.event_log:
            con.executemany(_INSERT_EVENTS, [event_row(f) for f in prepared.batch.events])
        return len(prepared.task_rows), len(prepared.worker_rows)

    async def _execute(self, sql: str, params: Sequence[Any]) -> int:
        con = self._con(self._writer)

        def execute() -> int:
            # Retention deletes rows the cache may hold.
            self._cache.clear()
            return int(con.execute(sql, params).rowcount)

        async with self._cache_lock:
            return await self._run(self._wlimiter, execute, "writing")

    # -- reading ------------------------------------------------------------------

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Mapping[str, Any]]:
        con = self._con(self._reader)
        rows: list[Mapping[str, Any]] = await self._run(
            self._rlimiter, lambda: con.execute(sql, params).fetchall(), "reading"
        )
        return rows

    def _search(self, where: Where, term: Term) -> None:
        not_ = "NOT " if term.negate else ""
        pattern = _escape_like(term.text)
        columns = (
            [term.field] if term.field is not None else ["args", "kwargs", "result", "exception"]
        )
        scan = " OR ".join(self._ilike(c) for c in columns)
        if len(term.text) < 3:
            # Shorter than a trigram: a scan of the rows the other filters leave.
            where.add(f"{not_}({scan})", *([pattern] * len(columns)))
            return
        # Finished tasks through the trigram index, unfinished ones (few) by a scan.
        phrase = '"' + term.text.replace('"', '""') + '"'
        if term.field is not None:
            phrase = f"{{{term.field}}} : {phrase}"
        where.add(
            f"{not_}(id IN (SELECT rowid FROM tasks_fts WHERE tasks_fts MATCH ?) "
            f"OR (NOT ready AND ({scan})))",
            phrase,
            *([pattern] * len(columns)),
        )


def _select(con: sqlite3.Connection, prefix: str, keys: Sequence[str]) -> list[Mapping[str, Any]]:
    rows: list[Mapping[str, Any]] = []
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        rows += con.execute(f"{prefix}({', '.join('?' * len(chunk))})", chunk).fetchall()
    return rows
