"""The store conformance suite: every backend (SQLite, PostgreSQL) behaves the same.

Each test runs once per backend (``store_url`` / ``store`` fixtures); the
expected rows always come from :class:`~aiocelev.ClusterState` fed the same
events, so the store and the in-memory state can never disagree unnoticed.
"""

from __future__ import annotations

import itertools
import random
import sys
from typing import Any

import anyio
import pytest

from aiocelev import ClusterState
from aiocelev.dashboard._query import TaskQuery
from aiocelev.store import (
    EventStore,
    QueryError,
    StoreError,
    StoreWriter,
    TaskFilter,
    _rows,
    open_store,
)

from ._events import comparable, ev, expected, lifecycle


async def all_tasks(store: EventStore, flt: Any = None, limit: int = 37) -> list[dict[str, Any]]:
    """Every task matching *flt*, page after page."""
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await store.query(flt, cursor=cursor, limit=limit)
        out += page.tasks
        cursor = page.cursor
        if cursor is None:
            return out


def latest_schema(store: EventStore) -> int:
    version: int = sys.modules[type(store).__module__].SCHEMA_VERSION
    return version


async def test_schema_is_versioned_and_reopening_keeps_the_data(store_url: str) -> None:
    async with open_store(store_url) as store:
        assert store.schema_version == latest_schema(store) >= 1
        await store.write(lifecycle("t1", "SUCCESS", 10.0))
    async with open_store(store_url) as store:
        assert store.schema_version == latest_schema(store)
        task = await store.get("t1")
        assert task is not None and task["state"] == "SUCCESS" and task["result"] == "3"


@pytest.mark.parametrize("per_event", [False, True], ids=["one-batch", "one-event-per-batch"])
async def test_every_delivery_order_gives_the_rows_cluster_state_gives(
    store: EventStore, per_event: bool
) -> None:
    """Celery's precedence for out-of-order events, retries included, across batches."""
    base = [
        ev("task-sent", None, 0.5, "client@h", name="proj.add", args="(1,)", kwargs="{}"),
        ev("task-received", None, 1.0, name="proj.add", args="(1,)", kwargs="{}", retries=0),
        ev("task-started", None, 2.0),
        ev("task-retried", None, 3.0, exception="RuntimeError('x')"),
        ev("task-succeeded", None, 4.0, result="2", runtime=0.5),
    ]
    orders = list(itertools.permutations(range(len(base))))
    random.Random(13).shuffle(orders)
    everything: list[dict[str, Any]] = []
    for n, order in enumerate(orders[:40]):
        events = [{**base[i], "uuid": f"perm-{n}"} for i in order]
        everything += events
        if per_event:
            for e in events:
                await store.write([e])
        else:
            await store.write(events)
    state = expected(everything)
    for uuid, t in state.tasks.items():
        stored = await store.get(uuid)
        assert stored is not None
        assert comparable(stored) == comparable(t.to_dict()), uuid


async def test_writing_the_same_events_again_changes_no_task_row(store: EventStore) -> None:
    events: list[dict[str, Any]] = []
    for i, outcome in enumerate(["SUCCESS", "FAILURE", "RETRY", "REVOKED", "PROGRESS"] * 4):
        events += lifecycle(f"idem-{i}", outcome, 100.0 + i)
    await store.write(events)
    before = await all_tasks(store)
    await store.write(events)
    for chunk in (events[:7], events[7:30], events[30:]):
        await store.write(chunk)
    assert await all_tasks(store) == before
    assert len(before) == 20


async def test_hostile_values_are_stored_and_returned_intact(store: EventStore) -> None:
    huge = "x" * (3 * 1024 * 1024)
    hostile: dict[str, Any] = {
        "nul": ev("task-received", "nul\x00id", 1.0, name="a\x00b", args="(\x00, '\x00')", kwargs="{}"),
        "surrogates": ev("task-failed", "sur", 2.0, exception="bad \udcff\ud800 byte", traceback="\udc80"),
        "huge": ev("task-received", "huge", 3.0, name="proj.big", args=huge, kwargs=huge[:1000]),
        "non-string": ev("task-succeeded", "obj", 4.0, result={"a": [1, 2.5, None, "\x00"]}, runtime="fast"),
        "big-ints": ev("task-received", "ints", 5.0, retries=2**80, eta=12, name="proj.n"),
        "unicode": ev("task-received", "uni", 6.0, name="proj.ünï", args="('日本', '🙂')", kwargs="{}"),
        "custom": ev("task-weird\x00state", "cust", 7.0, payload=["\udcff", 2**70]),
        "worker": ev("worker-heartbeat", None, 8.0, "host\x00\udcff@x", freq=2.0, active=0, processed=1),
    }  # fmt: skip
    await store.write(hostile.values())
    state = expected(list(hostile.values()))
    for uuid, t in state.tasks.items():
        stored = await store.get(uuid)
        assert stored is not None, uuid
        assert comparable(stored) == comparable(t.to_dict()), uuid
    assert (await store.get("huge"))["args"] == huge  # type: ignore[index]
    assert [t["uuid"] for t in (await store.query({"search": "\x00,"})).tasks] == ["nul\x00id"]
    assert [t["uuid"] for t in (await store.query({"search": "日本"})).tasks] == ["uni"]
    hosts = {w["hostname"] for w in await store.workers()}
    assert "host\x00\udcff@x" in hosts
    assert store.statistics().rejected == {}


async def test_a_writer_whose_cache_overflows_reads_back_what_it_dropped(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_rows, "CACHE_TASKS", 40)
    events: list[dict[str, Any]] = []
    for i in range(300):
        events += lifecycle(f"over-{i}", "SUCCESS" if i % 3 else "RETRY", 10.0 + i)
    # Each task's events over several batches, many tasks per batch.
    events.sort(key=lambda e: (e["timestamp"] // 4, e["type"]))
    async with open_store(store_url) as store:
        for start in range(0, len(events), 50):
            await store.write(events[start : start + 50])
        assert store.statistics().conflicts == 0  # nobody else wrote
        state = expected(events)
        for uuid, t in state.tasks.items():
            stored = await store.get(uuid)
            assert stored is not None and comparable(stored) == comparable(t.to_dict()), uuid


async def test_a_writer_whose_cache_is_full_keeps_its_unfinished_tasks(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Making room drops finished rows first: tasks still running stay cached (never
    read back), and the cache does not start afresh."""
    monkeypatch.setattr(_rows, "CACHE_TASKS", 40)
    long = [f"long-{i}" for i in range(5)]
    events = [e for uuid in long for e in lifecycle(uuid, "SUCCESS", 1.0)[:2]]
    for i in range(200):
        events += lifecycle(f"short-{i}", "FAILURE" if i % 7 == 0 else "SUCCESS", 2.0 + i)
    events += [e for uuid in long for e in lifecycle(uuid, "SUCCESS", 1.0)[2:]]
    async with open_store(store_url) as store:
        read: list[str] = []
        read_rows = store._read_rows

        async def spy(uuids: Any, hosts: Any) -> Any:
            tasks, workers = await read_rows(uuids, hosts)
            read.extend(row["uuid"] for row in tasks)
            return tasks, workers

        monkeypatch.setattr(store, "_read_rows", spy)
        await store.write(events[:30])
        epoch = store._cache.epoch
        for start in range(30, len(events), 30):
            await store.write(events[start : start + 30])
        assert store._cache.epoch == epoch  # made room each time, never started afresh
        assert len(store._cache.state.tasks) <= 40
        assert not set(read) & set(long)
        for uuid, t in expected(events).tasks.items():
            stored = await store.get(uuid)
            assert stored is not None and comparable(stored) == comparable(t.to_dict()), uuid


async def test_writers_taking_turns_on_one_database_lose_no_update(store_url: str) -> None:
    """Each writer caches the rows it wrote; the other one's writes make them stale."""
    events: list[dict[str, Any]] = []
    for i, outcome in enumerate(["SUCCESS", "FAILURE", "RETRY", "REVOKED", "PROGRESS"] * 6):
        events += lifecycle(f"turn-{i}", outcome, 10.0 + i, args=f"({i},)")
    random.Random(5).shuffle(events)
    async with open_store(store_url) as a, open_store(store_url) as b:
        for n, start in enumerate(range(0, len(events), 7)):
            await (a, b)[n % 2].write(events[start : start + 7])
        assert a.statistics().conflicts > 0 and b.statistics().conflicts > 0
        state = expected(events)
        for uuid, t in state.tasks.items():
            stored = await a.get(uuid)
            assert stored is not None and comparable(stored) == comparable(t.to_dict()), uuid


async def test_concurrent_writers_on_one_database_lose_no_update(store_url: str) -> None:
    """Two writers at once on the same tasks: one sends what the workers received,
    the other how the tasks ended; every row ends with both (in either commit order)."""
    received = [
        ev("task-received", f"both-{i}", 1.0 + i, name="proj.add", args=f"({i},)", kwargs="{}")
        for i in range(300)
    ]
    ended = [ev("task-succeeded", f"both-{i}", 2.0 + i, result=str(i)) for i in range(300)]
    want = expected(received + ended)
    assert {u: t.to_dict() for u, t in expected(ended + received).tasks.items()} == {
        u: t.to_dict() for u, t in want.tasks.items()
    }  # the outcome does not depend on the order

    async def write(store: EventStore, events: list[dict[str, Any]]) -> None:
        for start in range(0, len(events), 11):
            await store.write(events[start : start + 11])
            await anyio.sleep(0)

    async with open_store(store_url) as a, open_store(store_url) as b:
        # Both have every task cached at a version the other one will change.
        await a.write(ev("task-sent", f"both-{i}", 0.5 + i) for i in range(300))
        await b.write(ev("task-sent", f"both-{i}", 0.5 + i) for i in range(300))
        async with anyio.create_task_group() as tg:
            tg.start_soon(write, a, received)
            tg.start_soon(write, b, ended)
        assert a.statistics().conflicts + b.statistics().conflicts > 0
        for uuid, t in expected(
            [ev("task-sent", f"both-{i}", 0.5 + i) for i in range(300)] + received + ended
        ).tasks.items():
            stored = await b.get(uuid)
            assert stored is not None and comparable(stored) == comparable(t.to_dict()), uuid


async def test_writers_preparing_ahead_on_one_database_lose_no_update(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two StoreWriters (each prepares its next batch while the previous one is written)
    on the same tasks and worker, with a cache that keeps starting afresh (small, and
    emptied by retention) : every row ends as ClusterState has it, no count twice."""
    monkeypatch.setattr(_rows, "CACHE_TASKS", 60)
    first: list[dict[str, Any]] = []  # a task's two events often in consecutive batches
    for i in range(600):
        first.append(ev("task-received", f"pipe-{i}", 1.0 + i, name="proj.add", args=f"({i},)"))
        if i >= 4:
            first.append(ev("task-started", f"pipe-{i - 4}", 1.5 + i))
        if i % 5 == 0:
            first.append(ev("worker-heartbeat", None, 1.0 + i, freq=2.0, active=1))
    second = [ev("task-succeeded", f"pipe-{i}", 700.0 + i, result=str(i)) for i in range(600)]

    async def put(writer: StoreWriter, events: list[dict[str, Any]]) -> None:
        for e in events:
            await writer.put(e)
        await writer.flush()

    async with open_store(store_url) as a, open_store(store_url) as b:
        async with (
            StoreWriter(a, max_batch=23, prune_every=0.005, max_age=1e12) as wa,
            StoreWriter(b, max_batch=17, prune_every=0.007, max_age=1e12) as wb,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(put, wa, first)
            tg.start_soon(put, wb, second)
        want = expected(first + second)
        for uuid, t in want.tasks.items():
            stored = await b.get(uuid)
            assert stored is not None, uuid
            got, exp = comparable(stored), comparable(t.to_dict())
            for key in ("state", "name", "args", "result", "received", "started", "succeeded"):
                assert got[key] == exp[key], (uuid, key)
        (worker,) = await a.workers()
        assert worker["heartbeat_count"] == 120
        assert worker["event_counts"] == want.workers["w1@h"].event_counts


async def test_ids_that_differ_only_in_unclean_characters_share_a_row(store: EventStore) -> None:
    """Two task ids (and hostnames) equal once NUL and lone surrogates are replaced."""
    await store.write([
        ev("task-received", "a\x00", 1.0, "h\x00@x", name="first", args="()", kwargs="{}"),
        ev("task-received", "a\ufffd", 2.0, "h\ufffd@x", name="second", args="()", kwargs="{}"),
    ])  # fmt: skip
    assert store.statistics().rejected == {}
    assert await store.count() == 1
    assert len(await store.workers()) == 1


async def test_events_that_change_nothing_are_counted(store: EventStore) -> None:
    await store.write(
        [{"no": "type"}, ev("task-received", None, 1.0), ev("task-received", "ok", 1.0)]
    )
    stats = store.statistics()
    assert stats.ignored == 2
    assert await store.count() == 1


@pytest.fixture
async def populated(store: EventStore) -> tuple[EventStore, ClusterState]:
    rng = random.Random(7)
    events: list[dict[str, Any]] = []
    outcomes = ["SUCCESS", "FAILURE", "RETRY", "REVOKED", "PROGRESS", "STARTED"]
    for i in range(150):
        name = rng.choice(["proj.add", "proj.mul", "proj.mail"])
        host = rng.choice(["w1@h", "w2@h", "w3@h"])
        outcome = rng.choice(outcomes)
        exc = rng.choice(["ValueError('bad input')", "KeyError('missing')", "Timeout('slow db')"])
        args = f"({i}, {rng.choice(['alpha', 'beta', 'gamma'])!r})"
        parent = f"task-{i // 10}" if i % 10 else None
        events += lifecycle(
            f"task-{i}", outcome, 1000.0 + i * 1.5 + rng.random(), name, host,
            args=args, exception=exc, result=f"'{rng.choice(['ok', 'done'])}-{i}'", parent_id=parent,
        )  # fmt: skip
    rng.shuffle(events)
    for start in range(0, len(events), 97):
        await store.write(events[start : start + 97])
    return store, expected(events)


FILTERS = [
    {},
    {"state": "FAILURE"},
    {"state": "success"},
    {"taskname": "proj.add"},
    {"name": "proj.mail", "state": "FAILURE"},
    {"workername": "w2@h"},
    {"worker": "w3@h", "state": "STARTED"},
    {"received_start": "1050", "received_end": "1120.5"},
    {"started_start": "1100"},
    {"search": "valueerror"},
    {"search": "alpha -gamma"},
    {"search": "exception:keyerror"},
    {"search": "args:beta result:done"},
    {"search": "-exception:timeout"},
    {"search": '"bad input"'},
    {"search": "ok"},
    {"search": "name:mul state:fail"},
    {"state": "FAILURE", "taskname": "proj.add", "search": "-missing"},
    {"search": "uuid:task-1"},
]


@pytest.mark.parametrize("params", FILTERS, ids=[repr(f) for f in FILTERS])
async def test_filters_match_the_dashboard_language_and_cursor_pages(
    populated: tuple[EventStore, ClusterState], params: dict[str, str]
) -> None:
    store, state = populated
    _total, want = TaskQuery.from_params(params).run(state)
    got = await all_tasks(store, params)
    assert sorted(t["uuid"] for t in got) == sorted(t.uuid for t in want)
    assert len({t["uuid"] for t in got}) == len(got)  # no page repeats a task
    keys = [(t["timestamp"], t["uuid"]) for t in got]
    assert keys == sorted(keys, reverse=True)  # newest first
    assert await store.count(params) == len(want)
    assert await store.count(TaskFilter.from_params(params)) == len(want)


async def test_pages_through_many_tasks_of_equal_timestamps(store: EventStore) -> None:
    """Pages of every filter the indexes serve, over rows sharing their ``ts`` (the
    uuid orders the rows of one timestamp): newest first, none repeated, none missed."""
    events: list[dict[str, Any]] = []
    for i in range(240):
        outcome = "FAILURE" if i % 3 == 0 else "SUCCESS"
        events += lifecycle(f"eq-{i:03}", outcome, 10.0 + i // 60, name=f"proj.t{i % 2}",
                            host=f"w{i % 4}@h")  # fmt: skip
    await store.write(events)
    state = expected(events)
    for params in (
        {},
        {"name": "proj.t1"},
        {"worker": "w2@h"},
        {"state": "FAILURE"},
        {"state": "FAILURE", "name": "proj.t0"},
        {"state": "SUCCESS", "worker": "w1@h"},
    ):
        _total, want = TaskQuery.from_params(params).run(state)
        got = await all_tasks(store, params, limit=7)
        keys = [(t["timestamp"], t["uuid"]) for t in got]
        assert keys == sorted({(t.timestamp, t.uuid) for t in want}, reverse=True), params


async def test_children_and_task_shape(populated: tuple[EventStore, ClusterState]) -> None:
    store, state = populated
    parent = await store.get("task-3")
    assert parent is not None
    assert sorted(parent["children"]) == sorted(state.tasks["task-3"].children)
    assert set(parent) == set(state.tasks["task-3"].to_dict()) | {"broker"}
    assert await store.get("no-such-task") is None


async def test_bad_cursor_is_a_query_error(store: EventStore) -> None:
    with pytest.raises(QueryError):
        await store.query(cursor="not-a-cursor")
    with pytest.raises(QueryError):
        await store.query({"received_start": "yesterday-ish"})


async def test_workers_unfinished_and_restore(store: EventStore) -> None:
    events = [
        ev("worker-online", None, 1.0, "w1@h", freq=2.0, pid=10, sw_ident="py-celery"),
        ev("worker-heartbeat", None, 3.0, "w1@h", freq=2.0, active=1, processed=4, pid=10),
        ev("worker-heartbeat", None, 5.0, "w1@h", freq=2.0, active=1, processed=5, pid=10),
        ev("worker-online", None, 2.0, "w2@h", freq=5.0, pid=11),
        ev("worker-offline", None, 6.0, "w2@h", pid=11),
        *lifecycle("done", "SUCCESS", 2.0),
        *lifecycle("running", "STARTED", 4.0),
        ev("task-received", "waiting", 4.5, name="proj.add", args="()", kwargs="{}"),
    ]
    await store.write(events[:4])
    await store.write(events[4:])
    want = expected(events)
    workers = {w["hostname"]: w for w in await store.workers()}
    for host in ("w1@h", "w2@h"):
        got, exp = workers[host], want.workers[host].to_dict()
        for key in ("pid", "freq", "active", "processed", "sw_ident", "last_heartbeat",
                    "heartbeat_count", "event_counts", "offline", "last_seen", "timestamp"):  # fmt: skip
            assert got[key] == exp[key], (host, key)
    assert workers["w2@h"]["status"] == "offline"
    assert {t["uuid"] for t in await store.unfinished()} == {"running", "waiting"}

    state = ClusterState()
    assert await store.restore(state) == (2, 2)
    assert set(state.tasks) == {"running", "waiting"}
    assert state.tasks["running"].to_dict() == want.tasks["running"].to_dict()
    assert state.tasks_by_state("STARTED")[0].uuid == "running"
    assert state.worker("w1@h").heartbeat_count == 2  # type: ignore[union-attr]
    # Live events go on from the restored state with the usual rules.
    state.apply(ev("task-succeeded", "running", 9.0, result="1"))
    assert state.tasks["running"].state == "SUCCESS"

    recent = ClusterState()
    assert await store.restore(recent, recent=5) == (3, 2)
    assert "done" in recent.tasks


async def test_retention_by_age_and_by_rows(store: EventStore) -> None:
    events: list[dict[str, Any]] = []
    for i in range(250):
        events += lifecycle(f"r-{i:03}", "SUCCESS", 1000.0 + i)
    await store.write(events)
    # Each task's timestamp is its task-succeeded's: 1000.2 + i.
    assert await store.prune(max_age=100, now=1200.5, batch_size=30) == 101  # ts < 1100.5
    left = await all_tasks(store, limit=500)
    assert len(left) == 149 and min(t["timestamp"] for t in left) > 1100.5
    assert await store.prune(max_rows=40, batch_size=7) == 109
    left = await all_tasks(store, limit=500)
    assert sorted(t["uuid"] for t in left) == [f"r-{i:03}" for i in range(210, 250)]
    assert store.statistics().pruned == 210
    # Nothing more to do: idempotent.
    assert await store.prune(max_age=100, max_rows=40, now=1200.5) == 0
    # A late event of a pruned task starts a row afresh (nothing cached survives retention).
    await store.write([ev("task-started", "r-000", 2000.0)])
    late = await store.get("r-000")
    assert late is not None and late["state"] == "STARTED" and late["name"] is None


async def test_raw_event_log_keeps_each_event_once(store_url: str) -> None:
    async with open_store(store_url, event_log=True) as store:
        events = lifecycle("logged", "FAILURE", 50.0)
        await store.write(events)
        await store.write(events)  # redelivered
        logged = await store.events("logged")
        assert [e["type"] for e in logged] == ["task-received", "task-started", "task-failed"]
        assert logged[2]["exception"] == "ValueError('bad')"


async def test_cancelling_a_write_leaves_no_half_written_batch(store: EventStore) -> None:
    events: list[dict[str, Any]] = []
    for i in range(3000):
        events += lifecycle(f"c-{i}", "SUCCESS", 10.0 + i)
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.write, events)
        await anyio.wait_all_tasks_blocked()  # the write is waiting on the database
        tg.cancel_scope.cancel()
    assert await store.count() in (0, 3000)
    await store.write(lifecycle("after", "SUCCESS", 1.0))  # the store still works
    assert (await store.get("after")) is not None


async def test_a_version_1_postgres_schema_is_migrated(postgres_url: str) -> None:
    import asyncpg

    from .conftest import POSTGRES_URL

    schema = postgres_url.rsplit("schema=", 1)[1]
    async with open_store(postgres_url) as store:
        await store.write(lifecycle("old", "STARTED", 1.0)[:2])
    conn = await asyncpg.connect(POSTGRES_URL)
    try:  # as the first release left it
        for table in ("tasks", "workers"):
            await conn.execute(f'ALTER TABLE "{schema}".{table} DROP COLUMN version')
        await conn.execute(f"UPDATE \"{schema}\".aiocelev_meta SET value = '1'")
    finally:
        await conn.close()
    async with open_store(postgres_url) as store:
        assert store.schema_version == latest_schema(store) == 2
        await store.write(lifecycle("old", "SUCCESS", 1.0)[2:])
        await store.write(lifecycle("old", "SUCCESS", 1.0)[2:])
        task = await store.get("old")
        assert task is not None and task["state"] == "SUCCESS" and task["name"] == "proj.add"


async def test_postgres_statements_are_planned_for_their_parameters(postgres_url: str) -> None:
    """asyncpg prepares every statement; a generic plan made while the table was nearly
    empty (a sequential scan to read rows back) must not outlive the table's growth."""
    async with open_store(postgres_url) as store:
        async with store._need_pool().acquire() as conn:  # type: ignore[attr-defined]
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
        writer = await store._writer()  # type: ignore[attr-defined]
        assert await writer.fetchval("SHOW plan_cache_mode") == "force_custom_plan"


async def test_a_writer_preparing_ahead_survives_losing_its_connection(postgres_url: str) -> None:
    """The writer's connection is killed three times while it writes: the batch in hand
    fails, the cache is dropped, the batch prepared behind it is prepared again after
    the retry; every row ends as ClusterState has it."""
    import asyncpg

    from .conftest import POSTGRES_URL

    events: list[dict[str, Any]] = []
    for i in range(1500):
        events.append(ev("task-received", f"kill-{i}", 1.0 + i, name="proj.add", args=f"({i},)"))
        if i >= 4:
            events.append(ev("task-started", f"kill-{i - 4}", 1.2 + i))
        if i >= 8:
            events.append(ev("task-succeeded", f"kill-{i - 8}", 1.4 + i, result=str(i)))
        if i % 10 == 0:
            events.append(ev("worker-heartbeat", None, 1.0 + i, freq=2.0, active=1))
    killer = await asyncpg.connect(POSTGRES_URL)
    try:
        async with open_store(postgres_url) as store, StoreWriter(store, max_batch=40) as writer:

            async def kill() -> None:
                for after in (3, 10, 20):
                    while writer.statistics().batches < after:
                        await anyio.sleep(0.001)
                    conn = store._wconn  # type: ignore[attr-defined]
                    while not conn.is_in_transaction():  # in the middle of a batch
                        await anyio.sleep(0)
                    await killer.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())

            async with anyio.create_task_group() as tg:
                tg.start_soon(kill)
                for e in events:
                    await writer.put(e)
            await writer.flush()
            stats = writer.statistics()
            assert stats.committed == len(events) and stats.rejected == 0
            assert stats.retries >= 1  # at least one kill landed in the middle of a batch
            want = expected(events)
            for uuid, t in want.tasks.items():
                stored = await store.get(uuid)
                assert stored is not None and comparable(stored) == comparable(t.to_dict()), uuid
            (worker,) = await store.workers()
            assert worker["heartbeat_count"] >= 150  # a commit whose reply was lost counts twice
    finally:
        await killer.close()


async def test_a_closed_store_raises_store_error(store_url: str) -> None:
    store = open_store(store_url)
    with pytest.raises(StoreError):
        await store.get("x")
    async with store:
        pass
    with pytest.raises(StoreError):
        await store.write(lifecycle("x", "SUCCESS", 1.0))
