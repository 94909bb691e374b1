"""A pub/sub subscription of the Redis adapter: PSUBSCRIBE on a connection of its own.

The subscription keeps itself alive: a PING health check notices a silent
server, Sentinel is asked (while idle) whether the master moved, and a lost
connection is re-made with jittered, capped backoff; each gap is counted in
:attr:`RedisSubscription.reconnects` (events published during a gap are lost:
Redis pub/sub stores nothing).

Messages are handed up unwrapped from kombu's envelope (see
:mod:`._redis_envelope`): body, routing key, content type, encoding and headers
as published.  A payload that is not a valid envelope is handed up too, with
:attr:`~aiocelev.IncomingMessage.error` set (reason ``envelope``), so that the
receiver counts and reports it; the stream goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, final

import anyio
import anyio.lowlevel
from redis.asyncio.connection import AbstractConnection

from .._backoff import Backoff
from .._link import LinkMonitor
from .._message import IncomingMessage
from ._redis_channels import RedisChannels
from ._redis_connection import RedisConnection
from ._redis_envelope import unwrap_envelope
from ._redis_errors import CONNECTION_ERRORS, REDIS_ERRORS, describe

__all__ = ["RedisSubscription"]

_HIREDIS_PARSER: type | None
NOT_ENOUGH_DATA: object
try:  # the hiredis parser's reader can be drained directly; otherwise read_response only
    from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser as _HIREDIS_PARSER
except ImportError:  # pragma: no cover - a redis-py without that module
    _HIREDIS_PARSER = None
    NOT_ENOUGH_DATA = object()

logger = logging.getLogger("aiocelev.brokers.redis")

#: How long one read on a pub/sub connection may block before the reader looks
#: at its state again (closing, health checks); also bounds how long a
#: cancellation of ``__anext__`` waits for an in-flight read to finish.
POLL_INTERVAL = 0.2

#: Most further responses taken from the connection's buffers in one read pass.
_DRAIN_MAX = 255

#: Most replies taken straight from the hiredis reader in one read pass.
_FAST_DRAIN_MAX = 4096

#: Most channels whose routing key (and match) is remembered (then forgotten all at once).
_KEYS_KEPT = 1024

#: Most bytes moved from the stream's buffer to the hiredis reader at a time.
#: Not more: each reply taken moves what is left of the reader's buffer to its
#: front, so a large feed costs more than it saves (feeding 15.8 MB of batched
#: event messages and taking every reply: 7.5 ms in 256 KiB pieces, 4.3-4.5 ms
#: in 64 KiB, 3.9 ms in 32 KiB, 4.2 ms in 16 KiB).
_READ_SIZE = 32768


def _hiredis_reader(conn: AbstractConnection) -> Any:
    """The connection's hiredis reader when replies can be taken from it directly, else ``None``.

    Only for the hiredis parser on RESP2 (what the adapter speaks: pub/sub
    messages are plain arrays) while the parser is connected.
    """
    if _HIREDIS_PARSER is None or getattr(conn, "protocol", 2) not in (2, "2", None):
        return None
    parser = getattr(conn, "_parser", None)
    if type(parser) is not _HIREDIS_PARSER or not getattr(parser, "_connected", False):
        return None
    return getattr(parser, "_reader", None)


def _buffered_stream(conn: AbstractConnection) -> Any:
    """The connection's ``asyncio.StreamReader`` when its buffered bytes can be read directly.

    What the hiredis parser reads from (``read_from_socket``); ``None`` when
    the connection is not laid out that way (another redis-py, another
    asyncio), and then every read goes through ``read_response``.  Like
    redis-py's own ``can_read``, this looks at the reader's ``_buffer``:
    asyncio has no public way to ask whether bytes are waiting, nor to take
    them without copying them twice (``read`` slices the buffer, then copies
    the slice into ``bytes``); see :func:`_feed_buffered`.
    """
    parser = getattr(conn, "_parser", None)
    stream = getattr(parser, "_stream", None)
    if (
        isinstance(stream, asyncio.StreamReader)
        and isinstance(getattr(stream, "_buffer", None), bytearray)
        and callable(getattr(stream, "_maybe_resume_transport", None))
    ):
        return stream
    return None


def _feed_buffered(stream: Any, reader: Any) -> None:
    """Move up to ``_READ_SIZE`` of the bytes *stream* holds into the hiredis *reader*.

    What ``stream.read(_READ_SIZE)`` then ``reader.feed(chunk)`` do, with one
    copy instead of three: hiredis copies straight out of the stream's buffer.
    Taking bytes out of the buffer may let a paused transport read again,
    exactly as ``read`` does.
    """
    buffer = stream._buffer
    size = min(len(buffer), _READ_SIZE)
    reader.feed(buffer, 0, size)
    del buffer[:size]
    stream._maybe_resume_transport()


@final
class RedisSubscription:
    """A PSUBSCRIBE on a connection of its own; see the module docstring.

    Cancelling ``__anext__`` never loses a message or breaks the connection.
    """

    def __init__(
        self,
        link: RedisConnection,
        channels: RedisChannels,
        patterns: Sequence[bytes],
        matches: Callable[[str], bool],
        match_all: bool,
        on_close: Callable[[RedisSubscription], None] | None = None,
    ) -> None:
        self._link = link
        self._channels = channels
        self._patterns = tuple(patterns)
        self._matches = matches
        self._match_all = match_all
        self._on_close = on_close
        self._conn: AbstractConnection | None = None
        self._buffer: deque[IncomingMessage] = deque()
        self._closed = False
        self._reading = False
        self._reconnect_scope: anyio.CancelScope | None = None
        self._idle = anyio.Event()
        self._idle.set()
        self._backoff = Backoff(link.options.reconnect_delay, link.options.reconnect_max_delay)
        self._last_rx = 0.0
        self._ping_sent_at: float | None = None
        self._lost_at: float | None = None
        self._master_checked = time.monotonic()
        # de-duplication of one PUBLISH matching several of our patterns
        self._last_channel: bytes | None = None
        self._last_data: bytes | None = None
        self._last_patterns: set[bytes] = set()
        # channel -> (routing key it names, whether that key matches): see _key_of
        self._keys: dict[bytes, tuple[str | None, bool]] = {}
        #: How many times the connection was lost and re-established (each is a gap).
        self.reconnects = 0
        #: Whether this subscription hears the broker now; each loss is a gap.
        self.link = LinkMonitor(link.url)
        #: Messages delivered to the caller.
        self.received = 0
        #: Messages dropped because their routing key did not match (Redis globs over-match).
        self.filtered = 0
        #: Payloads that were not valid kombu envelopes (delivered with ``error`` set).
        self.malformed = 0

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

    async def open(self) -> None:
        """Connect, PSUBSCRIBE and wait until Redis confirmed every pattern.

        Raises what redis-py raises (the caller translates it).
        """
        conn = self._link.new_blocking_connection()
        options = self._link.options
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
            await conn.send_command("PSUBSCRIBE", *self._patterns)
            pending = set(self._patterns)
            limit = options.socket_connect_timeout or 10.0
            with anyio.fail_after(max(limit, 1.0) + (options.socket_timeout or 0)):
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
        self._link.subscription_gaps += 1
        self._lost_at = time.monotonic()
        self.link.lost(reason)
        logger.warning(
            "Redis %s: pub/sub connection of %s lost (%s); reconnecting. Events published "
            "until it is back are lost (gap #%d). If this repeats under load the subscriber "
            "may be too slow for Redis' 'client-output-buffer-limit pubsub'.",
            self._link.url,
            ",".join(self.patterns),
            reason,
            self.reconnects,
        )

    async def _reconnect(self) -> None:
        while not self._closed:
            try:
                await self.open()
            except REDIS_ERRORS as exc:
                delay = self._backoff.next_delay()
                attempt = self._backoff.attempts
                logger.log(
                    logging.WARNING if attempt == 1 or attempt % 20 == 0 else logging.INFO,
                    "Redis %s: resubscribe attempt %d failed (%s); retrying in %.2fs",
                    self._link.url,
                    attempt,
                    describe(exc),
                    delay,
                )
                await anyio.sleep(delay)
                continue
            self._backoff.reset()
            self.link.restored()
            down = time.monotonic() - self._lost_at if self._lost_at is not None else 0.0
            logger.warning(
                "Redis %s: resubscribed to %s after %.2fs (gap #%d)",
                self._link.url,
                ",".join(self.patterns),
                down,
                self.reconnects,
            )
            return

    # -- reading ----------------------------------------------------------

    def _key_of(self, channel: bytes) -> tuple[str | None, bool]:
        """The routing key a channel names (``None``: only the envelope knows) and whether it matches.

        Remembered per channel: a stream uses a handful of channels (one per
        routing key), each seen for every message.
        """
        key = self._channels.routing_key_of(channel)
        known = (key, key is not None and self._matches(key))
        keys = self._keys
        if len(keys) >= _KEYS_KEPT:
            keys.clear()
        keys[channel] = known
        return known

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
        known = self._keys.get(channel)
        if known is None:
            known = self._key_of(channel)
        key = known[0]
        if key is not None:
            # the channel names the routing key: filter before unwrapping
            if not known[1]:
                self.filtered += 1
                return
            message = unwrap_envelope(bytes(data), key)
        else:
            # fanout_patterns=False (or a routing key of ''): only the envelope knows it
            message = unwrap_envelope(bytes(data), "")
            if message.error is not None:
                if not self._match_all:
                    self.filtered += 1
                    return
            elif not self._matches(message.routing_key):
                self.filtered += 1
                return
        if message.error is not None:
            self.malformed += 1
        self.received += 1
        self._buffer.append(message)

    async def _read_once(self, conn: AbstractConnection) -> None:
        """One bounded read (runs shielded: a partial read is never abandoned)."""
        reader = _hiredis_reader(conn)
        stream = _buffered_stream(conn) if reader is not None else None
        if stream is not None and stream._buffer:
            # The event loop has already read bytes off the socket: no need to
            # wait, they are taken below.
            self._last_rx = time.monotonic()
            self._ping_sent_at = None
        else:
            try:
                response = await conn.read_response(timeout=POLL_INTERVAL)
            except REDIS_ERRORS as exc:
                await self._drop(describe(exc))
                return
            now = time.monotonic()
            if response is None:
                await self._idle_checks(conn, now)
                return
            self._last_rx = now
            self._ping_sent_at = None
            if isinstance(response, list) and response:
                self._handle(response)
        # Drain what has already arrived without waiting: first the replies the
        # hiredis reader has already parsed or buffered (no await, no timeout
        # per message), then the bytes the event loop has already read from the
        # socket (fed to the reader straight from the stream's buffer), then
        # one read_response with a zero timeout, which only expires when a
        # read would have to wait for the network (the loop reads the socket
        # meanwhile), and so on.
        taken = 0
        for _ in range(_DRAIN_MAX):
            if reader is not None:
                gets = reader.gets
                handle = self._handle
                while taken < _FAST_DRAIN_MAX:
                    reply = gets()
                    if reply is NOT_ENOUGH_DATA:
                        break
                    taken += 1
                    if type(reply) is list:
                        if reply:
                            handle(reply)
                    elif isinstance(reply, Exception):
                        # what read_response raises (an error reply, a closed connection)
                        await self._drop(describe(reply))
                        return
                if taken >= _FAST_DRAIN_MAX:
                    return
                if stream is not None:
                    if not stream._buffer:
                        # Everything the event loop had read is taken; the
                        # next read waits for more (no zero-timeout read here:
                        # it would cost a timer and a loop iteration to learn
                        # the same).
                        return
                    _feed_buffered(stream, reader)
                    continue
            try:
                response = await conn.read_response(timeout=0)
            except REDIS_ERRORS as exc:
                await self._drop(describe(exc))
                return
            if response is None:
                return
            if isinstance(response, list) and response:
                self._handle(response)

    async def _idle_checks(self, conn: AbstractConnection, now: float) -> None:
        """Nothing arrived within a poll interval: Sentinel failover, health-check PING."""
        if self._link.parsed.sentinel and await self._master_moved(conn, now):
            return
        interval = self._link.options.health_check_interval
        if self._ping_sent_at is None:
            if now - self._last_rx >= interval:
                try:
                    await conn.send_command("PING")
                except CONNECTION_ERRORS as exc:
                    await self._drop(describe(exc))
                    return
                self._ping_sent_at = now
        elif now - self._ping_sent_at >= interval:
            await self._drop(f"no reply to PING within {interval:.0f}s")

    async def _master_moved(self, conn: AbstractConnection, now: float) -> bool:
        """Sentinel: resubscribe on the new master after a failover (checked while idle)."""
        interval = self._link.options.sentinel_check_interval
        if now - self._master_checked < interval:
            return False
        self._master_checked = now
        address = None
        # this runs shielded: keep a slow or dead Sentinel from delaying cancellation long
        with anyio.move_on_after(min(2.0, interval * 2)):
            address = await self._link.master_address()
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
            with anyio.move_on_after(POLL_INTERVAL * 10), anyio.CancelScope(shield=True):
                await self._idle.wait()
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await conn.disconnect(nowait=True)
        if self._on_close is not None:
            self._on_close(self)
