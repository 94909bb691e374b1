"""Helpers for tests that poke the local RabbitMQ server with ``rabbitmqctl``."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import pytest

from ..conftest import AMQP_URL

RABBITMQCTL = shutil.which("rabbitmqctl")
RABBITMQ_SERVER = shutil.which("rabbitmq-server")

#: How long a restarted RabbitMQ may take to accept AMQP connections again.
READY_DEADLINE = 120.0

logger = logging.getLogger("tests.rabbitmq")


def need_rabbitmqctl() -> str:
    """The rabbitmqctl path, or skip the test."""
    if RABBITMQCTL is None:
        pytest.skip("rabbitmqctl is not available")
    probe = subprocess.run([RABBITMQCTL, "-q", "status"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"rabbitmqctl cannot talk to the node: {probe.stderr.strip()[:200]}")
    return RABBITMQCTL


def ctl(*args: str, timeout: float = 60) -> str:
    """Run rabbitmqctl synchronously; raise on failure; return stdout.

    Never skips (it must work while the app is stopped, to start it again).
    """
    if RABBITMQCTL is None:
        raise RuntimeError("rabbitmqctl is not available")
    result = subprocess.run(
        [RABBITMQCTL, "-q", *args], capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


async def actl(*args: str) -> str:
    """:func:`ctl` in a worker thread."""
    return await anyio.to_thread.run_sync(lambda: ctl(*args))


def list_json(kind: str, *fields: str) -> list[dict[str, Any]]:
    """``rabbitmqctl list_<kind> FIELDS --formatter json``."""
    out = ctl(f"list_{kind}", *fields, "--formatter", "json")
    return json.loads(out) if out.strip() else []


def connection_pids(connection_name: str) -> list[str]:
    """Erlang pids of the connections whose client ``connection_name`` is *connection_name*."""
    pids = []
    for line in ctl("list_connections", "pid", "client_properties").splitlines():
        if f'{{"connection_name","{connection_name}"}}' in line:
            pids.append(line.split("\t", 1)[0])
    return pids


async def close_connections(connection_name: str) -> int:
    """Close (server side) every connection named *connection_name*; how many were closed."""
    pids = await anyio.to_thread.run_sync(lambda: connection_pids(connection_name))
    for pid in pids:
        await actl("close_connection", pid, "aiocelev test: killed on purpose")
    return len(pids)


@asynccontextmanager
async def rabbitmq_stopped(amqp_url: str = AMQP_URL) -> AsyncIterator[None]:
    """``stop_app`` on entry; on exit ALWAYS ``start_app`` and wait until the broker
    at *amqp_url* serves AMQP again (:func:`wait_amqp_ready`), also on failure.

    Other people's tests share this server: keep the block a few seconds long.
    """
    try:
        await actl("stop_app")
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_start_app)
            await wait_amqp_ready(amqp_url)


def _start_app() -> None:
    """Start the RabbitMQ app; start the whole node if it is down."""
    try:
        ctl("start_app")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        if RABBITMQ_SERVER is None:
            raise
        logger.warning("start_app failed (%s); starting the node", exc)
        subprocess.run([RABBITMQ_SERVER, "-detached"], capture_output=True, timeout=60)
    ctl("await_startup", timeout=READY_DEADLINE)


async def wait_amqp_ready(amqp_url: str = AMQP_URL, deadline: float = READY_DEADLINE) -> None:
    """Wait until the broker accepts an AMQP connection and an exchange declaration.

    ``await_startup`` can return before the listener takes connections; a test
    that restarted RabbitMQ must not hand a refusing broker to the next test.

    :raises TimeoutError: not ready within *deadline* seconds (the last error chained).
    """
    import aio_pika

    from aiocelev.brokers.amqp import from_url

    url = from_url(amqp_url)._endpoints[0].url
    last: BaseException | None = None
    with anyio.move_on_after(deadline):
        while True:
            try:
                with anyio.fail_after(10):
                    conn = await aio_pika.connect(url, timeout=5)
                    async with conn:
                        channel = await conn.channel()
                        # what Celery (and the next test) declares first
                        await channel.declare_exchange(
                            "celeryev", aio_pika.ExchangeType.TOPIC, durable=True
                        )
                return
            except Exception as exc:  # not up yet: refused, reset, channel error...
                last = exc
            await anyio.sleep(0.2)
    raise TimeoutError(
        f"RabbitMQ did not accept AMQP connections within {deadline}s: {last!r}"
    ) from last


async def delete_exchanges(amqp_url: str, *names: str) -> None:
    """Delete test exchanges (pidbox exchanges are not auto-delete and would pile up)."""
    import aio_pika

    from aiocelev.brokers.amqp import from_url

    with anyio.CancelScope(shield=True), anyio.move_on_after(10):
        conn = await aio_pika.connect(from_url(amqp_url)._endpoints[0].url)
        async with conn:
            for name in names:
                channel = await conn.channel()
                await channel.exchange_delete(name)
                await channel.close()
