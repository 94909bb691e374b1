"""One scenario for every framework: a real worker process, real Flower, Celery's own State.

:func:`exercise` starts Flower and Celery's ``EventReceiver`` + ``State`` (in
subprocesses) on a private event exchange, then the framework's worker; kicks a
task that succeeds, one that fails, one retried once and one that waits until
``revoke --terminate`` cancels it; checks what aiocelev's receiver, Flower's HTTP
API, Celery's State, ``celery inspect ping`` and aiocelev's ``Control`` see; and
stops the worker with SIGTERM, which must send ``worker-offline``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.to_thread

from aiocelev import Control, EventReceiver

from ..interop._common import CELERY, ROOT, celery_state_probe, stop_process

#: The Redis database the integration tests use (others use 0).
REDIS_DB = 11


def with_db(url: str, db: int) -> str:
    """*url* (``redis://host:port/N``) on database *db*."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))


@dataclass
class Bus:
    """The monitoring side of one test: a broker URL and private exchanges."""

    kind: str
    url: str  # plain URL, for Celery, Flower and the framework
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    @property
    def event_exchange(self) -> str:
        return f"aiocelev-ev-{self.tag}"

    @property
    def control_exchange(self) -> str:
        return f"aiocelev-ctl-{self.tag}"

    @property
    def events_url(self) -> str:
        """The URL for aiocelev, with the private exchanges as URL options."""
        sep = "&" if "?" in self.url else "?"
        return f"{self.url}{sep}exchange={self.event_exchange}&control_exchange={self.control_exchange}"

    def celery_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "AIOCELEV_CELERY_BROKER": self.url,
            "AIOCELEV_CELERY_EVENT_EXCHANGE": self.event_exchange,
            "AIOCELEV_CELERY_CONTROL_EXCHANGE": self.control_exchange,
            "FLOWER_UNAUTHENTICATED_API": "true",
        }


def make_bus(kind: str, url: str) -> Bus:
    return Bus(kind, with_db(url, REDIS_DB) if kind == "redis" else url)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # loopback only
        return json.loads(response.read())


@asynccontextmanager
async def flower(bus: Bus, tmp_path: Path) -> AsyncIterator[Callable[[str], Any]]:
    """A real Flower on the bus; yields ``get(path)`` returning the JSON of an API path."""
    port = _free_port()
    log = (tmp_path / f"flower-{bus.tag}.log").open("wb")
    proc = subprocess.Popen(
        [CELERY, "-A", "tests.interop.celery_app", "flower", "--address=127.0.0.1",
         f"--port={port}", f"--db={tmp_path / f'flower-{bus.tag}.db'}", "--persistent=False"],
        cwd=ROOT, env=bus.celery_env(), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip

    def get(path: str) -> Any:
        try:
            return _get_json(f"http://127.0.0.1:{port}{path}")
        except OSError:
            return None

    try:
        with anyio.fail_after(30):
            while await anyio.to_thread.run_sync(get, "/api/workers?status=1") is None:
                await anyio.sleep(0.2)
        yield get
    finally:
        stop_process(proc)
        log.close()


@dataclass
class Outcomes:
    """The ids of the tasks kicked by a framework's ``kick`` function."""

    ok: str
    bad: str
    flaky: str
    hold: str
    extra: dict[str, str] = field(default_factory=dict)


class Events:
    """Every event received, with waits on predicates."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.items: list[Any] = []
        self.proc = proc
        self.log = log

    def of(self, type_: str, uuid_: str | None = None) -> list[Any]:
        return [
            e for e in self.items if e.type == type_ and (uuid_ is None or e.get("uuid") == uuid_)
        ]

    def seen(self, type_: str, uuid_: str | None = None) -> bool:
        return bool(self.of(type_, uuid_))

    async def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
        try:
            with anyio.fail_after(timeout):
                while not predicate():
                    if self.proc.poll() is not None and not predicate():
                        await anyio.sleep(0.5)  # let the last events arrive
                        if not predicate():
                            break
                    await anyio.sleep(0.05)
        except TimeoutError:
            pass
        if not predicate():
            output = self.log.read_text(errors="replace")[-6000:]
            raise AssertionError(f"never saw {what}; worker output:\n{output}")


async def exercise(
    bus: Bus,
    tmp_path: Path,
    *,
    node: str,
    command: Sequence[str],
    env: Mapping[str, str],
    kick: Callable[[Path], Awaitable[Outcomes]],
    registered: Sequence[str],
    check: Callable[[Events, Outcomes], None] | None = None,
) -> Events:
    """The whole scenario; returns the events seen for further checks."""
    log_path = tmp_path / f"worker-{bus.tag}.log"
    async with (
        flower(bus, tmp_path) as flower_get,
        celery_state_probe(bus.url, node, exchange=bus.event_exchange, timeout=60) as report,
        EventReceiver(bus.events_url) as receiver,
    ):
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                list(command), cwd=ROOT, env={**os.environ, **env},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        events = Events(proc, log_path)
        try:
            async with anyio.create_task_group() as tg:

                async def collect() -> None:
                    async for event in receiver:
                        events.items.append(event)

                tg.start_soon(collect)
                outcomes = await _scenario(
                    bus, node, events, kick, tmp_path, registered, flower_get
                )
                if check is not None:
                    check(events, outcomes)
                # A heartbeat before leaving (the scenario can be quicker than one interval).
                await events.wait(
                    lambda: any(
                        e.type == "worker-heartbeat" and e.hostname == node for e in events.items
                    ),
                    "a worker-heartbeat",
                )
                # SIGTERM: a warm shutdown that reports worker-offline.
                proc.send_signal(signal.SIGTERM)
                await events.wait(
                    lambda: any(
                        e.type == "worker-offline" and e.hostname == node for e in events.items
                    ),
                    "worker-offline after SIGTERM",
                )
                tg.cancel_scope.cancel()
            with anyio.fail_after(30):
                while proc.poll() is None:
                    await anyio.sleep(0.1)
            seen = await report()
        finally:
            stop_process(proc)
    # Celery's own EventReceiver + State agree.
    assert seen["tasks"].get(outcomes.ok) == "SUCCESS", seen
    assert seen["tasks"].get(outcomes.bad) == "FAILURE", seen
    assert seen["tasks"].get(outcomes.flaky) == "SUCCESS", seen
    assert seen["tasks"].get(outcomes.hold) == "REVOKED", seen
    assert "task-retried" in seen["types"], seen["types"]
    assert "worker-heartbeat" in seen["types"], seen["types"]
    assert seen["types"][0] == "worker-online" and seen["types"][-1] == "worker-offline"
    assert seen["alive_at_end"] is False
    return events


async def _scenario(
    bus: Bus,
    node: str,
    events: Events,
    kick: Callable[[Path], Awaitable[Outcomes]],
    tmp_path: Path,
    registered: Sequence[str],
    flower_get: Callable[[str], Any],
) -> Outcomes:
    await events.wait(
        lambda: any(e.type == "worker-online" and e.hostname == node for e in events.items),
        "worker-online",
    )
    ids = await kick(tmp_path)
    await events.wait(
        lambda: (
            events.seen("task-succeeded", ids.ok)
            and events.seen("task-failed", ids.bad)
            and events.seen("task-retried", ids.flaky)
            and events.seen("task-succeeded", ids.flaky)
            and events.seen("task-started", ids.hold)
        ),
        "the outcomes of the tasks",
    )
    async with Control(bus.events_url, timeout=5.0) as control:
        pong = await control.ping(destination=[node])
        assert [(r.node, r.payload) for r in pong] == [(node, {"ok": "pong"})]
        active = await control.active(destination=[node])
        assert [task["id"] for task in active[0].payload] == [ids.hold]
        names = (await control.registered(destination=[node]))[0].payload
        assert set(registered) <= set(names), names
        stats = (await control.stats(destination=[node]))[0].payload
        assert stats["pool"]["running"] == 1
        replies = await control.revoke(ids.hold, terminate=True, destination=[node])
        assert [r.payload for r in replies] == [{"ok": f"terminate: {ids.hold}"}]
    await events.wait(lambda: events.seen("task-revoked", ids.hold), "task-revoked")
    revoked = events.of("task-revoked", ids.hold)[0]
    assert revoked.get("terminated") is True and revoked.get("signum") == signal.SIGTERM

    # Celery's own CLI, as a user types it.
    inspect = await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            [
                CELERY,
                "-A",
                "tests.interop.celery_app",
                "inspect",
                "ping",
                "-d",
                node,
                "--timeout",
                "10",
            ],
            cwd=ROOT,
            env=bus.celery_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    )
    assert inspect.returncode == 0, inspect.stdout + inspect.stderr
    assert node in inspect.stdout and "pong" in inspect.stdout

    # Flower shows the worker online and every task in its final state.
    wanted = {ids.ok: "SUCCESS", ids.bad: "FAILURE", ids.flaky: "SUCCESS", ids.hold: "REVOKED"}

    def flower_agrees() -> bool:
        status = flower_get("/api/workers?status=1") or {}
        tasks = flower_get("/api/tasks") or {}
        states = {uuid_: (tasks.get(uuid_) or {}).get("state") for uuid_ in wanted}
        return status.get(node) is True and states == wanted

    with anyio.fail_after(30):
        while not await anyio.to_thread.run_sync(flower_agrees):
            await anyio.sleep(0.3)
    task = flower_get(f"/api/task/info/{ids.bad}")
    assert task["exception"].startswith("ValueError(") and "Traceback" in task["traceback"]
    assert task["worker"] == node
    return ids
