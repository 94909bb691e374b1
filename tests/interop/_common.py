"""Helpers shared by the interoperability tests against real Celery processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from aiocelev import EventDispatcher
from aiocelev._codec import decode_message

from .._helpers import read_output

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))

TASK_TYPES = {
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-retried",
    "task-revoked",
}

#: ``worker-*`` event fields of a simulated worker.
WORKER_FIELDS = {
    "freq": 2.0,
    "active": 0,
    "processed": 0,
    "loadavg": [0.1, 0.1, 0.1],
    "sw_ident": "aiocelev",
    "sw_ver": "0.1.0",
    "sw_sys": "Linux",
}


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """Warm shutdown (SIGTERM); SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Worker:
    """A real Celery worker subprocess (solo pool by default, one process) with its own node
    name and queue; ``pool="prefork"`` for commands that need a pool (terminate, pool_grow).

    The node is ``<prefix>-<tag>@interop`` and its queue ``<prefix>-interop-<tag>``
    unless *nodename* and *queue* are given.
    """

    def __init__(
        self,
        broker_url: str,
        *,
        events: bool,
        env: Mapping[str, str] | None = None,
        prefix: str = "aiocelev",
        nodename: str | None = None,
        queue: str | None = None,
        pool: str = "solo",
    ) -> None:
        tag = uuid.uuid4().hex[:10]
        self.pool = pool
        self.nodename = nodename or f"{prefix}-{tag}@interop"
        self.queue = queue or f"{prefix}-interop-{tag}"
        self.broker_url = broker_url
        self.events = events
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by celery_worker()

    def start(self) -> None:
        cmd = [
            CELERY, "-A", "tests.interop.celery_app", "worker", "-P", self.pool, "-c", "1",
            "--without-mingle", "--without-gossip", "-n", self.nodename, "-Q", self.queue,
            "--loglevel", "INFO",
        ]  # fmt: skip
        if self.events:
            cmd.append("-E")
        env = {**os.environ, "AIOCELEV_CELERY_BROKER": self.broker_url, **self.extra_env}
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def stop(self, timeout: float = 15) -> None:
        """Warm shutdown (SIGTERM: the worker sends worker-offline); SIGKILL if it hangs."""
        if self.proc is not None:
            stop_process(self.proc, timeout)

    def output(self) -> str:
        return read_output(self.log)[-4000:]


@asynccontextmanager
async def celery_worker(
    broker_url: str,
    forget_queue: Callable[[str, str], Awaitable[None]],
    *,
    events: bool = True,
    env: Mapping[str, str] | None = None,
    prefix: str = "aiocelev",
) -> AsyncIterator[Worker]:
    """A started :class:`Worker`; stopped, and its queue removed with
    ``forget_queue(broker_url, queue)``, on the way out."""
    worker = Worker(broker_url, events=events, env=env, prefix=prefix)
    worker.start()
    try:
        yield worker
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(worker.stop)
            worker.log.close()
            await forget_queue(broker_url, worker.queue)


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking (Celery client) call in a thread."""
    return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))


async def collect_until_offline(
    sub: Any,
    nodename: str,
    into: list[tuple[str, dict[str, Any]]],
    *,
    check_header: bool = False,
) -> None:
    """Append (routing_key, event) for events from *nodename* until its worker-offline.

    With *check_header*, messages whose ``hostname`` header names another node
    are skipped before they are decoded.
    """
    async for message in sub:
        if check_header and message.headers.get("hostname") != nodename:
            continue  # not from our worker
        events, errors = decode_message(message)
        assert not errors
        for event in events:
            if event.get("hostname") == nodename:
                into.append((message.routing_key, event))
                if event["type"] == "worker-offline":
                    return


async def typed_until_offline(receiver: Any, nodename: str, into: list[Any]) -> None:
    """Append the typed events from *nodename* until its worker-offline."""
    async for event in receiver:
        if event.hostname == nodename:
            into.append(event)
            if event.type == "worker-offline":
                return


async def send_outcome_tasks(client: Any, queue: str) -> tuple[str, str, str]:
    """Send one task that succeeds, one that fails and one retried once; their ids."""
    ok = (await call(client.send_task, "interop.add", args=(2, 3), queue=queue)).id
    bad = (await call(client.send_task, "interop.boom", args=(7,), queue=queue)).id
    retried = (await call(client.send_task, "interop.flaky", args=(9,), queue=queue)).id
    return ok, bad, retried


def outcomes_seen(
    raw: list[tuple[str, dict[str, Any]]], ok: str, bad: str, retried: str, revoked: str
) -> bool:
    """Whether *raw* has the outcome of every task and a worker-heartbeat."""
    seen = {(e["type"], e.get("uuid")) for _, e in raw}
    return {
        ("task-succeeded", ok),
        ("task-failed", bad),
        ("task-retried", retried),
        ("task-succeeded", retried),
        ("task-revoked", revoked),
    } <= seen and "worker-heartbeat" in {e["type"] for _, e in raw}


async def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, worker: Worker
) -> None:
    """Wait until *predicate()*; on timeout fail with the worker's output."""
    try:
        with anyio.fail_after(timeout):
            while not predicate():
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(
            f"timed out waiting for {what}; worker output:\n{worker.output()}"
        ) from None


def events_by_type(raw: list[tuple[str, dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The events of *raw* grouped by type, in order."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for _, event in raw:
        by_type.setdefault(event["type"], []).append(event)
    return by_type


def assert_celery_routing(raw: list[tuple[str, dict[str, Any]]]) -> None:
    """Worker events one per message, task events on their own key or batched on task.multi."""
    for key, event in raw:
        if event["type"].startswith("worker-"):
            assert key == event["type"].replace("-", ".")
        else:
            assert key in ("task.multi", event["type"].replace("-", "."))


@asynccontextmanager
async def celery_state_probe(
    broker_url: str, nodename: str, exchange: str | None = None, timeout: float = 30
) -> AsyncIterator[Callable[[], Any]]:
    """Celery's EventReceiver + State in a subprocess; yields a coroutine function
    returning its JSON report (once it saw worker-offline from *nodename*)."""
    argv = [sys.executable, "-m", "tests.interop._celery_probe", broker_url, nodename, str(timeout)]
    if exchange is not None:
        argv.append(exchange)
    proc = await anyio.open_process(argv, cwd=ROOT)
    try:
        assert proc.stdout is not None
        buffer = b""
        with anyio.fail_after(30):
            while b"READY\n" not in buffer:
                buffer += await proc.stdout.receive()

        async def report() -> Any:
            nonlocal buffer
            assert proc.stdout is not None
            with anyio.fail_after(timeout + 10):
                while not buffer.rstrip().endswith(b"}"):
                    buffer += await proc.stdout.receive()
            return json.loads(buffer.split(b"READY\n", 1)[1])

        yield report
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            await proc.aclose()


async def send_received(dispatcher: EventDispatcher, task_id: str) -> None:
    """``task-received`` for a ``demo.add(2, 3)`` task, as a worker sends it."""
    await dispatcher.send(
        "task-received", uuid=task_id, name="demo.add", args="(2, 3)", kwargs="{}",
        root_id=task_id, parent_id=None, retries=0, eta=None, expires=None,
    )  # fmt: skip


async def send_task_states(dispatcher: EventDispatcher, ids: Mapping[str, str]) -> None:
    """Per ``{state: task_id}``, the events a worker sends for a task ending in that state
    (``SUCCESS``, ``FAILURE``, ``RETRY`` or ``REVOKED``)."""
    for state, task_id in ids.items():
        await send_received(dispatcher, task_id)
        if state == "REVOKED":
            await dispatcher.send(
                "task-revoked", uuid=task_id, terminated=False, signum=None, expired=False
            )
            continue
        await dispatcher.send("task-started", uuid=task_id)
        if state == "SUCCESS":
            await dispatcher.send("task-succeeded", uuid=task_id, result="5", runtime=0.01)
        elif state == "FAILURE":
            await dispatcher.send(
                "task-failed", uuid=task_id, exception="ValueError('x')",
                traceback="Traceback (most recent call last):\n", runtime=0.01,
            )  # fmt: skip
        else:
            await dispatcher.send(
                "task-retried", uuid=task_id, exception="RuntimeError('again')",
                traceback="Traceback (most recent call last):\n",
            )  # fmt: skip
