"""Connections of the Redis adapter: the pool (direct or through Sentinel) and its state.

One :class:`RedisConnection` per adapter owns the connection pool that
publishes, replies and runs short commands, makes the dedicated connections
subscriptions and reply queues block on, asks Sentinel where the master is,
and keeps the up/down state of the publishing side: after a connection error,
publishes fail fast (without touching the network) until the backoff delay
has passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, final

import anyio

try:
    import redis.asyncio as aioredis
    from redis.asyncio.connection import (
        AbstractConnection,
        Connection,
        ConnectionPool,
        SSLConnection,
        UnixDomainSocketConnection,
    )
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import (
        Sentinel,
        SentinelConnectionPool,
        SentinelManagedConnection,
        SentinelManagedSSLConnection,
    )
    from redis.backoff import NoBackoff
except ImportError as _exc:  # pragma: no cover - exercised without the extra
    from .._exceptions import MissingDependencyError

    raise MissingDependencyError(
        f"the redis:// adapter needs the 'redis' extra ({_exc}): pip install 'aiocelev[redis]'"
    ) from _exc

from .._backoff import Backoff
from .._exceptions import BrokerConnectionError, ClosedError
from .._url import mask_url
from ._redis_errors import REDIS_ERRORS, describe, map_errors
from ._redis_options import ParsedUrl, RedisOptions, parse_redis_url

__all__ = ["RedisConnection"]

logger = logging.getLogger("aiocelev.brokers.redis")


def _ssl_kwargs(ssl: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in ssl.items():
        if key == "ssl_cert_reqs" and isinstance(value, str):
            text = value.strip().lower()
            value = {
                "cert_required": "required",
                "cert_optional": "optional",
                "cert_none": "none",
            }.get(text, text)
        if key == "ssl_check_hostname" and isinstance(value, str):
            value = value.strip().lower() in ("1", "true", "yes", "on")
        out[key] = value
    return out


@final
class RedisConnection:
    """The pool, Sentinel, and the up/down state of one adapter.

    :param url: the broker URL (passwords are masked in everything it reports).
    :param options: keyword options, see :class:`RedisOptions`.
    """

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        self.parsed: ParsedUrl = parse_redis_url(url, options)
        self.url = mask_url(url)
        self._pool: ConnectionPool | None = None
        self._sentinel: Sentinel | None = None
        self._client: aioredis.Redis | None = None
        self.closed = False
        self._backoff = Backoff(self.options.reconnect_delay, self.options.reconnect_max_delay)
        self._down_until = 0.0
        self._down_since: float | None = None
        self._last_error = ""
        self._master_checked = 0.0
        #: Times a publish found the connection lost and later succeeded again.
        self.publish_reconnects = 0
        #: Gaps of every subscription made through this connection.
        self.subscription_gaps = 0

    @property
    def options(self) -> RedisOptions:
        """The effective options."""
        return self.parsed.options

    @property
    def identity(self) -> str:
        """The server (or Sentinel set and master name) this connects to, without secrets."""
        parsed = self.parsed
        where = ",".join(
            e.path if e.path is not None else f"{e.host}:{e.port}" for e in parsed.endpoints
        )
        if parsed.sentinel:
            where = f"sentinel {where} master {parsed.options.master_name}"
        return f"{parsed.scheme}://{where}"

    # -- connections ------------------------------------------------------

    def _connection_kwargs(self) -> dict[str, Any]:
        o = self.options
        kwargs: dict[str, Any] = {
            "db": self.parsed.db,
            "username": self.parsed.username,
            "password": self.parsed.password,
            "socket_timeout": o.socket_timeout,
            "client_name": o.client_name,
            "retry": Retry(NoBackoff(), 1),
            # RESP2: pub/sub messages are plain replies (not RESP3 push frames),
            # the same protocol kombu speaks
            "protocol": 2,
        }
        if self.parsed.endpoints[0].path is None or self.parsed.sentinel:
            kwargs["socket_connect_timeout"] = o.socket_connect_timeout
            kwargs["socket_keepalive"] = o.socket_keepalive
        if self.parsed.tls:
            kwargs.update(_ssl_kwargs(o.ssl))
        return kwargs

    def ensure_pool(self) -> ConnectionPool:
        """The connection pool, created on first use.

        :raises ClosedError: after :meth:`aclose`.
        """
        if self.closed:
            raise ClosedError(f"the Redis broker {self.url} is closed")
        if self._pool is not None:
            return self._pool
        kwargs = self._connection_kwargs()
        parsed = self.parsed
        if parsed.sentinel:
            sentinel_kwargs = dict(parsed.options.sentinel_kwargs or {})
            for key in ("socket_timeout", "socket_connect_timeout", "socket_keepalive"):
                sentinel_kwargs.setdefault(key, kwargs.get(key))
            sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
                [(e.host, e.port) for e in parsed.endpoints],
                min_other_sentinels=parsed.options.min_other_sentinels,
                sentinel_kwargs=sentinel_kwargs,
                **{k: v for k, v in kwargs.items() if k not in ("username", "password")},
            )
            connection_class = (
                SentinelManagedSSLConnection if parsed.tls else SentinelManagedConnection
            )
            client = sentinel.master_for(
                parsed.options.master_name or "",
                redis_class=aioredis.Redis,
                connection_class=connection_class,
                username=parsed.username,
                password=parsed.password,
            )
            self._sentinel = sentinel
            pool = client.connection_pool
            assert isinstance(pool, ConnectionPool)
        else:
            endpoint = parsed.endpoints[0]
            if endpoint.path is not None:
                pool = ConnectionPool(
                    connection_class=UnixDomainSocketConnection, path=endpoint.path, **kwargs
                )
            else:
                pool = ConnectionPool(
                    connection_class=SSLConnection if parsed.tls else Connection,
                    host=endpoint.host,
                    port=endpoint.port,
                    **kwargs,
                )
            client = aioredis.Redis(connection_pool=pool)
        self._pool = pool
        self._client = client
        return pool

    def client(self) -> aioredis.Redis:
        """The pooled client (for publishes and short commands).

        :raises ClosedError: after :meth:`aclose`.
        """
        self.ensure_pool()
        assert self._client is not None
        return self._client

    @property
    def existing_client(self) -> aioredis.Redis | None:
        """The pooled client if the pool was made and is not closed yet (also while closing)."""
        return self._client

    def new_blocking_connection(self) -> AbstractConnection:
        """A connection of its own, not in the pool, for blocking reads (not yet connected).

        Its reads have no socket timeout: the caller bounds each read itself.
        """
        pool = self.ensure_pool()
        conn: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
        conn.socket_timeout = None
        return conn

    async def master_address(self) -> tuple[str, int] | None:
        """The master's address according to Sentinel (``None`` if not asked or unknown)."""
        pool = self._pool
        if not isinstance(pool, SentinelConnectionPool):
            return None
        try:
            address = await pool.sentinel_manager.discover_master(pool.service_name)
        except REDIS_ERRORS as exc:
            logger.debug("Redis %s: Sentinel query failed: %s", self.url, describe(exc))
            return None
        return (str(address[0]), int(address[1]))

    async def follow_master(self, now: float) -> None:
        """Sentinel: at most every ``sentinel_check_interval``, ask where the master is.

        A demoted master still accepts PUBLISH (locally); asking Sentinel makes
        the pool close idle connections to an old master when the address changed.
        """
        if not self.parsed.sentinel:
            return
        if now - self._master_checked < self.options.sentinel_check_interval:
            return
        self._master_checked = now
        pool = self._pool
        if isinstance(pool, SentinelConnectionPool):
            await pool.get_master_address()  # type: ignore[no-untyped-call]

    async def ping(self) -> None:
        """Check that Redis answers.

        :raises BrokerConnectionError: Redis (or every Sentinel) is unreachable.
        """
        client = self.client()
        with map_errors(self.url, "connect"):
            await client.ping()
        self.mark_up()

    # -- up / down state of the publishing side ------------------------------

    def check_available(self, now: float) -> None:
        """Fail fast while the reconnect backoff after a lost connection runs.

        :raises BrokerConnectionError: Redis was found unreachable and the next
            attempt is not due yet.
        """
        if now < self._down_until:
            raise BrokerConnectionError(
                f"Redis {self.url} is unavailable ({self._last_error}); "
                f"next reconnect attempt in {self._down_until - now:.2f}s"
            )

    def mark_up(self) -> None:
        """A command succeeded: the connection is (back) up."""
        if self._down_since is not None:
            self.publish_reconnects += 1
            logger.warning(
                "Redis %s: connection restored after %.2fs",
                self.url,
                time.monotonic() - self._down_since,
            )
            self._down_since = None
        self._backoff.reset()
        self._down_until = 0.0

    def mark_down(self, exc: BaseException) -> None:
        """A command failed for lack of a connection: back off."""
        now = time.monotonic()
        delay = self._backoff.next_delay()
        self._down_until = now + delay
        self._last_error = describe(exc)
        if self._down_since is None:
            self._down_since = now
            logger.warning(
                "Redis %s: connection lost (%s); publishes fail fast until it is back",
                self.url,
                self._last_error,
            )
        else:
            logger.debug(
                "Redis %s: still down (%s); next try in %.2fs", self.url, self._last_error, delay
            )

    # -- closing ----------------------------------------------------------

    async def aclose(self) -> None:
        """Close the pool and the Sentinel connections (idempotent)."""
        self.closed = True
        pool, self._pool = self._pool, None
        self._client = None
        sentinel, self._sentinel = self._sentinel, None
        with anyio.CancelScope(shield=True):
            if pool is not None:
                try:
                    await pool.disconnect()
                except REDIS_ERRORS:
                    pass
            if sentinel is not None:
                for node in sentinel.sentinels:
                    try:
                        await node.aclose()
                    except REDIS_ERRORS:
                        pass
