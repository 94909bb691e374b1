"""The ``aiocelev`` command on real brokers: malformed input gives a diagnostic line
(never a traceback); SIGINT/SIGTERM stop it cleanly, flush what it sent and leave no
connection behind; passwords never show."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.to_thread
import pytest
import redis

from aiocelev import EventReceiver

from ..brokers._rabbitmq import connection_pids, need_rabbitmqctl
from ..brokers._redis import redis_processes
from ..cli._helpers import Background, assert_no_traceback, json_lines, run_cli
from ._helpers import RawAmqp, RawRedis, valid_body

pytestmark = pytest.mark.timeout(60)


@contextmanager
def private_broker(kind: str, amqp_url: str | None = None) -> Iterator[dict[str, Any]]:
    """A broker URL nobody else uses: an own redis-server, or a private AMQP exchange.

    Yields ``url``, ``raw`` (an unopened raw injector) and ``connections()`` (how many
    client connections the CLI may have open).
    """
    if kind == "redis":
        with redis_processes() as spawn:
            server = spawn()
            admin = redis.Redis(port=server.port)
            raw_redis = RawRedis(server.url)
            raw_redis.prefix = ""

            def redis_connections() -> int:
                return len(admin.client_list()) - 1  # not counting the admin connection

            try:
                yield {"url": server.url, "raw": raw_redis, "connections": redis_connections}
            finally:
                admin.close()
    else:
        need_rabbitmqctl()
        name = f"aiocelev-rel-cli-{uuid.uuid4().hex[:8]}"
        raw_amqp = RawAmqp(str(amqp_url))
        url = f"amqp://guest:guest@127.0.0.1:5672//?exchange={raw_amqp.exchange_name}&connection_name={name}"

        def amqp_connections() -> int:
            return len(connection_pids(name))

        yield {"url": url, "raw": raw_amqp, "connections": amqp_connections}


@pytest.fixture(
    params=[
        pytest.param("amqp", marks=pytest.mark.amqp),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "amqp":
        request.getfixturevalue("amqp_url")
    else:
        request.getfixturevalue("redis_url")
    return str(request.param)


async def _wait_stderr(proc: Background, text: str) -> None:
    await anyio.to_thread.run_sync(proc.wait_for_stderr, text)


async def test_events_json_reports_malformed_messages_on_stderr_without_traceback(
    kind: str,
) -> None:
    with private_broker(kind, "amqp") as broker:
        raw = broker["raw"]
        await raw.open()
        try:
            with Background("events", "--broker", broker["url"], "--json", "--limit", "3") as proc:
                await _wait_stderr(proc, "listening on")
                await raw.publish("task.started", valid_body(0))
                await raw.publish("task.multi", b"\x80\x81 not json")
                await raw.publish("task.started", b"{}", "application/x-python-serialize")
                await raw.publish("task.multi", b'[{"type": "task-started"}]')
                await raw.publish("task.started", valid_body(1))
                await raw.publish("task.started", valid_body(2))
                status = await anyio.to_thread.run_sync(proc.wait, 30)
                out, err = proc.stdout(), proc.stderr()
        finally:
            await raw.close()
    assert status == 0, err
    assert [e["uuid"] for e in json_lines(out)] == ["v0", "v1", "v2"]
    assert_no_traceback(err)
    diagnostics = [line for line in err.splitlines() if "skipped a malformed message" in line]
    assert len(diagnostics) == 3, err
    assert "encoding" in diagnostics[0] or "json" in diagnostics[0]
    assert "content-type" in diagnostics[1]
    assert "application/x-python-serialize" in diagnostics[1]
    assert "not-an-event" in diagnostics[2]


def _wait_for(predicate: Callable[[], bool], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.parametrize(
    ("command", "signum"),
    [("events", signal.SIGINT), ("demo", signal.SIGTERM)],
    ids=["events-SIGINT", "demo-SIGTERM"],
)
async def test_signals_release_every_connection_and_flush(
    kind: str, command: str, signum: int
) -> None:
    """SIGINT/SIGTERM (every command x signal is covered on memory:// by
    tests/cli/test_process.py::test_signals_stop_cleanly): exit 130/143, no traceback, connections back to the baseline.

    ``demo`` publishes to the broker: its final ``worker-offline`` events (sent
    while shutting down) are flushed before it exits.
    """
    name = f"rel{uuid.uuid4().hex[:6]}"
    with private_broker(kind, "amqp") as broker:
        baseline = broker["connections"]()
        raw = broker["raw"]
        options = raw.options if kind == "amqp" else {}
        args = {
            "events": ["events", "--broker", broker["url"]],
            "demo": ["demo", "--no-ui", "--duration", "60", "--workers", "2", "--name", name,
                     "--broker", broker["url"]],
        }[command]  # fmt: skip
        ready = {"events": "listening on", "demo": "running 2 simulated"}[command]
        offline: list[str] = []
        async with EventReceiver(
            broker["url"].split("?")[0] if kind == "amqp" else broker["url"],
            routing_keys=["worker.offline"],
            broker_options=options,
        ) as receiver:
            with Background(*args) as proc:
                await _wait_stderr(proc, ready)
                assert await anyio.to_thread.run_sync(broker["connections"]) > baseline
                proc.signal(signum)
                status = await anyio.to_thread.run_sync(proc.wait, 30)
                err = proc.stderr()
            if command == "demo":
                with anyio.fail_after(10):
                    while len(offline) < 2:
                        event = await receiver.receive()
                        if event.hostname.startswith(name):
                            offline.append(event.hostname)
        gone = await anyio.to_thread.run_sync(
            lambda: _wait_for(lambda: broker["connections"]() == baseline)
        )
        if kind == "amqp":
            await raw.open()
            await raw.close()  # deletes the private exchange
    assert status == 128 + signum, err
    assert_no_traceback(err)
    assert gone, "the command left connections behind"
    if command == "demo":
        assert len(set(offline)) == 2


@pytest.mark.parametrize("scheme", ["amqp", "redis"])
def test_cli_errors_never_show_the_password(scheme: str) -> None:
    """Wrong password / unreachable broker: one masked line, no traceback."""
    port = {"amqp": 5672, "redis": 1}[scheme]
    url = f"{scheme}://admin:Sup3rS3cret@127.0.0.1:{port}/"
    result = run_cli("events", "--broker", url, "--connect-timeout", "1", "-v", timeout=30)
    assert result.returncode != 0
    assert "Sup3rS3cret" not in result.stderr + result.stdout
    assert "***" in result.stderr
    assert_no_traceback(result.stderr)
