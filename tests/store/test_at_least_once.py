"""At least once, end to end: ``aiocelev record --store`` on a durable RabbitMQ queue,
killed with SIGKILL mid-stream and started again, loses no event."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from aiocelev import EventDispatcher

from ..brokers._rabbitmq import delete_exchanges

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.amqp


def _count(db: Path, state: str | None = None) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(db, timeout=30)
    try:
        if state is None:
            return int(con.execute("SELECT count(*) FROM tasks").fetchone()[0])
        return int(
            con.execute("SELECT count(*) FROM tasks WHERE state = ?", (state,)).fetchone()[0]
        )
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0
    finally:
        con.close()


async def _wait_for(
    predicate, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> None:
    try:
        with anyio.fail_after(timeout):
            while not await anyio.to_thread.run_sync(predicate):
                await anyio.sleep(0.01)
    except TimeoutError:
        output = ""
        if proc is not None and proc.stderr is not None and proc.poll() is not None:
            output = proc.stderr.read().decode(errors="replace")
        raise AssertionError(f"timed out waiting for {what}\n{output}") from None


async def _delete_queue(amqp_url: str, name: str) -> None:
    import aio_pika

    from aiocelev.brokers.amqp import from_url

    with anyio.move_on_after(10):
        conn = await aio_pika.connect(from_url(amqp_url)._endpoints[0].url)
        async with conn:
            channel = await conn.channel()
            await channel.queue_delete(name)


async def test_kill_9_mid_stream_and_restart_loses_nothing(amqp_url: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:10]
    exchange, queue = f"aiocelev-store-ev-{tag}", f"aiocelev-store-{tag}"
    source = f"{amqp_url}?exchange={exchange}&queue_name={queue}&durable=1&prefetch_count=20"
    db = tmp_path / "history.db"
    argv = [sys.executable, "-m", "aiocelev", "record", "--store", f"sqlite:///{db}",
            "--broker", source, "--connect-timeout", "20"]  # fmt: skip

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, env={**os.environ})

    def listening(proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert b"recording" in line, line

    n_first, n_total = 4000, 6000
    proc = start()
    try:
        await anyio.to_thread.run_sync(listening, proc)  # the durable queue is bound
        async with EventDispatcher(
            f"{amqp_url}?exchange={exchange}&confirm_publish=1", hostname="w@kill"
        ) as d:
            for i in range(n_first):
                await d.send(
                    "task-received", uuid=f"k-{i}", name="proj.add", args=f"({i},)", kwargs="{}"
                )
                await d.send("task-succeeded", uuid=f"k-{i}", result=str(i), runtime=0.01)
            await d.flush()
            await _wait_for(lambda: _count(db) >= 300, 60, "the first rows", proc)
            proc.send_signal(signal.SIGKILL)
            await anyio.to_thread.run_sync(proc.wait)
            at_kill = _count(db)
            assert at_kill < n_first, "killed after the stream was done: the test proved nothing"
            # While nothing consumes, the durable queue keeps what is published.
            for i in range(n_first, n_total):
                await d.send(
                    "task-received", uuid=f"k-{i}", name="proj.add", args=f"({i},)", kwargs="{}"
                )
                await d.send("task-succeeded", uuid=f"k-{i}", result=str(i), runtime=0.01)
            await d.flush()
        assert proc.stderr is not None
        proc.stderr.close()
        proc = start()
        await anyio.to_thread.run_sync(listening, proc)
        await _wait_for(lambda: _count(db, "SUCCESS") >= n_total, 90, "every task", proc)
        proc.send_signal(signal.SIGTERM)
        code = await anyio.to_thread.run_sync(proc.wait)
        assert proc.stderr is not None
        assert code == 143, proc.stderr.read().decode(errors="replace")
        con = sqlite3.connect(db)
        rows = con.execute("SELECT uuid, state, name, args, result FROM tasks").fetchall()
        con.close()
        assert len(rows) == n_total
        assert {r[0] for r in rows} == {f"k-{i}" for i in range(n_total)}
        for uuid_, state, name, args, result in rows:
            i = int(uuid_[2:])
            assert (state, name, args, result) == ("SUCCESS", "proj.add", f"({i},)", str(i))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        await _delete_queue(amqp_url, queue)
        await delete_exchanges(amqp_url, exchange)


@pytest.mark.parametrize(("query", "window"), [("", 1_000), ("&prefetch_count=30", 30)])
async def test_ingest_window_is_wide_unless_the_url_sets_one(
    amqp_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, query: str, window: int
) -> None:
    """Acknowledgements wait for the commit: the broker's window of unacknowledged
    messages is what one batch can hold.  While nothing commits, an Ingest takes
    up to 1,000 single-event messages by default (the adapter's default of 100 would
    cap it there), and exactly what the URL asks for otherwise."""
    from aiocelev.store import Ingest, open_store

    tag = uuid.uuid4().hex[:10]
    exchange, queue = f"aiocelev-window-ev-{tag}", f"aiocelev-window-{tag}"
    source = f"{amqp_url}?exchange={exchange}&queue_name={queue}&durable=1{query}"
    published = 300
    expected = min(window, published)
    try:
        async with open_store(f"sqlite:///{tmp_path / 'h.db'}") as store:
            never = anyio.Event()

            async def stalled(*args: object, **kwargs: object) -> None:
                await never.wait()

            monkeypatch.setattr(store, "write_prepared", stalled)
            monkeypatch.setattr(store, "write", stalled)
            async with (
                Ingest(source, store, close_timeout=0.2) as ingest,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(ingest.run)
                async with EventDispatcher(
                    f"{amqp_url}?exchange={exchange}&confirm_publish=1",
                    hostname="w@window",
                    max_batch=1,
                ) as d:
                    for i in range(published):
                        await d.send("task-received", uuid=f"w-{i}", name="proj.add")
                        await d.flush()
                with anyio.fail_after(20):
                    while ingest.statistics().events < expected:
                        await anyio.sleep(0.01)
                await anyio.sleep(0.3)  # nothing more arrives without an acknowledgement
                stats = ingest.statistics()
                assert (stats.events, stats.committed, stats.acked) == (expected, 0, 0)
                tg.cancel_scope.cancel()
    finally:
        await _delete_queue(amqp_url, queue)
        await delete_exchanges(amqp_url, exchange)
