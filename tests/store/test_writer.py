"""StoreWriter and Ingest: batching, backpressure, acknowledgements after commit, refusals."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiocelev import EventDispatcher
from aiocelev.store import EventStore, Ingest, StoreWriter, open_store

from ._events import lifecycle


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[EventStore]:
    async with open_store(f"sqlite:///{tmp_path}/w.db") as store:
        yield store


def _db(store: EventStore) -> str:
    return store.path  # type: ignore[attr-defined,no-any-return]


@contextmanager
def database_locked(store: EventStore) -> Iterator[None]:
    """Another connection holds the write lock: the store's writes wait (a slow database)."""
    con = sqlite3.connect(_db(store), isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        con.execute("ROLLBACK")
        con.close()


def _rows(store: EventStore) -> int:
    con = sqlite3.connect(_db(store))
    try:
        return int(con.execute("SELECT count(*) FROM tasks").fetchone()[0])
    finally:
        con.close()


async def test_a_full_buffer_applies_backpressure_and_drops_nothing(
    sqlite_store: EventStore,
) -> None:
    events = [e for i in range(8) for e in lifecycle(f"bp-{i}", "SUCCESS", 10.0 + i)]  # 24 events
    done = anyio.Event()
    async with StoreWriter(sqlite_store, buffer_size=10, max_batch=4) as writer:
        async with anyio.create_task_group() as tg:
            with database_locked(sqlite_store):
                await writer.put(events[0])
                await anyio.wait_all_tasks_blocked()  # the writer took it, waits for the database

                async def produce() -> None:
                    for e in events[1:]:
                        await writer.put(e)
                    done.set()

                tg.start_soon(produce)
                await anyio.wait_all_tasks_blocked()
                assert not done.is_set()  # put() waits: the buffer is full
                stats = writer.statistics()
                # One event being written, one batch (max_batch) prepared behind it,
                # a full buffer: nothing more is taken.
                assert (stats.received, stats.committed, stats.pending) == (15, 0, 15)
            # The database is free again: the producer finishes.
            await done.wait()
        await writer.flush()
        stats = writer.statistics()
        assert stats.committed == stats.received == 24 and stats.rejected == 0
    assert _rows(sqlite_store) == 8
    assert await sqlite_store.count({"state": "SUCCESS"}) == 8


async def test_put_waits_then_everything_is_committed(sqlite_store: EventStore) -> None:
    events = [e for i in range(50) for e in lifecycle(f"all-{i}", "FAILURE", 10.0 + i)]
    async with StoreWriter(sqlite_store, buffer_size=7, max_batch=5) as writer:
        for e in events:
            await writer.put(e)
        await writer.flush()
        stats = writer.statistics()
        assert stats.committed == stats.received == 150 and stats.pending == 0
        assert stats.batches >= 150 // 5
    assert await sqlite_store.count({"state": "FAILURE"}) == 50


async def test_acks_are_released_only_after_the_commit(sqlite_store: EventStore) -> None:
    seen_rows: list[int] = []
    async with StoreWriter(sqlite_store) as writer:
        with database_locked(sqlite_store):
            for e in lifecycle("acked", "SUCCESS", 1.0):
                await writer.put(e)
            writer.put_ack(lambda: seen_rows.append(_rows(sqlite_store)))
            await anyio.wait_all_tasks_blocked()
            assert seen_rows == []  # not committed: not acknowledged
        await writer.flush()
        assert seen_rows == [1]  # acknowledged once the row was there
        writer.put_ack(lambda: seen_rows.append(-1))  # nothing pending: at once
        assert seen_rows == [1, -1]
        assert writer.statistics().acks == 2


async def test_an_event_the_database_refuses_is_counted_and_the_rest_written(
    sqlite_store: EventStore,
) -> None:
    con = sqlite3.connect(_db(sqlite_store))
    con.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON tasks WHEN new.name = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'refused by policy'); END"
    )
    con.commit()
    con.close()
    events: list[dict[str, Any]] = []
    for i in range(20):
        events += lifecycle(f"ok-{i}", "SUCCESS", 10.0 + i, "poison" if i == 13 else "proj.add")
    async with StoreWriter(sqlite_store, max_batch=1000) as writer:
        for e in events:
            await writer.put(e)
        await writer.flush()
        assert writer.statistics().rejected == 1
    assert sqlite_store.statistics().rejected == {"IntegrityError": 1}
    # Only the event creating the refused row failed; its later events still apply.
    assert await sqlite_store.count() == 20
    assert await sqlite_store.count({"state": "SUCCESS"}) == 20


async def test_ingest_from_a_broker(sqlite_store: EventStore) -> None:
    url = "memory://store-ingest"
    async with Ingest(url, sqlite_store, max_batch=50) as ingest:
        async with EventDispatcher(url, hostname="w@mem") as d:
            for i in range(100):
                await d.send(
                    "task-received", uuid=f"m-{i}", name="proj.add", args="()", kwargs="{}"
                )
                await d.send("task-succeeded", uuid=f"m-{i}", result="1", runtime=0.1)
            await d.send("worker-heartbeat", freq=2.0, active=0, processed=100)
        assert await ingest.run(limit=201) == 201
    stats = ingest.statistics()
    assert stats.events == 201 and stats.committed == 201 and stats.pending == 0
    assert stats.gaps == 0
    assert await sqlite_store.count({"state": "SUCCESS", "worker": "w@mem"}) == 100
    assert [w["hostname"] for w in await sqlite_store.workers()] == ["w@mem"]
    assert (await sqlite_store.get("m-7"))["broker"] == "memory://store-ingest"  # type: ignore[index]
