"""Task-history store: sustained ingestion and query latency, SQLite and PostgreSQL.

Run: ``python -m benchmarks.store [--events N] [--rows N] [--backend sqlite|postgres|all]
[--only put,put_long,live,query] [--broker URL]``.
Not a test: numbers depend on the machine.

* **ingest**: a live stream from the in-memory broker (``EventDispatcher`` ->
  ``EventReceiver`` -> ``StoreWriter`` -> database, all in this process) of
  task-received / started / succeeded-or-failed events for many tasks in
  flight on 8 workers plus their heartbeats; events/s from the first event
  sent to the last one committed.  The same stream is also timed straight into
  ``StoreWriter.put`` (no broker), which is what the store itself sustains.
* **put_long**: the same straight into ``StoreWriter.put`` with 3,000 tasks in
  flight instead of 200, so a task's events mostly land in different batches and
  its row is written more than once (about 0.5 rows per event instead of 0.35).
* **live** with ``--broker URL``: the same live stream through a real broker;
  with a durable RabbitMQ queue (``?queue_name=…&durable=1``) every message is
  acknowledged only after its events are committed.
* **query**: one page (50) of failed tasks of one name, newest first, over
  ``--rows`` stored tasks (1,000,000 by default; 20 names, 5% failures), and
  the next page by cursor; median of 21 runs, after one warm-up.

The generated streams are frozen out of the cycle collector (``gc.freeze``):
a live receiver never holds 600,000 events, and full collections walking
them would be the harness's cost, not the store's.

``AIOCELEV_BENCH_VERBOSE=1`` also prints, for each *put*, the process's CPU time, the
batches and the task rows written per event.

PostgreSQL is ``$AIOCELEV_BENCH_POSTGRES_URL`` (default: the local server,
database ``test``), in a schema of its own that is dropped afterwards.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from aiocelev import EventDispatcher
from aiocelev.store import EventStore, Ingest, StoreWriter, open_store

POSTGRES_URL = os.environ.get(
    "AIOCELEV_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
PARTS = {"put", "put_long", "live", "query"}
NAMES = [f"proj.tasks.task_{i:02}" for i in range(20)]


def make_stream(n: int, workers: int = 8, in_flight: int = 200) -> list[dict[str, Any]]:
    """About *n* events: tasks interleaved *in_flight* at a time, a heartbeat per 1,000."""
    events: list[dict[str, Any]] = []
    t = 1_700_000_000.0
    run = uuid.uuid4().hex[:8]
    i = 0
    while len(events) < n:
        base = i * 3
        for k in range(in_flight):
            uid = f"{run}-{i + k}"
            host = f"w{(i + k) % workers}@bench"
            name = NAMES[(i + k) % len(NAMES)]
            events.append({"type": "task-received", "uuid": uid, "hostname": host,
                           "timestamp": t + base, "name": name, "args": f"({i + k}, 'x')",
                           "kwargs": "{}", "retries": 0, "root_id": uid})  # fmt: skip
        for k in range(in_flight):
            uid = f"{run}-{i + k}"
            events.append({"type": "task-started", "uuid": uid,
                           "hostname": f"w{(i + k) % workers}@bench", "timestamp": t + base + 1})  # fmt: skip
        for k in range(in_flight):
            uid = f"{run}-{i + k}"
            host = f"w{(i + k) % workers}@bench"
            if (i + k) % 20 == 7:
                events.append({"type": "task-failed", "uuid": uid, "hostname": host,
                               "timestamp": t + base + 2, "exception": "ValueError('bad')",
                               "traceback": "Traceback...\nValueError: bad"})  # fmt: skip
            else:
                events.append({"type": "task-succeeded", "uuid": uid, "hostname": host,
                               "timestamp": t + base + 2, "result": str(i + k), "runtime": 0.01})  # fmt: skip
        for w in range(workers):
            events.append({"type": "worker-heartbeat", "hostname": f"w{w}@bench",
                           "timestamp": t + base + 2, "freq": 2.0, "active": 1, "processed": i})  # fmt: skip
        i += in_flight
    return events[:n]


@asynccontextmanager
async def opened(backend: str, tmp: str) -> AsyncIterator[EventStore]:
    if backend == "sqlite":
        async with open_store(f"sqlite:///{tmp}/bench-{uuid.uuid4().hex[:6]}.db") as store:
            yield store
        return
    import asyncpg

    schema = f"aiocelev_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(POSTGRES_URL)
    try:  # each part starts with no dirty pages left by the one before (superuser only)
        await conn.execute("CHECKPOINT")
    except asyncpg.PostgresError:
        pass
    finally:
        await conn.close()
    try:
        async with open_store(f"{POSTGRES_URL}?schema={schema}") as store:
            yield store
    finally:
        conn = await asyncpg.connect(POSTGRES_URL)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def bench_put(
    store: EventStore, events: list[dict[str, Any]], max_batch: int | None = None
) -> float:
    start = time.perf_counter()
    cpu = time.process_time()
    options = {} if max_batch is None else {"max_batch": max_batch}
    async with StoreWriter(store, **options) as writer:
        for e in events:
            await writer.put(e)
        await writer.flush()
    elapsed = time.perf_counter() - start
    if os.environ.get("AIOCELEV_BENCH_VERBOSE"):
        s = store.statistics()
        print(
            f"  {len(events)} events in {elapsed:.2f}s, process CPU {time.process_time() - cpu:.2f}s,"
            f" {s.batches} batches, {s.tasks / len(events):.2f} task rows per event",
            flush=True,
        )
    return len(events) / elapsed


async def bench_live(
    store: EventStore, events: list[dict[str, Any]], broker: str | None = None
) -> float:
    url = broker or f"memory://store-bench-{uuid.uuid4().hex[:6]}"
    async with Ingest(url, store) as ingest:
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(ingest.run)
            async with EventDispatcher(url, hostname=None, buffer_size=50_000) as d:
                for e in events:
                    await d.send_event(dict(e))
                await d.flush()
            while ingest.statistics().committed < len(events):
                await anyio.sleep(0.005)
            elapsed = time.perf_counter() - start
            tg.cancel_scope.cancel()
    return len(events) / elapsed


async def fill_rows(store: EventStore, rows: int) -> float:
    """*rows* finished tasks, one event each (their final state), as fast as it goes."""
    start = time.perf_counter()
    t = 1_600_000_000.0
    batch: list[dict[str, Any]] = []
    async with StoreWriter(store, max_batch=20_000, buffer_size=40_000) as writer:
        for i in range(rows):
            failed = i % 20 == 7
            await writer.put({
                "type": "task-failed" if failed else "task-succeeded", "uuid": f"row-{i:07}",
                "hostname": f"w{i % 8}@bench", "timestamp": t + i * 0.01,
                **({"exception": "ValueError('bad')"} if failed else {"result": str(i)}),
            })  # fmt: skip
            if i % 20 in (0, 7):  # names come with task-received
                await writer.put({"type": "task-received", "uuid": f"row-{i:07}",
                                  "hostname": f"w{i % 8}@bench", "timestamp": t + i * 0.01 - 1,
                                  "name": NAMES[(i // 20) % len(NAMES)], "args": "()", "kwargs": "{}"})  # fmt: skip
        await writer.flush()
    del batch
    return time.perf_counter() - start


async def bench_query(store: EventStore, name: str) -> tuple[float, float, int]:
    flt = {"state": "FAILURE", "name": name}
    await store.query(flt, limit=50)
    firsts, nexts = [], []
    n = 0
    for _ in range(21):
        t0 = time.perf_counter()
        page = await store.query(flt, limit=50)
        t1 = time.perf_counter()
        n = len(page.tasks)
        if page.cursor is not None:
            await store.query(flt, cursor=page.cursor, limit=50)
        t2 = time.perf_counter()
        firsts.append(t1 - t0)
        nexts.append(t2 - t1)
    return statistics.median(firsts) * 1000, statistics.median(nexts) * 1000, n


async def main(args: argparse.Namespace) -> dict[str, Any]:
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    results: dict[str, Any] = {}
    only = set(args.only.split(","))
    if only - PARTS:
        raise SystemExit(f"--only: choose among {', '.join(sorted(PARTS))}")
    events = make_stream(args.events)
    long_events = make_stream(args.events, in_flight=3_000)
    # The streams are the harness's input, held whole only because it replays them:
    # out of the cycle collector's reach, as events passing through a receiver are.
    gc.collect()
    gc.freeze()
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            r: dict[str, Any] = {}
            if "put" in only:
                async with opened(backend, tmp) as store:
                    r["put_events_per_s"] = round(await bench_put(store, events, args.max_batch))
            if "put_long" in only:
                async with opened(backend, tmp) as store:
                    r["put_long_events_per_s"] = round(
                        await bench_put(store, long_events, args.max_batch)
                    )
            if "live" in only:
                async with opened(backend, tmp) as store:
                    r["live_events_per_s"] = round(await bench_live(store, events, args.broker))
            if args.rows and "query" in only:
                async with opened(backend, tmp) as store:
                    r["fill_seconds"] = round(await fill_rows(store, args.rows), 1)
                    name = NAMES[0]
                    first, nxt, n = await bench_query(store, name)
                    r["query_rows"] = args.rows
                    r["query_first_page_ms"] = round(first, 2)
                    r["query_next_page_ms"] = round(nxt, 2)
                    r["query_page_size"] = n
            results[backend] = r
            print(backend, json.dumps(r), flush=True)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument("--max-batch", type=int, default=None, help="default: StoreWriter's")
    parser.add_argument(
        "--broker",
        default=None,
        help="the live part's broker (default: a memory:// one), e.g. "
        "'amqp://guest:guest@127.0.0.1//?queue_name=bench&durable=1' for acknowledgements"
        " after commit",
    )
    parser.add_argument(
        "--only", default=",".join(sorted(PARTS)), help="comma-separated: put,put_long,live,query"
    )
    anyio.run(main, parser.parse_args())
