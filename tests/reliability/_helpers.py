"""Shared helpers for the reliability suite: raw injectors on both real brokers,
private redis-server processes, a stallable TCP proxy, bounded waits."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import redis.asyncio as aioredis

from aiocelev import OutgoingMessage
from aiocelev._codec import encode_event
from aiocelev.brokers._redis_envelope import encode_envelope

HOST = "test@reliability"


def event(n: int, type_: str = "task-started", **extra: Any) -> dict[str, Any]:
    """A valid wire event tagged ``uuid=v<n>``."""
    data: dict[str, Any] = {
        "hostname": HOST,
        "utcoffset": 0,
        "pid": 1,
        "clock": n + 1,
        "uuid": f"v{n}",
    }
    data.update(extra)
    data["timestamp"] = 1700000000.0 + n
    data["type"] = type_
    return data


def unique(prefix: str) -> str:
    return f"aiocelev-rel-{prefix}-{uuid.uuid4().hex[:10]}"


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll *predicate* until true (bounded)."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)


@dataclass
class RawAmqp:
    """Publishes arbitrary bytes and properties to a private topic exchange with aio-pika.

    The exchange is declared exactly as the adapter (and Celery) declares ``celeryev``.
    """

    amqp_url: str
    exchange_name: str = field(default_factory=lambda: unique("ex"))
    _conn: Any = None
    _exchange: Any = None

    @property
    def options(self) -> dict[str, Any]:
        return {"exchange": self.exchange_name}

    async def open(self) -> None:
        import aio_pika

        self._conn = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
        channel = await self._conn.channel()
        self._exchange = await channel.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True, auto_delete=False
        )

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        content_type: str | None = "application/json",
        content_encoding: str | None = "utf-8",
    ) -> None:
        import aio_pika

        await self._exchange.publish(
            aio_pika.Message(body, content_type=content_type, content_encoding=content_encoding),
            routing_key=routing_key,
        )

    async def close(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            if self._conn is not None:
                channel = await self._conn.channel()
                await channel.exchange_delete(self.exchange_name)
                await self._conn.close()


@dataclass
class RawRedis:
    """PUBLISHes arbitrary payloads on kombu's event channels, under a private key prefix."""

    redis_url: str
    db: int = 0
    prefix: str = field(default_factory=lambda: unique("pfx") + ":")
    _client: Any = None

    @property
    def options(self) -> dict[str, Any]:
        return {"global_keyprefix": self.prefix}

    def channel(self, routing_key: str) -> str:
        return f"{self.prefix}/{self.db}.celeryev/{routing_key}"

    async def open(self) -> None:
        self._client = aioredis.Redis.from_url(self.redis_url, protocol=2)

    async def publish_raw(self, routing_key: str, payload: bytes) -> int:
        """PUBLISH *payload* as is; returns the number of subscribers that got it."""
        return int(await self._client.publish(self.channel(routing_key), payload))

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        content_type: str | None = "application/json",
        content_encoding: str | None = "utf-8",
    ) -> None:
        """Wrap *body* in kombu's envelope (as a Celery worker would) and PUBLISH it."""
        message = OutgoingMessage(
            routing_key,
            body,
            content_type=content_type,  # type: ignore[arg-type]
            content_encoding=content_encoding,  # type: ignore[arg-type]
        )
        await self.publish_raw(routing_key, encode_envelope(message, "celeryev"))

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._client is not None:
                await self._client.aclose()


Raw = RawAmqp | RawRedis


@asynccontextmanager
async def raw_publisher(kind: str, url: str) -> AsyncIterator[Raw]:
    raw: Raw = RawAmqp(url) if kind == "amqp" else RawRedis(url)
    await raw.open()
    try:
        yield raw
    finally:
        await raw.close()


def valid_body(n: int, **extra: Any) -> bytes:
    return encode_event(event(n, **extra))


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


class StallProxy:
    """A loopback TCP proxy that can stop forwarding (both ways) without closing anything.

    Models a stalled network path: packets are no longer delivered, no RST, no FIN.
    Runs in daemon threads; :meth:`close` closes every socket.
    """

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(50)
        self.port = int(self.listener.getsockname()[1])
        self.forwarding = threading.Event()
        self.forwarding.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
                self.connections += 1
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        while not self._closed:
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            self.forwarding.wait()  # stalled: hold the bytes, send nothing
            if self._closed:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def stall(self) -> None:
        self.forwarding.clear()

    def resume(self) -> None:
        self.forwarding.set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.forwarding.set()
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                try:  # shutdown wakes a thread blocked in recv() and sends the FIN
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
