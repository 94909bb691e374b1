"""The framework examples run as their docstrings say, against the real Redis.

For each of ``examples/taskiq_worker.py``, ``examples/arq_worker.py`` and
``examples/saq_worker.py``: the worker runs as the framework's own command, the
example's client side sends a dozen random jobs (a fixed ``--seed``) and prints
their ids, and an :class:`~aiocelev.EventReceiver` on the same event bus sees
the worker go online, every printed job received and started, every job but the
long ones end (succeeded or failed, after retries), the long ones cancelled by
``revoke --terminate`` (as the docstrings suggest), and ``worker-offline`` after
SIGTERM.  Each example has its own Redis queue and event exchange (database 11).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import pytest

from aiocelev import Control, Event, EventReceiver

from ..interop._common import CELERY, ROOT, stop_process
from ._harness import make_bus

pytestmark = pytest.mark.redis

BIN = Path(CELERY).parent
JOBS = 12
SEED = 7
WAIT = 30.0  # bound on "eventually"; the whole test takes a few seconds
FINAL = ("task-succeeded", "task-failed")


class Seen:
    """The events of the example's bus."""

    def __init__(self, log: Path) -> None:
        self.items: list[Event] = []
        self.log = log
        self.jobs: Mapping[str, str] = {}

    def of(self, uuid: str) -> list[str]:
        """The types of the worker's events of task *uuid* (not the client's ``task-sent``)."""
        return [e.type for e in self.items if e.get("uuid") == uuid and e.type != "task-sent"]

    async def wait(self, predicate: object, what: str) -> None:
        assert callable(predicate)
        with anyio.move_on_after(WAIT):
            while not predicate():
                await anyio.sleep(0.05)
        if not predicate():
            output = self.log.read_text(errors="replace")[-4000:]
            jobs = "\n".join(f"{n} {u}: {self.of(u)}" for u, n in self.jobs.items())
            raise AssertionError(f"never saw {what}; jobs:\n{jobs}\nworker output:\n{output}")


async def run_example(
    tmp_path: Path,
    redis_url: str,
    *,
    example: str,
    worker: Sequence[str],
    env: Mapping[str, str],
    prefix: str,
    slow: str,
) -> tuple[Seen, dict[str, str]]:
    """Run *example*'s worker and client; returns the events and the printed ``{id: name}``."""
    bus = make_bus("redis", redis_url)
    environ = {
        **os.environ,
        **{key: value.format(url=bus.url, tag=bus.tag) for key, value in env.items()},
        "AIOCELEV_EVENTS": bus.events_url,
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path / f"{prefix}worker.log"
    seen = Seen(log_path)
    async with (
        EventReceiver(bus.events_url) as receiver,
        Control(bus.events_url, timeout=5.0) as control,
    ):
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [str(BIN / worker[0]), *worker[1:]], cwd=ROOT, env=environ,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            async with anyio.create_task_group() as tg:

                async def collect() -> None:
                    async for event in receiver:
                        seen.items.append(event)

                tg.start_soon(collect)
                await seen.wait(
                    lambda: any(e.type == "worker-online" for e in seen.items), "worker-online"
                )
                [node] = {e.hostname for e in seen.items if e.type == "worker-online"}
                assert node is not None and node.startswith(prefix), node

                client = await anyio.run_process(
                    [sys.executable, f"examples/{example}", "--count", str(JOBS),
                     "--seed", str(SEED)],
                    cwd=ROOT, env=environ, check=False,
                )  # fmt: skip
                assert client.returncode == 0, client.stderr.decode(errors="replace")
                jobs = dict(line.split(" ", 1) for line in client.stdout.decode().splitlines())
                assert len(jobs) == JOBS, jobs
                seen.jobs = jobs
                names = set(jobs.values())
                assert any(n.endswith(slow) for n in names) and len(names) >= 3, names
                long = [uuid for uuid, name in jobs.items() if name.endswith(slow)]

                def settled() -> bool:
                    return all(
                        (seen.of(uuid)[-1:] == ["task-started"])
                        if uuid in long
                        else bool(seen.of(uuid)) and seen.of(uuid)[-1] in FINAL
                        for uuid in jobs
                    )

                await seen.wait(settled, "every job run (the long ones running)")
                replies = await control.revoke(long, terminate=True, destination=[node])
                assert [r.payload for r in replies] == [{"ok": "terminate: " + ", ".join(long)}]
                await seen.wait(
                    lambda: all(seen.of(uuid)[-1:] == ["task-revoked"] for uuid in long),
                    "task-revoked for the long jobs",
                )
                proc.send_signal(signal.SIGTERM)
                await seen.wait(
                    lambda: any(e.type == "worker-offline" for e in seen.items), "worker-offline"
                )
                tg.cancel_scope.cancel()
            with anyio.fail_after(WAIT):
                while proc.poll() is None:
                    await anyio.sleep(0.05)
        finally:
            stop_process(proc)

    # What a monitor saw of each job: received and started first, one final event.
    for uuid, name in jobs.items():
        types = seen.of(uuid)
        assert types[:2] == ["task-received", "task-started"], (name, types)
        runs = types.count("task-received")
        assert types.count("task-retried") == runs - 1, (name, types)
        assert sum(t in (*FINAL, "task-revoked") for t in types) == 1, (name, types)
        received = [e for e in seen.items if e.type == "task-received" and e["uuid"] == uuid]
        assert all(e["name"] == name for e in received)
        assert [e["retries"] for e in received] == list(range(runs)), (name, received)
    revoked = [e for e in seen.items if e.type == "task-revoked"]
    assert sorted(e["uuid"] for e in revoked) == sorted(long)
    assert all(e["terminated"] is True and e["signum"] == signal.SIGTERM for e in revoked)
    return seen, jobs


def _outcomes(seen: Seen, jobs: Mapping[str, str], name: str) -> set[str]:
    return {seen.of(uuid)[-1] for uuid, job in jobs.items() if job.endswith(name)}


async def test_taskiq_example(tmp_path: Path, redis_url: str) -> None:
    pytest.importorskip("taskiq_redis")
    seen, jobs = await run_example(
        tmp_path,
        redis_url,
        example="taskiq_worker.py",
        worker=[
            "taskiq",
            "worker",
            "examples.taskiq_worker:broker",
            "--workers",
            "1",
            "--no-configure-logging",
            "--shutdown-timeout",
            "5",
        ],  # fmt: skip
        env={"TASKIQ_BROKER": "{url}", "TASKIQ_QUEUE": "aiocelev-example-{tag}"},
        prefix="taskiq-",
        slow="slow",
    )
    assert _outcomes(seen, jobs, "add") == {"task-succeeded"}
    assert _outcomes(seen, jobs, "fail") == {"task-failed"}
    # send_sent_events=True: the kicking process sent task-sent for every task.
    sent = {
        e["uuid"]
        for e in seen.items
        if e.type == "task-sent" and (e.hostname or "").startswith("gen")
    }
    assert set(jobs) <= sent


async def test_arq_example(tmp_path: Path, redis_url: str) -> None:
    pytest.importorskip("arq")
    seen, jobs = await run_example(
        tmp_path,
        redis_url,
        example="arq_worker.py",
        worker=["arq", "examples.arq_worker.WorkerSettings"],
        env={"ARQ_REDIS": "{url}", "ARQ_QUEUE": "aiocelev-example-{tag}"},
        prefix="arq-",
        slow="slow",
    )
    assert _outcomes(seen, jobs, "add") == {"task-succeeded"}
    assert _outcomes(seen, jobs, "fail") == {"task-failed"}
    assert _outcomes(seen, jobs, "flaky") <= {"task-succeeded"}  # arq retries until it works


async def test_saq_example(tmp_path: Path, redis_url: str) -> None:
    pytest.importorskip("saq")
    seen, jobs = await run_example(
        tmp_path,
        redis_url,
        example="saq_worker.py",
        worker=["saq", "examples.saq_worker.settings"],
        env={"SAQ_REDIS": "{url}", "SAQ_QUEUE": "aiocelev-example-{tag}"},
        prefix="saq-",
        slow="slow",
    )
    assert _outcomes(seen, jobs, "add") == {"task-succeeded"}
    assert _outcomes(seen, jobs, "fail") == {"task-failed"}
