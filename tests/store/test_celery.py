"""A real ``celery worker -E`` runs a few hundred tasks of every outcome; the rows the
store keeps match what :class:`~aiocelev.ClusterState` holds, on both backends."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from aiocelev import ClusterState, EventReceiver
from aiocelev.store import Ingest, open_store

from ..brokers._rabbitmq import delete_exchanges
from ..interop._common import Worker, call
from ._events import comparable
from .test_at_least_once import _delete_queue

pytestmark = [pytest.mark.amqp, pytest.mark.celery]


@asynccontextmanager
async def prefork_worker(broker_url: str, env: dict[str, str]) -> AsyncIterator[Worker]:
    """A real worker with a prefork pool of one process (the solo pool takes tasks slowly
    from an empty queue); its task queue is deleted afterwards."""
    worker = Worker(broker_url, events=True, env=env, pool="prefork")
    worker.start()
    try:
        yield worker
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(worker.stop)
            worker.log.close()
            await _delete_queue(broker_url, worker.queue)


def _reset_kombu_pools() -> None:
    from kombu import pools

    try:
        pools.reset()
    except Exception:  # closing a connection the broker already dropped
        pass


def _client(broker_url: str) -> Any:
    from celery import Celery

    return Celery("aiocelev_store_client", broker=broker_url)


async def test_stored_rows_match_cluster_state_for_a_real_worker(
    amqp_url: str, postgres_url: str, tmp_path: Any
) -> None:
    """One worker run feeds a SQLite store, a PostgreSQL store and a ClusterState."""
    exchange = f"aiocelev-store-ev-{uuid.uuid4().hex[:8]}"
    events_url = f"{amqp_url}?exchange={exchange}"
    env = {"AIOCELEV_CELERY_EVENT_EXCHANGE": exchange}
    state = ClusterState(max_tasks=10_000)
    expected_ids: dict[str, str] = {}
    try:
        async with (
            open_store(f"sqlite:///{tmp_path}/celery.db") as lite,
            open_store(postgres_url) as pg,
            Ingest(events_url, lite, max_batch=200) as lite_ingest,
            Ingest(events_url, pg, max_batch=200) as pg_ingest,
            EventReceiver(events_url) as receiver,
            prefork_worker(amqp_url, env) as worker,
        ):
            with anyio.fail_after(60):  # the worker is up: it will hear the revokes
                async for event in state.follow(receiver):
                    if event.type == "worker-online" and event.hostname == worker.nodename:
                        break
            client = _client(amqp_url)
            send = client.send_task
            q = worker.queue
            revoked = [str(uuid.uuid4()) for _ in range(20)]
            # kombu keeps producers in process-wide pools keyed by the broker URL: one made by
            # an earlier test, before a broker restart, is stale, and Celery's broadcast does
            # not retry.  The store is what is under test here: start from fresh pools.
            for attempt in range(3):
                _reset_kombu_pools()
                try:
                    await call(
                        client.control.revoke,
                        revoked,
                        destination=[worker.nodename],
                        reply=True,
                        timeout=10,
                    )
                    break
                except OSError:
                    if attempt == 2:
                        raise
                    client = _client(amqp_url)
                    send = client.send_task

            def send_all() -> None:
                with client.producer_or_acquire() as producer:
                    for name, args, want, n in (
                        ("interop.add", lambda i: (i, 1), "SUCCESS", 150),
                        ("interop.boom", lambda i: (i,), "FAILURE", 60),
                        ("interop.flaky", lambda i: (i,), "SUCCESS", 30),  # retried once each
                    ):
                        for i in range(n):
                            result = send(name, args=args(i), queue=q, producer=producer)
                            expected_ids[result.id] = want
                    for i, tid in enumerate(revoked):
                        send("interop.add", args=(i, i), queue=q, task_id=tid, producer=producer)
                        expected_ids[tid] = "REVOKED"

            await anyio.to_thread.run_sync(send_all)

            def finished() -> bool:
                return all(
                    (t := state.tasks.get(tid)) is not None and t.state == want
                    for tid, want in expected_ids.items()
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(lite_ingest.run)
                tg.start_soon(pg_ingest.run)
                try:
                    with anyio.fail_after(60):
                        async for _event in state.follow(receiver):
                            if finished():
                                break
                except TimeoutError:
                    missing = {
                        tid: (want, getattr(state.tasks.get(tid), "state", None))
                        for tid, want in expected_ids.items()
                        if getattr(state.tasks.get(tid), "state", None) != want
                    }
                    raise AssertionError(
                        f"{len(missing)} not finished; events seen: {state.event_counts()}\n"
                        f"{worker.output()}"
                    ) from None
                await anyio.to_thread.run_sync(worker.stop)
                with anyio.fail_after(60):
                    async for event in state.follow(receiver):
                        if event.type == "worker-offline" and event.hostname == worker.nodename:
                            break
                    for ingest in (lite_ingest, pg_ingest):
                        while ingest.statistics().committed < state.event_count:
                            await anyio.sleep(0.05)
                tg.cancel_scope.cancel()

            for store, ingest in ((lite, lite_ingest), (pg, pg_ingest)):
                assert ingest.statistics().committed == state.event_count
                for tid, want in expected_ids.items():
                    stored = await store.get(tid)
                    assert stored is not None, tid
                    assert stored["state"] == want
                    assert comparable(stored) == comparable(state.tasks[tid].to_dict()), tid
                stored_worker = {w["hostname"]: w for w in await store.workers()}[worker.nodename]
                live = state.workers[worker.nodename].to_dict()
                # (last_heartbeat and last_seen are receive times: each consumer has its own)
                for key in ("pid", "freq", "processed", "active", "heartbeat_count",
                            "event_counts", "offline", "sw_ident", "sw_ver", "restarts"):  # fmt: skip
                    assert stored_worker[key] == live[key], key
                assert stored_worker["status"] == "offline"
                assert await store.count({"state": "FAILURE", "name": "interop.boom"}) == 60
                assert await store.count({"search": "exception:valueerror"}) == 60
                assert await store.count({"state": "REVOKED"}) == 20
    finally:
        await delete_exchanges(amqp_url, exchange)
