"""``aiocelev record --store``: the stream into a task-history store."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from aiocelev import EventDispatcher
from aiocelev.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path}/h.db"
    assert main(["record", "out.jsonl", "--store", db]) == 2
    assert "give FILE or --store, not both" in capsys.readouterr().err
    assert main(["record", "--store", "mysql://h/db", "--broker", "memory://x"]) == 2
    assert "no store for" in capsys.readouterr().err
    assert main(["record", "--store", db, "--max-rows", "0"]) == 2
    capsys.readouterr()


@pytest.mark.redis
async def test_record_into_a_store_from_redis(redis_url: str, tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    channel_db = f"{redis_url.rsplit('/', 1)[0]}/{7}"  # a database of its own: no other traffic
    host = f"w-{uuid.uuid4().hex[:8]}@redis"
    argv = [sys.executable, "-m", "aiocelev", "record", "--store", f"sqlite:///{db}",
            "--broker", channel_db, "--limit", "41", "--filter", "task.#", "worker.#"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        line = await anyio.to_thread.run_sync(proc.stderr.readline)
        assert b"recording" in line and b"into sqlite://" in line, line
        async with EventDispatcher(channel_db, hostname=host) as d:
            for i in range(20):
                await d.send(
                    "task-received", uuid=f"r-{i}", name="proj.add", args=f"({i},)", kwargs="{}"
                )
                await d.send("task-failed" if i % 5 == 0 else "task-succeeded", uuid=f"r-{i}",
                             exception="KeyError('k')", result=str(i))  # fmt: skip
            await d.send("worker-heartbeat", freq=2.0, active=0, processed=20)
        code = await anyio.to_thread.run_sync(proc.wait)
        err = proc.stderr.read().decode()
        assert code == 0, err
        assert "recorded 41 events into sqlite://" in err and "41 committed" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    con = sqlite3.connect(db)
    states = dict(con.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall())
    workers = con.execute("SELECT hostname, heartbeat_count FROM workers").fetchall()
    con.close()
    assert states == {"FAILURE": 4, "SUCCESS": 16}
    assert workers == [(host, 1)]
