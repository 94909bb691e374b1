"""Redis adapter: kombu-compatible pub/sub on ``redis.asyncio`` (extra ``redis``).

URLs (kombu's spellings)::

    redis://[[user]:password@]host[:port][/db][?option=value...]
    rediss://...                       (TLS; ssl_cert_reqs=required|optional|none, ...)
    redis+socket:///path/to/redis.sock[?virtual_host=db]
    sentinel://host:26379[/db];sentinel://host2:26379?master_name=mymaster

Celery events on Redis are *fanout* messages on Redis PUB/SUB: kombu publishes
``PUBLISH [global_keyprefix]/<db>.celeryev/<routing.key> <envelope>`` where the
envelope is kombu's JSON wrapper with a base64 body, and receivers
``PSUBSCRIBE`` to ``/<db>.celeryev/*``.  This adapter writes the same bytes
and subscribes the same way, so it interoperates with Celery workers, ``celery
events`` and Flower in both directions.

Options (keywords of :func:`from_url`, or a kombu-style ``transport_options``
mapping, or the URL's query string; keywords win): see :class:`RedisOptions`
and ``docs/brokers/redis.md``.

Guarantees are those of Redis pub/sub: at most once, nothing is stored, and a
message published while a subscriber is (re)connecting is lost.  Subscriptions
reconnect by themselves with jittered, capped backoff and count each gap in
:attr:`RedisSubscription.reconnects`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, final

import anyio
import anyio.lowlevel

try:
    import redis.asyncio as aioredis
    import redis.exceptions as redis_exc
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
from .._clock import LamportClock, valid_clock
from .._codec import decode_envelope, encode_envelope, loads
from .._control import (
    REQUEST_DELIVERY_MODE,
    build_control_body,
    encode_control_body,
    match_reply,
    new_reply_key,
    new_ticket,
    pidbox_exchange,
    reply_exchange,
    reply_limit,
    reply_queue_name,
    reply_to_mapping,
)
from .._exceptions import (
    AiocelevError,
    BrokerConnectionError,
    BrokerError,
    ClosedError,
    DecodeError,
    PublishError,
)
from .._message import KOMBU_ENVELOPE, IncomingMessage, OutgoingMessage
from .._url import mask_url
from ._redis_options import ParsedUrl, RedisOptions, glob_escape, parse_redis_url
from ._topic import compile_bindings

__all__ = ["RedisBroker", "RedisOptions", "RedisSubscription", "from_url"]

logger = logging.getLogger("aiocelev.brokers.redis")

#: kombu's separator inside ``_kombu.binding.<exchange>`` set members.
_BINDING_SEP = "\x06\x16"
#: kombu's binding tables and their expiry bookkeeping (kombu >= 5.6).
_BINDING_KEY = "_kombu.binding.{exchange}"
_BINDING_DEADLINES_KEY = "_kombu.binding_deadlines"
#: kombu keeps a binding table of an expiring queue alive for at least an hour.
_BINDING_TTL_MS = 3_600_000

#: How long one read on a pub/sub connection may block before the reader looks
#: at its state again (closing, health checks); also bounds how long a
#: cancellation of ``__anext__`` waits for an in-flight read to finish.
_POLL_INTERVAL = 0.2

#: Most further responses taken from the connection's buffers in one read pass.
_DRAIN_MAX = 255

#: Errors of the redis client that mean "the connection is unusable".
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis_exc.ConnectionError,
    redis_exc.TimeoutError,
    OSError,
)
#: Every error an operation on Redis may raise that the adapter translates.
_REDIS_ERRORS: tuple[type[BaseException], ...] = (
    *_CONNECTION_ERRORS,
    redis_exc.RedisError,
    TimeoutError,
)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _translate(exc: BaseException, url: str, doing: str) -> AiocelevError:
    """Map a redis-py (or socket) exception to the aiocelev exception tree."""
    what = f"Redis {url}: {doing} failed ({_describe(exc)})"
    if isinstance(exc, _CONNECTION_ERRORS):
        return BrokerConnectionError(what)
    if isinstance(exc, redis_exc.ResponseError) and doing.startswith("publish"):
        return PublishError(what)
    return BrokerError(what)


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


def _fanout_prefix(parsed: ParsedUrl) -> str:
    value = parsed.options.fanout_prefix
    if value is True:
        return f"/{parsed.db}."
    if value is False or value == "":
        return ""
    return str(value).format(db=parsed.db)  # as kombu: "{{db}}" is a literal "{db}"


@final
class RedisSubscription:
    """A PSUBSCRIBE on a connection of its own; see the module docstring.

    Messages are yielded as :class:`~aiocelev.IncomingMessage` with the routing
    key taken from the channel name and the raw envelope as body (content type
    ``KOMBU_ENVELOPE``); the core codec unwraps it.

    Cancelling ``__anext__`` never loses a message or breaks the connection.
    """

    def __init__(
        self,
        broker: RedisBroker,
        patterns: Sequence[bytes],
        matches: Callable[[str], bool],
        match_all: bool,
    ) -> None:
        self._broker = broker
        self._patterns = tuple(patterns)
        self._matches = matches
        self._match_all = match_all
        self._conn: AbstractConnection | None = None
        self._buffer: deque[IncomingMessage] = deque()
        self._closed = False
        self._reading = False
        self._reconnect_scope: anyio.CancelScope | None = None
        self._idle = anyio.Event()
        self._idle.set()
        self._backoff = Backoff(broker.options.reconnect_delay, broker.options.reconnect_max_delay)
        self._last_rx = 0.0
        self._ping_sent_at: float | None = None
        self._lost_at: float | None = None
        self._master_checked = time.monotonic()
        # de-duplication of one PUBLISH matching several of our patterns
        self._last_channel: bytes | None = None
        self._last_data: bytes | None = None
        self._last_patterns: set[bytes] = set()
        #: How many times the connection was lost and re-established (each is a gap).
        self.reconnects = 0
        #: Messages delivered to the caller.
        self.received = 0
        #: Messages dropped because their routing key did not match (Redis globs over-match).
        self.filtered = 0

    @property
    def patterns(self) -> tuple[str, ...]:
        """The PSUBSCRIBE patterns (with any ``global_keyprefix``)."""
        return tuple(p.decode("utf-8") for p in self._patterns)

    @property
    def connected(self) -> bool:
        """Whether the subscription currently has a live connection."""
        return self._conn is not None

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("live" if self._conn else "reconnecting")
        return f"<RedisSubscription {self.patterns!r} {state} reconnects={self.reconnects}>"

    # -- connection -------------------------------------------------------

    async def _open(self) -> None:
        """Connect, PSUBSCRIBE and wait until Redis confirmed every pattern."""
        conn = self._broker._new_pubsub_connection()
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
            await conn.send_command("PSUBSCRIBE", *self._patterns)
            pending = set(self._patterns)
            limit = self._broker.options.socket_connect_timeout or 10.0
            with anyio.fail_after(max(limit, 1.0) + (self._broker.options.socket_timeout or 0)):
                while pending:
                    # no read timeout: this connection's socket_timeout is None
                    response = await conn.read_response()
                    if isinstance(response, list) and response and response[0] == b"psubscribe":
                        pending.discard(response[1])
                    elif isinstance(response, list):
                        self._handle(response)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.disconnect(nowait=True)
            raise
        if self._closed:  # closed by another task meanwhile
            with anyio.CancelScope(shield=True):
                await conn.disconnect(nowait=True)
            return
        self._conn = conn
        self._last_rx = time.monotonic()
        self._ping_sent_at = None

    async def _drop(self, reason: str) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await conn.disconnect(nowait=True)
        if self._closed:
            return
        self.reconnects += 1
        self._broker._sub_reconnects += 1
        self._lost_at = time.monotonic()
        logger.warning(
            "Redis %s: pub/sub connection of %s lost (%s); reconnecting. Events published "
            "until it is back are lost (gap #%d). If this repeats under load the subscriber "
            "may be too slow for Redis' 'client-output-buffer-limit pubsub'.",
            self._broker.url,
            ",".join(self.patterns),
            reason,
            self.reconnects,
        )

    async def _reconnect(self) -> None:
        while not self._closed:
            try:
                await self._open()
            except _REDIS_ERRORS as exc:
                delay = self._backoff.next_delay()
                attempt = self._backoff.attempts
                logger.log(
                    logging.WARNING if attempt == 1 or attempt % 20 == 0 else logging.INFO,
                    "Redis %s: resubscribe attempt %d failed (%s); retrying in %.2fs",
                    self._broker.url,
                    attempt,
                    _describe(exc),
                    delay,
                )
                await anyio.sleep(delay)
                continue
            self._backoff.reset()
            down = time.monotonic() - self._lost_at if self._lost_at is not None else 0.0
            logger.warning(
                "Redis %s: resubscribed to %s after %.2fs (gap #%d)",
                self._broker.url,
                ",".join(self.patterns),
                down,
                self.reconnects,
            )
            return

    # -- reading ----------------------------------------------------------

    def _handle(self, response: list[Any]) -> None:
        kind = response[0]
        if kind == b"pmessage" and len(response) == 4:
            pattern, channel, data = response[1], response[2], response[3]
        elif kind == b"message" and len(response) == 3:
            pattern, channel, data = b"", response[1], response[2]
        else:  # pong, (p)subscribe confirmations
            return
        if len(self._patterns) > 1:
            # One PUBLISH matching several of our patterns arrives once per
            # pattern, back to back; deliver it once (AMQP queue semantics).
            if (
                channel == self._last_channel
                and data == self._last_data
                and pattern not in self._last_patterns
            ):
                self._last_patterns.add(pattern)
                return
            self._last_channel, self._last_data = channel, data
            self._last_patterns = {pattern}
        routing_key = self._broker._routing_key_of(channel, data)
        if routing_key is None:
            if not self._match_all:
                self.filtered += 1
                return
            routing_key = ""
        elif not self._matches(routing_key):
            self.filtered += 1
            return
        self.received += 1
        self._buffer.append(
            IncomingMessage(
                routing_key=routing_key,
                body=bytes(data),
                content_type=KOMBU_ENVELOPE,
                content_encoding=None,
            )
        )

    async def _read_once(self, conn: AbstractConnection) -> None:
        """One bounded read (runs shielded: a partial read is never abandoned)."""
        try:
            response = await conn.read_response(timeout=_POLL_INTERVAL)
        except _REDIS_ERRORS as exc:
            await self._drop(_describe(exc))
            return
        now = time.monotonic()
        if response is None:
            if self._broker._parsed.sentinel and await self._master_moved(conn, now):
                return
            interval = self._broker.options.health_check_interval
            if self._ping_sent_at is None:
                if now - self._last_rx >= interval:
                    try:
                        await conn.send_command("PING")
                    except _CONNECTION_ERRORS as exc:
                        await self._drop(_describe(exc))
                        return
                    self._ping_sent_at = now
            elif now - self._ping_sent_at >= interval:
                await self._drop(f"no reply to PING within {interval:.0f}s")
            return
        self._last_rx = now
        self._ping_sent_at = None
        if isinstance(response, list) and response:
            self._handle(response)
        # Drain what has already arrived without waiting (a zero timeout only
        # expires when a read would have to wait for the network).
        for _ in range(_DRAIN_MAX):
            try:
                response = await conn.read_response(timeout=0)
            except _REDIS_ERRORS as exc:
                await self._drop(_describe(exc))
                return
            if response is None:
                return
            if isinstance(response, list) and response:
                self._handle(response)

    async def _master_moved(self, conn: AbstractConnection, now: float) -> bool:
        """Sentinel: resubscribe on the new master after a failover (checked while idle)."""
        if now - self._master_checked < self._broker.options.sentinel_check_interval:
            return False
        self._master_checked = now
        address = None
        # this runs shielded: keep a slow or dead Sentinel from delaying cancellation long
        with anyio.move_on_after(min(2.0, self._broker.options.sentinel_check_interval * 2)):
            address = await self._broker._master_address()
        current = (getattr(conn, "host", None), getattr(conn, "port", None))
        if address is None or tuple(address) == current:
            return False
        await self._drop(f"Sentinel reports a new master at {address[0]}:{address[1]}")
        return True

    def __aiter__(self) -> AsyncIterator[IncomingMessage]:
        return self

    async def __anext__(self) -> IncomingMessage:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._buffer:
                return self._buffer.popleft()
            conn = self._conn
            if conn is None:
                # aclose() from another task cancels a reconnect in progress
                with anyio.CancelScope() as self._reconnect_scope:
                    await self._reconnect()
                self._reconnect_scope = None
                continue
            self._reading = True
            self._idle = anyio.Event()
            try:
                with anyio.CancelScope(shield=True):
                    await self._read_once(conn)
            finally:
                self._reading = False
                self._idle.set()
            if self._buffer and not self._closed:
                # No checkpoint between the read and the return: a message
                # that was read is never lost to a cancellation.
                return self._buffer.popleft()
            await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Unsubscribe (close the connection); iteration then ends."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        if self._reconnect_scope is not None:
            self._reconnect_scope.cancel()
        if self._reading:
            with anyio.move_on_after(_POLL_INTERVAL * 10), anyio.CancelScope(shield=True):
                await self._idle.wait()
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await conn.disconnect(nowait=True)
        self._broker._subscriptions.discard(self)


@final
class RedisPidbox:
    """The remote-control requests arriving in one node's pidbox (see :meth:`RedisBroker.consume_control`).

    On Redis a worker's pidbox is a PSUBSCRIBE to ``/<db>.<namespace>.pidbox``
    (the fanout exchange ``celery.pidbox``); every node gets every request and
    keeps those addressed to it.  Reconnects are handled by the subscription
    underneath (requests sent during a gap are lost, as with Celery).
    """

    def __init__(self, subscription: RedisSubscription, nodename: str) -> None:
        self._sub = subscription
        self.nodename = nodename

    @property
    def reconnects(self) -> int:
        """Gaps of the underlying subscription."""
        return self._sub.reconnects

    def __repr__(self) -> str:
        return f"<RedisPidbox {self.nodename!r} {self._sub!r}>"

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        from .._worker import ControlRequest

        async for message in self._sub:
            try:
                envelope = decode_envelope(message.body)
                request = ControlRequest.from_message(loads(envelope.body), envelope.headers)
            except (DecodeError, ValueError) as exc:
                logger.warning(
                    "%s: ignoring a malformed remote-control request: %s", self.nodename, exc
                )
                continue
            return request
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop consuming (closes the pub/sub connection)."""
        await self._sub.aclose()


@final
class RedisBroker:
    """Celery's event bus on Redis pub/sub (kombu ``redis``/``sentinel`` transport compatible).

    Create it with :func:`from_url` (or ``aiocelev.brokers.open_broker``).
    """

    def __init__(self, url: str, **options: Any) -> None:
        self._parsed = parse_redis_url(url, options)
        self._url = mask_url(url)
        self._pool: ConnectionPool | None = None
        self._sentinel: Sentinel | None = None
        self._client: aioredis.Redis | None = None
        self._closed = False
        self._subscriptions: set[RedisSubscription] = set()
        self._backoff = Backoff(self.options.reconnect_delay, self.options.reconnect_max_delay)
        self._down_until = 0.0
        self._down_since: float | None = None
        self._last_error = ""
        self._sub_reconnects = 0
        self._clock = LamportClock()
        prefix = self._parsed.options.global_keyprefix + _fanout_prefix(self._parsed)
        self._prefix = prefix
        self._topic_base = prefix + self.options.exchange
        self._topic_base_b = self._topic_base.encode("utf-8")
        self._topic_slash_b = (self._topic_base + "/").encode("utf-8")
        #: Times a publish found the connection lost and later succeeded again.
        self.publish_reconnects = 0
        self._master_checked = 0.0

    # -- introspection ----------------------------------------------------

    @property
    def url(self) -> str:
        """The broker URL with any password masked."""
        return self._url

    @property
    def options(self) -> RedisOptions:
        """The effective options."""
        return self._parsed.options

    @property
    def db(self) -> int:
        """The Redis database number (only used in channel names: pub/sub ignores it)."""
        return self._parsed.db

    @property
    def reconnects(self) -> int:
        """Gaps on the subscribe side: lost-and-restored pub/sub connections, all subscriptions."""
        return self._sub_reconnects

    def channel_for(self, routing_key: str, exchange: str | None = None) -> str:
        """The channel kombu publishes *routing_key* on (with every prefix)."""
        base = self._prefix + (exchange or self.options.exchange)
        if routing_key and self.options.fanout_patterns:
            return f"{base}/{routing_key}"
        return base

    def pattern_for(self, binding_key: str) -> str:
        """The PSUBSCRIBE pattern of an AMQP *binding_key* (``#`` becomes ``*``)."""
        base = glob_escape(self._topic_base)
        if not self.options.fanout_patterns:
            return base
        key = glob_escape(binding_key).replace("\\*", "*").replace("#", "*")
        return f"{base}/{key}"

    def __repr__(self) -> str:
        return (
            f"<RedisBroker {self._url!r} db={self.db} channel={self.channel_for('<routing.key>')!r}"
            f"{' closed' if self._closed else ''}>"
        )

    # -- connections ------------------------------------------------------

    def _connection_kwargs(self) -> dict[str, Any]:
        o = self.options
        kwargs: dict[str, Any] = {
            "db": self._parsed.db,
            "username": self._parsed.username,
            "password": self._parsed.password,
            "socket_timeout": o.socket_timeout,
            "client_name": o.client_name,
            "retry": Retry(NoBackoff(), 1),
            # RESP2: pub/sub messages are plain replies (not RESP3 push frames),
            # the same protocol kombu speaks
            "protocol": 2,
        }
        if self._parsed.endpoints[0].path is None or self._parsed.sentinel:
            kwargs["socket_connect_timeout"] = o.socket_connect_timeout
            kwargs["socket_keepalive"] = o.socket_keepalive
        if self._parsed.tls:
            kwargs.update(_ssl_kwargs(o.ssl))
        return kwargs

    def _ensure_pool(self) -> ConnectionPool:
        if self._closed:
            raise ClosedError(f"the Redis broker {self._url} is closed")
        if self._pool is not None:
            return self._pool
        kwargs = self._connection_kwargs()
        parsed = self._parsed
        if parsed.sentinel:
            sentinel_kwargs = dict(parsed.options.sentinel_kwargs or {})
            for key in ("socket_timeout", "socket_connect_timeout", "socket_keepalive"):
                sentinel_kwargs.setdefault(key, kwargs.get(key))
            sentinel = Sentinel(  # type: ignore[no-untyped-call]
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

    def _new_pubsub_connection(self) -> AbstractConnection:
        pool = self._ensure_pool()
        conn: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
        # a pub/sub connection blocks in reads by design; reads are bounded by the reader
        conn.socket_timeout = None
        return conn

    async def _master_address(self) -> tuple[str, int] | None:
        """The master's address according to Sentinel (``None`` if not asked or unknown)."""
        pool = self._pool
        if not isinstance(pool, SentinelConnectionPool):
            return None
        try:
            address = await pool.sentinel_manager.discover_master(pool.service_name)
        except _REDIS_ERRORS as exc:
            logger.debug("Redis %s: Sentinel query failed: %s", self._url, _describe(exc))
            return None
        return (str(address[0]), int(address[1]))

    def _client_or_raise(self) -> aioredis.Redis:
        self._ensure_pool()
        assert self._client is not None
        return self._client

    async def connect(self) -> None:
        """Check that Redis answers (idempotent; connections are opened on demand).

        :raises BrokerConnectionError: Redis (or every Sentinel) is unreachable.
        """
        client = self._client_or_raise()
        try:
            await client.ping()
        except _REDIS_ERRORS as exc:
            raise _translate(exc, self._url, "connect") from exc
        self._mark_up()

    def _mark_up(self) -> None:
        if self._down_since is not None:
            self.publish_reconnects += 1
            logger.warning(
                "Redis %s: connection restored after %.2fs",
                self._url,
                time.monotonic() - self._down_since,
            )
            self._down_since = None
        self._backoff.reset()
        self._down_until = 0.0

    def _mark_down(self, exc: BaseException) -> None:
        now = time.monotonic()
        delay = self._backoff.next_delay()
        self._down_until = now + delay
        self._last_error = _describe(exc)
        if self._down_since is None:
            self._down_since = now
            logger.warning(
                "Redis %s: connection lost (%s); publishes fail fast until it is back",
                self._url,
                self._last_error,
            )
        else:
            logger.debug(
                "Redis %s: still down (%s); next try in %.2fs", self._url, self._last_error, delay
            )

    # -- publishing -------------------------------------------------------

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """PUBLISH every message (one pipelined round trip for a batch).

        :raises BrokerConnectionError: Redis is unreachable right now (raised at once,
            without touching the network, while the reconnect backoff runs).
        :raises ClosedError: after :meth:`aclose`.
        """
        client = self._client_or_raise()
        if not messages:
            return
        now = time.monotonic()
        if now < self._down_until:
            raise BrokerConnectionError(
                f"Redis {self._url} is unavailable ({self._last_error}); "
                f"next reconnect attempt in {self._down_until - now:.2f}s"
            )
        exchange = self.options.exchange
        try:
            if (
                self._parsed.sentinel
                and now - self._master_checked >= self.options.sentinel_check_interval
            ):
                # A demoted master still accepts PUBLISH (locally): follow a
                # failover by asking Sentinel; idle pooled connections to an old
                # master are closed when the address changed.
                self._master_checked = now
                pool = self._pool
                if isinstance(pool, SentinelConnectionPool):
                    await pool.get_master_address()  # type: ignore[no-untyped-call]
            if len(messages) == 1:
                m = messages[0]
                await client.publish(self.channel_for(m.routing_key), encode_envelope(m, exchange))
            else:
                pipe = client.pipeline(transaction=False)
                for m in messages:
                    pipe.publish(self.channel_for(m.routing_key), encode_envelope(m, exchange))
                await pipe.execute()
        except _CONNECTION_ERRORS as exc:
            self._mark_down(exc)
            raise _translate(exc, self._url, "publish") from exc
        except redis_exc.RedisError as exc:
            raise _translate(exc, self._url, "publish") from exc
        self._mark_up()

    # -- subscribing ------------------------------------------------------

    def _routing_key_of(self, channel: bytes, data: bytes) -> str | None:
        if channel.startswith(self._topic_slash_b):
            return channel[len(self._topic_slash_b) :].decode("utf-8", "replace")
        # fanout_patterns=False (or a routing key of ''): only the envelope knows it
        try:
            envelope = loads(data)
        except DecodeError:
            return None
        if type(envelope) is not dict:
            return None
        props = envelope.get("properties")
        info = props.get("delivery_info") if type(props) is dict else None
        key = info.get("routing_key") if type(info) is dict else None
        return key if type(key) is str else None

    async def subscribe(self, binding_keys: Sequence[str]) -> RedisSubscription:
        """PSUBSCRIBE to the channels of *binding_keys* (AMQP topic syntax).

        Live when this returns (Redis confirmed every pattern).  Redis globs
        over-match (``*`` also matches dots), so messages are filtered again by
        AMQP topic rules on their routing key.

        :raises BrokerConnectionError: Redis is unreachable.
        """
        self._ensure_pool()
        keys = list(binding_keys) or ["#"]
        patterns: list[bytes] = []
        for key in keys:
            p = self.pattern_for(key).encode("utf-8")
            if p not in patterns:
                patterns.append(p)
        catch_all = (glob_escape(self._topic_base) + "/*").encode("utf-8")
        if catch_all in patterns:
            patterns = [catch_all]
        match_all = "#" in keys
        sub = RedisSubscription(self, patterns, compile_bindings(keys), match_all)
        try:
            await sub._open()
        except _REDIS_ERRORS as exc:
            raise _translate(exc, self._url, "subscribe") from exc
        self._subscriptions.add(sub)
        return sub

    # -- remote control ---------------------------------------------------

    async def broadcast(
        self,
        method: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        destination: Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Send a remote-control command to workers, as ``celery control`` does.

        The request goes to ``/<db>.<control_exchange>.pidbox``.  With *reply*,
        the replies are collected from kombu's reply list for up to *timeout*
        seconds (or until *limit* replies, or one per *destination*).

        :returns: the replies, ``[{"nodename": {...}}, ...]`` (``[]`` without *reply*).
        """
        client = self._client_or_raise()
        namespace = self.options.control_exchange
        limit = reply_limit(limit, destination)
        gk = self.options.global_keyprefix
        ticket = reply_key = queue = binding_key = member = None
        if reply:
            ticket, reply_key = new_ticket(), new_reply_key()
            queue = gk + reply_queue_name(reply_key, namespace)
            binding_key = gk + _BINDING_KEY.format(exchange=reply_exchange(namespace))
            member = _BINDING_SEP.join((reply_key, "", reply_queue_name(reply_key, namespace)))
        body, headers = build_control_body(
            method,
            arguments,
            destination=destination,
            ticket=ticket,
            reply_to=reply_to_mapping(reply_key, namespace) if reply_key else None,
            clock=self._clock.forward(),
            timeout=timeout,
        )
        message = OutgoingMessage(
            routing_key="",
            body=encode_control_body(body),
            headers=headers,
            delivery_mode=REQUEST_DELIVERY_MODE,
        )
        pidbox = pidbox_exchange(namespace)
        channel = self._prefix + pidbox
        replies: list[dict[str, Any]] = []
        try:
            if binding_key is not None and member is not None:
                pipe = client.pipeline(transaction=False)
                pipe.sadd(binding_key, member)
                pipe.zadd(
                    gk + _BINDING_DEADLINES_KEY,
                    {reply_exchange(namespace): int(time.time() * 1000) + _BINDING_TTL_MS},
                    gt=True,
                )
                await pipe.execute(raise_on_error=False)
            await client.publish(channel, encode_envelope(message, pidbox))
            if reply and queue is not None and ticket is not None:
                await self._collect(client, queue, ticket, timeout, limit, replies)
        except _CONNECTION_ERRORS as exc:
            raise _translate(exc, self._url, f"broadcast {method!r}") from exc
        except redis_exc.RedisError as exc:
            raise _translate(exc, self._url, f"broadcast {method!r}") from exc
        finally:
            if binding_key is not None and member is not None and queue is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    try:
                        pipe = client.pipeline(transaction=False)
                        pipe.srem(binding_key, member)
                        pipe.delete(queue)
                        await pipe.execute(raise_on_error=False)
                    except _REDIS_ERRORS as exc:
                        logger.debug("Redis %s: reply queue cleanup failed: %s", self._url, exc)
        return replies

    async def consume_control(self, nodename: str) -> RedisPidbox:
        """Consume *nodename*'s pidbox, as a Celery worker does on Redis (live when this returns).

        Makes the adapter a :class:`~aiocelev.ControlTransport`, so
        :func:`~aiocelev.worker_events` nodes answer ``celery inspect ping``,
        Flower's ``enable_events`` and friends.

        :raises BrokerConnectionError: Redis is unreachable.
        """
        self._ensure_pool()
        channel = self._prefix + pidbox_exchange(self.options.control_exchange)
        sub = RedisSubscription(self, [glob_escape(channel).encode("utf-8")], lambda _k: True, True)
        try:
            await sub._open()
        except _REDIS_ERRORS as exc:
            raise _translate(exc, self._url, f"consuming the pidbox of {nodename}") from exc
        self._subscriptions.add(sub)
        return RedisPidbox(sub, nodename)

    async def reply(self, request: Any, nodename: str, payload: Any) -> None:
        """Send ``{nodename: payload}`` where a remote-control *request* wants replies.

        Routed as kombu's virtual direct exchange does: the reply envelope is
        LPUSHed onto every list bound to the reply exchange with the request's
        reply routing key (``_kombu.binding.reply.celery.pidbox``); with no
        binding (the client is gone) it is dropped, as with Celery.

        :raises BrokerConnectionError: Redis is unreachable.
        """
        reply_to = request.reply_to
        if not reply_to:
            return
        client = self._client_or_raise()
        if isinstance(request.clock, int):
            self._clock.adjust(request.clock)
        exchange = reply_to.get("exchange") or reply_exchange(self.options.control_exchange)
        routing_key = reply_to.get("routing_key") or ""
        message = OutgoingMessage(
            routing_key=routing_key,
            body=encode_control_body({nodename: payload}),
            headers={"ticket": request.ticket, "clock": self._clock.forward()},
        )
        envelope = encode_envelope(message, exchange)
        gk = self.options.global_keyprefix
        try:
            members = await client.smembers(gk + _BINDING_KEY.format(exchange=exchange))
            queues = []
            for member in members:
                text = member.decode("utf-8", "replace") if isinstance(member, bytes) else member
                parts = str(text).split(_BINDING_SEP)
                if len(parts) == 3 and parts[0] == routing_key and parts[2]:
                    queues.append(parts[2])
            if not queues:
                logger.debug("Redis %s: nobody waits for replies on %r", self._url, routing_key)
                return
            pipe = client.pipeline(transaction=False)
            for queue in queues:
                pipe.lpush(gk + queue, envelope)
            await pipe.execute()
        except _REDIS_ERRORS as exc:
            raise _translate(exc, self._url, f"replying to {request.method!r}") from exc

    async def _collect(
        self,
        client: aioredis.Redis,
        queue: str,
        ticket: str,
        timeout: float,
        limit: int | None,
        replies: list[dict[str, Any]],
    ) -> None:
        deadline = time.monotonic() + timeout
        # keep each BRPOP well below the socket timeout of pooled connections
        step_max = max(0.1, (self.options.socket_timeout or 60.0) / 2)
        while limit is None or len(replies) < limit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            step = min(remaining, step_max)
            item = await client.brpop([queue], timeout=max(step, 0.01))
            if item is None:
                continue
            try:
                msg = decode_envelope(
                    bytes(item[1]) if isinstance(item[1], bytes) else item[1].encode()
                )
                reply_body = loads(msg.body)
            except DecodeError as exc:
                logger.warning("Redis %s: ignoring a malformed control reply: %s", self._url, exc)
                continue
            clock = msg.headers.get("clock")
            if valid_clock(clock):
                self._clock.adjust(clock)
            matched = match_reply(reply_body, msg.headers, ticket)
            if matched is not None:
                replies.append(matched)

    # -- closing ----------------------------------------------------------

    async def __aenter__(self) -> RedisBroker:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every subscription and connection (idempotent)."""
        self._closed = True
        for sub in list(self._subscriptions):
            await sub.aclose()
        self._subscriptions.clear()
        pool, self._pool = self._pool, None
        self._client = None
        sentinel, self._sentinel = self._sentinel, None
        with anyio.CancelScope(shield=True):
            if pool is not None:
                try:
                    await pool.disconnect()
                except _REDIS_ERRORS:
                    pass
            if sentinel is not None:
                for node in sentinel.sentinels:
                    try:
                        await node.aclose()
                    except _REDIS_ERRORS:
                        pass


def from_url(url: str, **options: Any) -> RedisBroker:
    """Create (but do not connect) a :class:`RedisBroker`.

    Options are keywords (``from_url(url, global_keyprefix="app:")``), a kombu
    ``transport_options`` mapping (``from_url(url, transport_options={...})``,
    e.g. Celery's ``broker_transport_options`` as it is) and/or the URL's query
    string; keywords win.  kombu options that only concern queues
    (``visibility_timeout``...) are accepted and ignored.

    :raises ConfigurationError: bad URL or option.
    """
    return RedisBroker(url, **options)
