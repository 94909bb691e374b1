"""Fixtures of the reliability suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from ..brokers._rabbitmq import connection_pids, delete_exchanges, need_rabbitmqctl
from ..brokers._redis import RedisProcess, redis_processes
from ._helpers import unique

_RABBITMQCTL_OK: list[bool] = []


def _need_rabbitmqctl_once() -> None:
    """``need_rabbitmqctl`` (skip without it), probing the node only once per session."""
    if not _RABBITMQCTL_OK:
        need_rabbitmqctl()
        _RABBITMQCTL_OK.append(True)


@dataclass
class Target:
    """A real broker nobody else publishes to: an own redis-server, or a private AMQP exchange."""

    kind: str
    port: int
    options: dict[str, Any] = field(default_factory=dict)
    server: RedisProcess | None = None

    def url(self, port: int | None = None, password: str | None = None) -> str:
        port = self.port if port is None else port
        if self.kind == "amqp":
            return f"amqp://guest:{password or 'guest'}@127.0.0.1:{port}//"
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{port}/0"

    def fast(self, **extra: Any) -> dict[str, Any]:
        """Broker options with quick reconnects (and *extra*)."""
        if self.kind == "amqp":
            base = {"reconnect_delay": 0.1, "reconnect_max_delay": 0.5, "connect_timeout": 2}
        else:
            base = {"reconnect_delay": 0.05, "reconnect_max_delay": 0.5, "socket_timeout": 2}
        return {**self.options, **base, **extra}

    def named(self, name: str, **extra: Any) -> dict[str, Any]:
        """:meth:`fast` options that also name every connection *name*."""
        key = "connection_name" if self.kind == "amqp" else "client_name"
        return self.fast(**{key: name}, **extra)

    def connections(self, name: str) -> int:
        """How many connections named *name* the server has open (blocking call)."""
        if self.kind == "amqp" and name == "":
            _need_rabbitmqctl_once()
            return 0
        if self.kind == "amqp":
            _need_rabbitmqctl_once()
            return len(connection_pids(name))
        admin = redis.Redis(port=self.port)
        try:
            return sum(1 for c in admin.client_list() if c.get("name") == name)
        finally:
            admin.close()


@pytest.fixture(
    params=[
        pytest.param("amqp", marks=pytest.mark.amqp),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
async def target(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    if request.param == "amqp":
        amqp_url = request.getfixturevalue("amqp_url")
        exchange = unique("ex")
        try:
            yield Target("amqp", 5672, {"exchange": exchange})
        finally:
            await delete_exchanges(amqp_url, exchange)
    else:
        request.getfixturevalue("redis_url")
        with redis_processes() as spawn:
            server = spawn()
            yield Target("redis", server.port, server=server)
