"""Remote control ("pidbox") over Redis, byte-compatible with Celery and kombu.

What kombu's ``Mailbox`` / ``Node`` do on Redis (namespace ``celery`` by
default, Celery's ``control_exchange``; every key and channel takes
``global_keyprefix``):

* a request is ``PUBLISH``\\ ed, in kombu's envelope (delivery mode 2, routing
  key ``""``), on the channel of the ``<namespace>.pidbox`` fanout exchange,
  ``/<db>.<namespace>.pidbox``;
* a node ``PSUBSCRIBE``\\ s to that channel and keeps the requests addressed to
  it (every node sees every request: two nodes with one name both answer);
* a client that wants replies binds the list ``<key>.reply.<namespace>.pidbox``
  to the ``reply.<namespace>.pidbox`` direct exchange: it adds
  ``<key>\\x06\\x16\\x06\\x16<list>`` to the set ``_kombu.binding.reply.<namespace>.pidbox``
  (and, as kombu >= 5.6, a deadline for that table in ``_kombu.binding_deadlines``),
  then takes replies off the list with ``BRPOP``; leaving deletes the list and
  the set member;
* a node replies by looking the reply key up in that set and ``LPUSH``\\ ing the
  envelope (delivery mode 1, headers ``ticket`` / ``clock``) onto every list
  bound with it; with no binding (the client is gone) the reply is dropped.

:class:`RedisControl` moves those bytes; requests, clocks and reply collection
are :class:`~aiocelev.brokers.PidboxTransport`'s.  Get it with
:meth:`RedisBroker.control() <aiocelev.brokers.redis.RedisBroker.control>`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, final

import anyio
import anyio.lowlevel
from redis.asyncio.connection import AbstractConnection

from .._control import (
    REQUEST_DELIVERY_MODE,
    ControlRequest,
    parse_request,
    pidbox_exchange,
    reply_exchange,
    reply_queue_name,
)
from .._message import OutgoingMessage
from ._control import PidboxTransport, RawReply
from ._redis_channels import RedisChannels
from ._redis_connection import RedisConnection
from ._redis_envelope import decode_envelope, encode_envelope
from ._redis_errors import REDIS_ERRORS, describe, map_errors
from ._redis_subscription import POLL_INTERVAL, RedisSubscription

__all__ = ["RedisControl"]

logger = logging.getLogger("aiocelev.brokers.redis")

#: kombu's separator inside ``_kombu.binding.<exchange>`` set members.
BINDING_SEP = "\x06\x16"
#: kombu's binding tables and their expiry bookkeeping (kombu >= 5.6).
BINDING_KEY = "_kombu.binding.{exchange}"
BINDING_DEADLINES_KEY = "_kombu.binding_deadlines"
#: kombu keeps a binding table of an expiring queue alive for at least an hour.
BINDING_TTL_MS = 3_600_000

#: Longest wait for the cleanup of a reply queue (it runs shielded).
_CLEANUP_TIMEOUT = 5.0


def binding_member(routing_key: str, queue: str) -> str:
    """A member of a ``_kombu.binding.*`` set: routing key, (empty) pattern, queue."""
    return BINDING_SEP.join((routing_key, "", queue))


@final
class _RedisPidbox:
    """The requests arriving in one node's pidbox (a PSUBSCRIBE to the pidbox channel).

    Reconnects are the subscription's (requests sent during a gap are lost, as
    with Celery); malformed requests are counted in :attr:`malformed`, logged
    and skipped.
    """

    def __init__(self, subscription: RedisSubscription, nodename: str) -> None:
        self._sub = subscription
        self._nodename = nodename
        #: Requests that were not valid envelopes or requests.
        self.malformed = 0

    @property
    def reconnects(self) -> int:
        """Gaps of the underlying subscription."""
        return self._sub.reconnects

    def __repr__(self) -> str:
        return f"<Redis pidbox {self._nodename!r} {self._sub!r}>"

    def __aiter__(self) -> AsyncIterator[ControlRequest]:
        return self

    async def __anext__(self) -> ControlRequest:
        async for message in self._sub:
            if message.error is not None:
                self.malformed += 1
                logger.warning(
                    "%s: ignoring a malformed remote-control request: %s",
                    self._nodename,
                    message.error,
                )
                continue
            request = parse_request(message.body, message.headers, self._nodename, logger)
            if request is None:
                self.malformed += 1
                continue
            return request
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop consuming (closes the pub/sub connection)."""
        await self._sub.aclose()


@final
class _RedisReplyQueue:
    """A client's reply list, read with ``BRPOP`` on a connection of its own.

    One ``BRPOP <list> 0`` at a time is outstanding; each read of its answer is
    bounded and shielded, so cancelling ``__anext__`` (the collector's timeout)
    neither loses a reply nor leaves the connection half-read.  :meth:`aclose`
    closes the connection, deletes the list and removes its binding.
    """

    def __init__(
        self,
        link: RedisConnection,
        conn: AbstractConnection,
        queue: str,
        binding_key: str,
        member: str,
        on_close: Callable[[_RedisReplyQueue], None],
    ) -> None:
        self._link = link
        self._on_close = on_close
        self._conn: AbstractConnection | None = conn
        self._queue = queue
        self._binding_key = binding_key
        self._member = member
        self._buffer: deque[RawReply] = deque()
        self._waiting = False  # a BRPOP was sent and its answer not read yet
        self._reading = False
        self._idle = anyio.Event()
        self._idle.set()
        self._closed = False
        #: Replies that were not valid envelopes (logged and skipped).
        self.malformed = 0

    def __repr__(self) -> str:
        return f"<Redis reply queue {self._queue!r}>"

    def __aiter__(self) -> AsyncIterator[RawReply]:
        return self

    async def __anext__(self) -> RawReply:
        while True:
            if self._buffer:
                return self._buffer.popleft()
            conn = self._conn
            if self._closed or conn is None:
                raise StopAsyncIteration
            self._reading = True
            self._idle = anyio.Event()
            try:
                with anyio.CancelScope(shield=True):
                    await self._read_once(conn)
            finally:
                self._reading = False
                self._idle.set()
            if self._buffer and not self._closed:
                return self._buffer.popleft()  # no checkpoint: never lost to a cancellation
            await anyio.lowlevel.checkpoint()

    async def _read_once(self, conn: AbstractConnection) -> None:
        try:
            if not self._waiting:
                await conn.send_command("BRPOP", self._queue, 0)
                self._waiting = True
            response = await conn.read_response(timeout=POLL_INTERVAL)
        except REDIS_ERRORS as exc:
            # The list outlives the connection, but this queue cannot read it
            # any more: end the stream with the replies received so far.
            logger.warning(
                "Redis %s: reply queue %s lost its connection (%s); "
                "returning the replies received so far",
                self._link.url,
                self._queue,
                describe(exc),
            )
            self._conn = None
            with anyio.CancelScope(shield=True):
                await conn.disconnect(nowait=True)
            return
        if response is None:  # nothing yet (BRPOP with timeout 0 never answers nil)
            return
        self._waiting = False
        if not (isinstance(response, list) and len(response) == 2):
            return
        payload = response[1]
        try:
            message = decode_envelope(payload if isinstance(payload, bytes) else bytes(payload))
        except Exception as exc:  # DecodeError, or a payload that is not bytes at all
            self.malformed += 1
            logger.warning(
                "Redis %s: ignoring a malformed remote-control reply on %s: %s",
                self._link.url,
                self._queue,
                exc,
            )
            return
        self._buffer.append(RawReply(message.body, message.headers))

    async def aclose(self) -> None:
        """Close the connection, delete the list and remove its binding (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._on_close(self)
        with anyio.CancelScope(shield=True):
            if self._reading:
                with anyio.move_on_after(POLL_INTERVAL * 10):
                    await self._idle.wait()
            conn, self._conn = self._conn, None
            if conn is not None:
                # a BRPOP may be outstanding: the connection is not reusable
                await conn.disconnect(nowait=True)
            client = self._link.existing_client
            if client is None:  # the adapter is closed: nothing to clean up with
                return
            with anyio.move_on_after(_CLEANUP_TIMEOUT):
                try:
                    pipe = client.pipeline(transaction=False)
                    pipe.srem(self._binding_key, self._member)
                    pipe.delete(self._queue)
                    await pipe.execute(raise_on_error=False)
                except REDIS_ERRORS as exc:
                    logger.warning(
                        "Redis %s: removing the reply queue %s failed: %s",
                        self._link.url,
                        self._queue,
                        describe(exc),
                    )


@final
class RedisControl(PidboxTransport):
    """The :class:`~aiocelev.brokers.ControlTransport` of a :class:`~aiocelev.brokers.redis.RedisBroker`.

    Get it with ``broker.control()``; it shares the adapter's connection pool.

    :param link: the adapter's connection.
    :param channels: the adapter's channel names.
    :param subscribe: makes a subscription to the given patterns that the
        adapter closes with itself (not opened yet).
    """

    def __init__(
        self,
        link: RedisConnection,
        channels: RedisChannels,
        subscribe: Callable[[list[bytes]], RedisSubscription],
    ) -> None:
        super().__init__(link.options.control_exchange)
        self._link = link
        self._channels = channels
        self._subscribe = subscribe
        self._reply_queues: set[_RedisReplyQueue] = set()

    def __repr__(self) -> str:
        return f"<RedisControl {self._link.url!r} namespace={self.namespace!r}>"

    @property
    def identity(self) -> str:
        pidbox = self._channels.channel_for("", pidbox_exchange(self.namespace))
        return f"{self._link.identity} channel {pidbox}"

    async def open_reply_queue(self, reply_key: str) -> _RedisReplyQueue:
        namespace = self.namespace
        channels = self._channels
        name = reply_queue_name(reply_key, namespace)
        exchange = reply_exchange(namespace)
        binding_key = channels.key(BINDING_KEY.format(exchange=exchange))
        member = binding_member(reply_key, name)
        client = self._link.client()
        conn = self._link.new_blocking_connection()
        try:
            with map_errors(self._link.url, "opening a reply queue"):
                await conn.connect()  # type: ignore[no-untyped-call]
                pipe = client.pipeline(transaction=False)
                pipe.sadd(binding_key, member)
                pipe.zadd(
                    channels.key(BINDING_DEADLINES_KEY),
                    {exchange: int(time.time() * 1000) + BINDING_TTL_MS},
                    gt=True,
                )
                # kombu's deadline bookkeeping is best effort (ZADD GT needs Redis 6.2)
                results = await pipe.execute(raise_on_error=False)
                if isinstance(results[0], BaseException):
                    raise results[0]
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.disconnect(nowait=True)
            raise
        queue = _RedisReplyQueue(
            self._link, conn, channels.key(name), binding_key, member, self._reply_queues.discard
        )
        self._reply_queues.add(queue)
        return queue

    async def publish_request(self, body: bytes, headers: Mapping[str, Any]) -> None:
        exchange = pidbox_exchange(self.namespace)
        message = OutgoingMessage(
            routing_key="", body=body, headers=headers, delivery_mode=REQUEST_DELIVERY_MODE
        )
        client = self._link.client()
        with map_errors(self._link.url, "publishing a remote-control request"):
            await client.publish(
                self._channels.channel_for("", exchange), encode_envelope(message, exchange)
            )

    async def consume_pidbox(self, nodename: str) -> _RedisPidbox:
        pattern = self._channels.pidbox_pattern(pidbox_exchange(self.namespace))
        subscription = self._subscribe([pattern])
        try:
            with map_errors(self._link.url, f"consuming the pidbox of {nodename}"):
                await subscription.open()
        except BaseException:
            await subscription.aclose()
            raise
        return _RedisPidbox(subscription, nodename)

    async def send_reply(
        self, reply_to: Mapping[str, str], body: bytes, headers: Mapping[str, Any]
    ) -> None:
        exchange = reply_to.get("exchange") or reply_exchange(self.namespace)
        routing_key = reply_to.get("routing_key") or ""
        envelope = encode_envelope(
            OutgoingMessage(routing_key=routing_key, body=body, headers=headers), exchange
        )
        channels = self._channels
        client = self._link.client()
        with map_errors(self._link.url, "replying to a remote-control request"):
            members = await client.smembers(channels.key(BINDING_KEY.format(exchange=exchange)))
            queues = []
            for member in members:
                text = member.decode("utf-8", "replace") if isinstance(member, bytes) else member
                parts = str(text).split(BINDING_SEP)
                if len(parts) == 3 and parts[0] == routing_key and parts[2]:
                    queues.append(parts[2])
            if not queues:
                logger.debug(
                    "Redis %s: nobody waits for replies on %r", self._link.url, routing_key
                )
                return
            pipe = client.pipeline(transaction=False)
            for queue in queues:
                pipe.lpush(channels.key(queue), envelope)
            await pipe.execute()

    async def aclose(self) -> None:
        """Delete the reply queues still open (the adapter's ``aclose`` does it first)."""
        for queue in tuple(self._reply_queues):
            await queue.aclose()
