"""The PostgreSQL store (``postgresql://...``) on asyncpg.

asyncpg because it is asyncio-native, the fastest PostgreSQL driver for Python,
and speaks ``COPY`` directly: a batch goes to the server as one binary ``COPY``
into a temporary table and one ``INSERT ... ON CONFLICT DO UPDATE``, whatever
its size.

A batch is replayed over the writer's cache of the rows it wrote last (the rows
it does not hold are read first, without locks), then written in one
transaction on the writer's own connection: workers, then tasks, each in key
order, by ``INSERT ... ON CONFLICT DO UPDATE ... WHERE version = <cached>``.
Every writing transaction stamps the rows it writes with a random version, so a
row another writer changed meanwhile fails the check: it stays locked, is read
again and the batch's events are replayed over what it holds now.  Several
processes may write into one database and no update is lost.
Reads use the other connections of a small pool.  Text
search is a ``pg_trgm`` GIN index over the first 64 KiB of ``args``, ``kwargs``,
``result`` and ``exception`` (substring, case-insensitive), when the extension
can be created; without it the same queries scan.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio

from .._exceptions import (
    ConfigurationError,
    MissingDependencyError,
    StoreConnectionError,
    StoreError,
)
from .._url import mask_url
from ._base import EventStore, Where, _escape_like
from ._filter import Term
from ._rows import (
    TASK_COLUMNS,
    TEXT_FIELDS,
    TIME_FIELDS,
    WORKER_COLUMNS,
    Prepared,
    event_row,
)

try:
    import asyncpg  # type: ignore[import-untyped,import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - the postgres extra is missing
    asyncpg = None

__all__ = ["PostgresStore"]

logger = logging.getLogger("aiocelev.store")


SCHEMA_V1 = [
    f"""CREATE TABLE tasks (
        uuid text PRIMARY KEY,
        state text NOT NULL DEFAULT 'PENDING',
        ready boolean NOT NULL DEFAULT false,
        broker text,
        {", ".join(f"{c} text" for c in TEXT_FIELDS)},
        retries bigint,
        runtime double precision,
        {", ".join(f"{c} double precision" for c in TIME_FIELDS)},
        ts double precision NOT NULL DEFAULT 0,
        clock bigint,
        raw text,
        search text GENERATED ALWAYS AS (left(
            coalesce(args, '') || E'\\x1f' || coalesce(kwargs, '') || E'\\x1f' ||
            coalesce(result, '') || E'\\x1f' || coalesce(exception, ''), 65536)) STORED
    )""",
    "CREATE INDEX tasks_ts ON tasks (ts, uuid)",
    "CREATE INDEX tasks_state ON tasks (state, name, ts, uuid)",
    "CREATE INDEX tasks_name ON tasks (name, ts, uuid)",
    "CREATE INDEX tasks_worker ON tasks (worker, ts, uuid)",
    "CREATE INDEX tasks_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL",
    "CREATE INDEX tasks_unfinished ON tasks (ts) WHERE NOT ready",
    """CREATE TABLE workers (
        hostname text PRIMARY KEY,
        broker text,
        last_seen double precision,
        last_heartbeat double precision,
        heartbeat_count bigint NOT NULL DEFAULT 0,
        offline boolean NOT NULL DEFAULT false,
        ts double precision NOT NULL DEFAULT 0,
        raw text
    )""",
    """CREATE TABLE events (
        key text PRIMARY KEY,
        type text NOT NULL,
        hostname text,
        uuid text,
        timestamp double precision NOT NULL,
        data text NOT NULL
    )""",
    "CREATE INDEX events_uuid ON events (uuid, timestamp)",
    "CREATE INDEX events_ts ON events (timestamp)",
]
_TRIGRAM_INDEX = "CREATE INDEX IF NOT EXISTS tasks_search ON tasks USING gin (search gin_trgm_ops)"

#: Schema migrations, in order: ``(version, statements)``.
SCHEMA_V2 = [
    # A row's version: a random number per writing transaction, checked by the
    # next writer so that rows need no reading back while nobody else wrote them.
    "ALTER TABLE tasks ADD COLUMN version bigint NOT NULL DEFAULT 0",
    "ALTER TABLE workers ADD COLUMN version bigint NOT NULL DEFAULT 0",
]
MIGRATIONS: list[tuple[int, list[str]]] = [(1, SCHEMA_V1), (2, SCHEMA_V2)]
SCHEMA_VERSION = MIGRATIONS[-1][0]

_OPTIONS = {"schema", "events", "pool_size"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_PLACEHOLDER = re.compile(r"\?")


def _numbered(sql: str) -> str:
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _m: f"${next(counter)}", sql)


def _update(table: str, temp: str, columns: Sequence[str], key: str) -> str:
    cols = [c for c in columns if c != key]
    return (
        f"UPDATE {table} AS t SET ({', '.join(cols)}) = ({', '.join('s.' + c for c in cols)}) "
        f"FROM {temp} AS s WHERE t.{key} = s.{key}"
    )


_TASK_IN = (*TASK_COLUMNS, "version")
_WORKER_IN = (*WORKER_COLUMNS, "version")
_UPDATE_TASKS = _update("tasks", "aiocelev_tasks_in", _TASK_IN, "uuid")
_UPDATE_WORKERS = _update("workers", "aiocelev_workers_in", _WORKER_IN, "hostname")
_SELECT_TASKS = f"SELECT {', '.join(_TASK_IN)} FROM tasks WHERE uuid = ANY($1::text[])"
_SELECT_WORKERS = f"SELECT {', '.join(_WORKER_IN)} FROM workers WHERE hostname = ANY($1::text[])"


def _upsert(table: str, temp: str, columns: Sequence[str]) -> str:
    # New rows and rows still at the version they were cached at are written; the
    # others (another writer was there) are left locked, and not returned.
    key, rest = columns[0], columns[1:]
    return (
        f"INSERT INTO {table} ({', '.join(columns)}, version) "
        f"SELECT {', '.join(columns)}, coalesce(version, $1) FROM {temp} ORDER BY {key} "
        f"ON CONFLICT ({key}) DO UPDATE SET ({', '.join(rest)}, version) = "
        f"({', '.join('excluded.' + c for c in rest)}, $1) "
        f"WHERE {table}.version = excluded.version "
        f"RETURNING {key}, version"
    )


# Task rows are many: the upsert counts them, and only when some were not written
# (the rare case) are those found.
_UPSERT_TASKS = (
    f"WITH written AS ({_upsert('tasks', 'aiocelev_tasks_in', TASK_COLUMNS)}) "
    "SELECT count(*) FROM written"
)
_STALE_TASKS = (
    "SELECT s.uuid FROM aiocelev_tasks_in AS s WHERE NOT EXISTS "
    "(SELECT FROM tasks AS t WHERE t.uuid = s.uuid AND t.version = $1)"
)
_UPSERT_WORKERS = _upsert("workers", "aiocelev_workers_in", WORKER_COLUMNS)


def _translate(exc: BaseException, doing: str) -> StoreError:
    if asyncpg is not None and isinstance(
        exc,
        (
            OSError,
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            asyncpg.CannotConnectNowError,
            asyncpg.TooManyConnectionsError,
            asyncpg.DeadlockDetectedError,
            asyncpg.SerializationError,
            asyncpg.AdminShutdownError,
        ),
    ):
        return StoreConnectionError(f"PostgreSQL {doing}: {mask_url(str(exc))}")
    if isinstance(exc, (OSError, TimeoutError)):
        return StoreConnectionError(f"PostgreSQL {doing}: {mask_url(str(exc))}")
    return StoreError(f"PostgreSQL {doing}: {type(exc).__name__}: {mask_url(str(exc))}")


def _errors() -> tuple[type[BaseException], ...]:
    base: tuple[type[BaseException], ...] = (OSError, TimeoutError, UnicodeError, OverflowError)
    if asyncpg is None:  # pragma: no cover
        return base
    return (*base, asyncpg.PostgresError, asyncpg.InterfaceError)


class PostgresStore(EventStore):
    """An :class:`EventStore` on PostgreSQL (see the module doc).

    :param url: ``postgresql://user:password@host:port/database`` (libpq's
        parameters such as ``sslmode`` pass through) plus the options
        ``schema`` (a schema of its own, created if needed; default: the
        server's search path), ``pool_size`` (read connections, default 4) and
        ``events=1`` (keep the raw event log).
    :param event_log: keep every event in the ``events`` table too.
    """

    schemes = ("postgresql", "postgres")

    def __init__(self, url: str, *, event_log: bool = False) -> None:
        parts = urlsplit(url)
        params = parse_qsl(parts.query)
        options = {k: v for k, v in params if k in _OPTIONS}
        rest = [(k, v) for k, v in params if k not in _OPTIONS]
        schema = options.get("schema")
        if schema is not None and not _NAME.match(schema):
            raise ConfigurationError(f"invalid schema name {schema!r}")
        try:
            pool_size = int(options.get("pool_size", "4"))
        except ValueError:
            raise ConfigurationError("pool_size must be an integer") from None
        if pool_size < 1:
            raise ConfigurationError("pool_size must be at least 1")
        events = options.get("events", "").lower() in ("1", "true", "yes", "on")
        super().__init__(url, event_log=event_log or events)
        self.schema = schema
        self._dsn = urlunsplit(parts._replace(query=urlencode(rest)))
        self._pool_size = pool_size
        self._pool: Any = None
        self._wconn: Any = None
        self._version = 0
        self.trigram = False

    @property
    def schema_version(self) -> int:
        """The schema version of the open database."""
        return self._version

    # -- lifecycle ------------------------------------------------------------

    async def open(self) -> None:
        """Connect (a pool, plus the writer's connection) and create or migrate the schema."""
        if self._pool is not None:
            return
        if asyncpg is None:
            raise MissingDependencyError(
                "the PostgreSQL store needs asyncpg: pip install 'aiocelev[postgres]'"
            )
        # Every statement is planned for its own parameters.  asyncpg prepares
        # statements, and PostgreSQL switches a prepared statement to a generic plan
        # after five runs if that looks no worse: planned while a table was nearly
        # empty, "uuid = ANY($1)" became a sequential scan that each batch then
        # paid for as the table grew (a prepare step 50x slower, seen live).
        settings = {"application_name": "aiocelev", "plan_cache_mode": "force_custom_plan"}
        if self.schema is not None:
            settings["search_path"] = f'"{self.schema}", public'
        try:
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._pool_size + 1,
                server_settings=settings,
                timeout=10.0,
            )
        except _errors() as exc:
            raise _translate(exc, f"connecting to {self.url}") from exc
        try:
            async with pool.acquire() as conn:
                await self._migrate(conn)
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, _errors()):
                raise _translate(exc, "migrating the schema") from exc
            raise
        self._pool = pool

    async def _migrate(self, conn: Any) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('aiocelev.store.migrate'))")
            if self.schema is not None:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS aiocelev_meta (key text PRIMARY KEY, value text)"
            )
            value = await conn.fetchval(
                "SELECT value FROM aiocelev_meta WHERE key = 'schema_version'"
            )
            version = int(value) if value else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the database has schema version {version}, newer than this aiocelev "
                    f"knows ({SCHEMA_VERSION}): upgrade aiocelev"
                )
            for target, statements in MIGRATIONS:
                if target > version:
                    for sql in statements:
                        await conn.execute(sql)
                    version = target
            await conn.execute(
                "INSERT INTO aiocelev_meta VALUES ('schema_version', $1) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                str(version),
            )
            self.trigram = await self._trigram(conn)
        self._version = version

    @staticmethod
    async def _trigram(conn: Any) -> bool:
        try:
            async with conn.transaction():
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public")
                await conn.execute(_TRIGRAM_INDEX)
            return True
        except asyncpg.PostgresError as exc:
            logger.warning("no trigram index for text search (searches will scan): %s", exc)
            return False

    async def aclose(self) -> None:
        """Close the connections (after a write in progress)."""
        pool, self._pool = self._pool, None
        conn, self._wconn = self._wconn, None
        if pool is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                if conn is not None:
                    await pool.release(conn)
                await pool.close()
            except _errors():
                pool.terminate()

    def _need_pool(self) -> Any:
        if self._pool is None:
            raise StoreError("the store is not open")
        return self._pool

    async def _writer(self) -> Any:
        conn = self._wconn
        if conn is not None and not _closed(conn):
            return conn
        pool = self._need_pool()
        if conn is not None:
            self._wconn = None
            await _give_back(pool, conn)
        conn = await pool.acquire()
        try:
            # The columns of the rows, no constraint: a new task has no version yet.
            await conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS aiocelev_tasks_in ON COMMIT DELETE ROWS AS "
                f"SELECT {', '.join(_TASK_IN)} FROM tasks WITH NO DATA"
            )
            await conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS aiocelev_workers_in ON COMMIT DELETE ROWS AS "
                f"SELECT {', '.join(_WORKER_IN)} FROM workers WITH NO DATA"
            )
            await conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS aiocelev_events_in (LIKE events) "
                "ON COMMIT DELETE ROWS"
            )
        except BaseException:
            await pool.release(conn)
            raise
        self._wconn = conn
        return conn

    # -- writing ----------------------------------------------------------------

    async def _read_rows(
        self, uuids: Sequence[str], hosts: Sequence[str]
    ) -> tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]:
        # Not locked: the version check of the write catches a row changed meanwhile.
        if not uuids and not hosts:
            return [], []
        pool = self._need_pool()
        try:
            async with pool.acquire() as conn:
                tasks = await conn.fetch(_SELECT_TASKS, uuids) if uuids else []
                workers = await conn.fetch(_SELECT_WORKERS, hosts) if hosts else []
        except _errors() as exc:
            raise _translate(exc, "reading rows") from exc
        return tasks, workers

    async def _write(self, prepared: Prepared) -> tuple[int, int]:
        if prepared.epoch != self._cache.epoch:
            prepared = await self._prepare_again(prepared)
        done = False
        conn = None
        try:
            conn = await self._writer()
            result = await self._write_batch(conn, prepared)
            done = True
            return result
        except _errors() as exc:
            done = not (conn is not None and _closed(conn))
            raise _translate(exc, "writing a batch") from exc
        finally:
            if not done and conn is not None and self._wconn is conn:
                # Cancelled mid-transaction, or the connection is gone: drop it (the
                # server rolls back).
                self._wconn = None
                with anyio.CancelScope(shield=True):
                    await _give_back(self._need_pool(), conn, terminate=True)

    async def _write_batch(self, conn: Any, prepared: Prepared) -> tuple[int, int]:
        token = prepared.token
        task_rows, worker_rows = prepared.task_rows, prepared.worker_rows
        versions: dict[str, int] | None = None  # None: every task row at the token
        wversions: dict[str, int] = {}
        async with conn.transaction():
            # Workers first, then tasks, each in key order: no deadlock between writers.
            if worker_rows:
                await conn.copy_records_to_table(
                    "aiocelev_workers_in",
                    records=[
                        _worker_record(r, v)
                        for r, v in zip(worker_rows, prepared.worker_expected, strict=True)
                    ],
                    columns=_WORKER_IN,
                )
                wversions = {r[0]: r[1] for r in await conn.fetch(_UPSERT_WORKERS, token)}
            if task_rows:
                await conn.copy_records_to_table(
                    "aiocelev_tasks_in",
                    records=[
                        (*r, v) for r, v in zip(task_rows, prepared.task_expected, strict=True)
                    ],
                    columns=_TASK_IN,
                )
                if await conn.fetchval(_UPSERT_TASKS, token) < len(task_rows):
                    stale = {r[0] for r in await conn.fetch(_STALE_TASKS, token)}
                    versions = {r[0]: token for r in task_rows if r[0] not in stale}
            if versions is not None or len(wversions) < len(worker_rows):
                self._conflicts += await self._rewrite(
                    conn,
                    prepared,
                    {r[0]: token for r in task_rows} if versions is None else versions,
                    wversions,
                )
            if self.event_log:
                await conn.copy_records_to_table(
                    "aiocelev_events_in", records=[event_row(f) for f in prepared.batch.events]
                )
                await conn.execute(
                    "INSERT INTO events SELECT * FROM aiocelev_events_in ON CONFLICT DO NOTHING"
                )
        self._cache.settle(prepared, versions, wversions)
        return len(task_rows), len(worker_rows)

    @staticmethod
    async def _rewrite(
        conn: Any, prepared: Prepared, versions: Mapping[str, int], wversions: Mapping[str, int]
    ) -> int:
        """Rows another writer changed since they were cached: replay the batch over them.

        The upsert left them locked: read them again and write the batch's
        events over what they hold now, under a version of their own (a batch
        prepared over the stale copy fails its check in turn).
        """
        stale = [r[0] for r in prepared.task_rows if r[0] not in versions]
        wstale = [r[0] for r in prepared.worker_rows if r[0] not in wversions]
        tasks = await conn.fetch(_SELECT_TASKS, stale) if stale else []
        workers = await conn.fetch(_SELECT_WORKERS, wstale) if wstale else []
        task_rows, worker_rows = prepared.batch.replay(
            stale, tasks, wstale, workers, prepared.broker
        )
        token = secrets.randbits(63)
        if task_rows:
            await conn.execute("DELETE FROM aiocelev_tasks_in")
            await conn.copy_records_to_table(
                "aiocelev_tasks_in", records=[(*r, token) for r in task_rows], columns=_TASK_IN
            )
            await conn.execute(_UPDATE_TASKS)
        if worker_rows:
            await conn.execute("DELETE FROM aiocelev_workers_in")
            await conn.copy_records_to_table(
                "aiocelev_workers_in",
                records=[_worker_record(r, token) for r in worker_rows],
                columns=_WORKER_IN,
            )
            await conn.execute(_UPDATE_WORKERS)
        return len(stale) + len(wstale)

    async def _execute(self, sql: str, params: Sequence[Any]) -> int:
        pool = self._need_pool()
        try:
            async with pool.acquire() as conn:
                status: str = await conn.execute(_numbered(sql), *params)
        except _errors() as exc:
            raise _translate(exc, "writing") from exc
        finally:
            # Retention deletes rows the cache may hold.
            self._cache.clear()
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    # -- reading ------------------------------------------------------------------

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Mapping[str, Any]]:
        pool = self._need_pool()
        try:
            async with pool.acquire() as conn:
                rows: list[Mapping[str, Any]] = await conn.fetch(_numbered(sql), *params)
        except _errors() as exc:
            raise _translate(exc, "reading") from exc
        return rows

    def _ilike(self, column: str) -> str:
        return f"coalesce({column}, '') ILIKE ? ESCAPE '\\'"

    def _search(self, where: Where, term: Term) -> None:
        not_ = "NOT " if term.negate else ""
        pattern = _escape_like(term.text)
        if term.field is None:
            where.add(f"{not_}(search ILIKE ? ESCAPE '\\')", pattern)
        elif term.negate:
            where.add(f"NOT {self._ilike(term.field)}", pattern)
        else:
            # The indexed expression narrows, the column decides.
            where.add(f"search ILIKE ? ESCAPE '\\' AND {self._ilike(term.field)}", pattern, pattern)


def _closed(conn: Any) -> bool:
    """Whether the writer's connection is unusable (closed; or lost, and the pool
    already took it back)."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


async def _give_back(pool: Any, conn: Any, *, terminate: bool = False) -> None:
    """Return the writer's connection to the pool, whatever state it is in."""
    try:
        if terminate:
            conn.terminate()
        await pool.release(conn)
    except (asyncpg.InterfaceError, OSError):
        pass  # lost: the pool already took it back


def _worker_record(row: tuple[Any, ...], version: int | None) -> tuple[Any, ...]:
    hostname, broker, last_seen, last_heartbeat, count, offline, ts, raw = row
    return (
        hostname,
        broker,
        None if last_seen is None else float(last_seen),
        None if last_heartbeat is None else float(last_heartbeat),
        count,
        offline,
        ts,
        raw,
        version,
    )
