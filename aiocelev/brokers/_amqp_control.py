"""Remote control ("pidbox") over RabbitMQ, byte-compatible with Celery and kombu.

What kombu's ``Mailbox`` / ``Node`` do on RabbitMQ (namespace ``celery`` by
default, Celery's ``control_exchange``):

* requests go to the ``<namespace>.pidbox`` fanout exchange (not durable, not
  auto-delete) with routing key ``""``, JSON, delivery mode 2, priority 0 and
  headers ``clock`` / ``expires``;
* a node consumes ``<nodename>.<namespace>.pidbox`` (exclusive, auto-delete,
  ``x-message-ttl`` 300 s and ``x-expires`` 10 s) bound to that exchange,
  without acks; a second connection consuming the same node name is refused
  by RabbitMQ (``RESOURCE_LOCKED``: :class:`~aiocelev.DuplicateNodeError`);
* a client that wants replies declares ``<key>.reply.<namespace>.pidbox``
  (exclusive, auto-delete, ``x-expires`` 10 s, ``x-message-ttl`` 300 s) bound
  with routing key ``<key>`` to the ``reply.<namespace>.pidbox`` direct
  exchange; a node replies ``{nodename: payload}`` there with delivery mode 1
  and headers ``ticket`` / ``clock``.

:class:`AmqpControl` moves those bytes; requests, clocks and reply collection
are :class:`~aiocelev.brokers.PidboxTransport`'s.  Get it with
:meth:`AmqpBroker.control() <aiocelev.brokers.amqp.AmqpBroker.control>`.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any, final

import aio_pika
import aiormq.exceptions
import anyio
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
)

from .._control import (
    REPLY_QUEUE_EXPIRES,
    REPLY_QUEUE_TTL,
    REQUEST_DELIVERY_MODE,
    ControlRequest,
    parse_request,
    pidbox_exchange,
    reply_exchange,
    reply_queue_name,
)
from .._exceptions import BrokerConnectionError, DuplicateNodeError
from ._amqp_connection import AmqpConnection, close_quietly, ms
from ._amqp_errors import map_errors
from ._control import PidboxTransport, RawReply

__all__ = ["AmqpControl", "pidbox_queue_name"]

logger = logging.getLogger("aiocelev.brokers.amqp")

#: Celery's ``control_queue_ttl`` / ``control_queue_expires`` defaults, which
#: its workers put on their pidbox queues (the same values as on reply queues).
PIDBOX_QUEUE_TTL = REPLY_QUEUE_TTL
PIDBOX_QUEUE_EXPIRES = REPLY_QUEUE_EXPIRES

#: Delivery mode of a node's reply (kombu publishes it with the exchange object).
REPLY_DELIVERY_MODE = 1

#: How often a waiting consumer double-checks that its channel is alive
#: (close callbacks normally wake it at once).
_LIVENESS_POLL = 1.0


def pidbox_queue_name(nodename: str, namespace: str) -> str:
    """A node's pidbox queue: ``<nodename>.<namespace>.pidbox``."""
    return f"{nodename}.{namespace}.pidbox"


def amqp_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """Headers as an AMQP table that keeps their meaning.

    The table encoder under aio-pika writes a Python float as a 32-bit float,
    which rounds an epoch time such as ``expires`` to the nearest 128 seconds
    (often into the past, so nodes drop the request as expired).  A float is
    sent as the next whole second instead: a request lives at most one second
    longer than asked, never shorter.
    """
    return {
        key: math.ceil(value) if isinstance(value, float) and math.isfinite(value) else value
        for key, value in headers.items()
    }


def _message(body: bytes, headers: Mapping[str, Any], delivery_mode: int) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        headers=amqp_headers(headers),
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=delivery_mode,
        priority=0,
    )


class _Consumer:
    """Raw messages consumed (no acks) on one channel, until closed or lost."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._buffer: deque[RawReply] = deque()
        self._wakeup = anyio.Event()
        self._channel: AbstractChannel | None = None
        self._lost = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<AMQP {self._what}>"

    def _attach(self, channel: AbstractChannel) -> None:
        self._channel = channel
        channel.close_callbacks.add(self._on_close)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._closed:
            return
        self._buffer.append(RawReply(message.body, dict(message.headers or {})))
        self._wakeup.set()

    def _on_close(self, *_: Any) -> None:
        self._lost = True
        self._wakeup.set()

    async def _next_raw(self) -> RawReply | None:
        """The next message; ``None`` once closed; raises once the channel is lost."""
        while True:
            if self._buffer:
                return self._buffer.popleft()
            if self._closed:
                return None
            channel = self._channel
            if self._lost or channel is None or channel.is_closed:
                raise BrokerConnectionError(f"{self._what}: the consumer lost its connection")
            self._wakeup = anyio.Event()
            with anyio.move_on_after(_LIVENESS_POLL):
                await self._wakeup.wait()

    async def aclose(self) -> None:
        """Stop consuming; the (auto-delete) queue goes with the channel."""
        if self._closed:
            return
        self._closed = True
        channel, self._channel = self._channel, None
        await close_quietly(channel)
        self._buffer.clear()
        self._wakeup.set()


@final
class _AmqpPidbox(_Consumer):
    """The requests arriving in one node's pidbox queue.

    Ends with :class:`~aiocelev.BrokerConnectionError` when the connection is
    lost (the owner consumes again once the broker is back).
    """

    def __init__(self, nodename: str) -> None:
        super().__init__(f"pidbox of {nodename}")
        self._nodename = nodename

    def __aiter__(self) -> AsyncIterator[ControlRequest]:
        return self

    async def __anext__(self) -> ControlRequest:
        while True:
            raw = await self._next_raw()
            if raw is None:
                raise StopAsyncIteration
            request = parse_request(raw.body, raw.headers, self._nodename, logger)
            if request is not None:
                return request


@final
class _AmqpReplyQueue(_Consumer):
    """A client's reply queue; iteration ends early if its connection is lost."""

    def __aiter__(self) -> AsyncIterator[RawReply]:
        return self

    async def __anext__(self) -> RawReply:
        try:
            raw = await self._next_raw()
        except BrokerConnectionError as exc:
            # The queue is gone with its connection: no reply can come any more.
            logger.warning("%s; returning the replies received so far", exc)
            raise StopAsyncIteration from None
        if raw is None:
            raise StopAsyncIteration
        return raw


@final
class AmqpControl(PidboxTransport):
    """The :class:`~aiocelev.brokers.ControlTransport` of an :class:`~aiocelev.brokers.amqp.AmqpBroker`.

    Get it with ``broker.control()``; it shares the adapter's connection.

    :param connection: the adapter's connection.
    :param identity: where node names must be unique (the masked URL with vhost).
    """

    def __init__(self, connection: AmqpConnection, identity: str) -> None:
        super().__init__(connection.opts.control_exchange)
        self._link = connection
        self._identity = identity
        self._channel: AbstractChannel | None = None
        self._channel_conn: AbstractConnection | None = None
        self._channel_lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"<AmqpControl {self._identity!r} namespace={self.namespace!r}>"

    @property
    def identity(self) -> str:
        return self._identity

    async def _publishing_channel(self, *, wait: bool) -> AbstractChannel:
        """The channel requests and replies are published on (re-opened when closed)."""
        conn = await self._link.get(wait=wait)
        async with self._channel_lock:
            channel = self._channel
            if channel is None or channel.is_closed or self._channel_conn is not conn:
                self._channel = None
                await close_quietly(channel)
                channel = await conn.channel(publisher_confirms=False)
                self._channel, self._channel_conn = channel, conn
            return channel

    async def _declare(self, channel: AbstractChannel, name: str, kind: str) -> AbstractExchange:
        # kombu declares both pidbox exchanges transient and not auto-delete.
        return await channel.declare_exchange(
            name, aio_pika.ExchangeType(kind), durable=False, auto_delete=False
        )

    async def _consume(
        self,
        consumer: _Consumer,
        *,
        queue_name: str,
        exchange: str,
        kind: str,
        routing_key: str,
        arguments: dict[str, Any],
        where: str,
    ) -> None:
        """Declare *queue_name* (exclusive, auto-delete), bind it and consume it into *consumer*.

        :raises DuplicateNodeError: another connection holds the exclusive queue.
        """
        conn = await self._link.get(wait=True)
        channel: AbstractChannel | None = None
        try:
            with map_errors(f"{where} on {self._link.current_masked}"):
                channel = await conn.channel(publisher_confirms=False)
                declared = await self._declare(channel, exchange, kind)
                try:
                    queue = await channel.declare_queue(
                        queue_name,
                        durable=False,
                        exclusive=True,
                        auto_delete=True,
                        arguments=arguments,
                    )
                except aiormq.exceptions.ChannelLockedResource as exc:
                    raise DuplicateNodeError(
                        f"{queue_name} is already consumed on {self._identity} from another "
                        "connection: a node name must be unique"
                    ) from exc
                await queue.bind(declared, routing_key=routing_key)
                consumer._attach(channel)
                await queue.consume(consumer._on_message, no_ack=True)
        except BaseException:
            await close_quietly(channel)
            raise

    async def open_reply_queue(self, reply_key: str) -> _AmqpReplyQueue:
        namespace = self.namespace
        queue_name = reply_queue_name(reply_key, namespace)
        consumer = _AmqpReplyQueue(f"reply queue {queue_name}")
        await self._consume(
            consumer,
            queue_name=queue_name,
            exchange=reply_exchange(namespace),
            kind="direct",
            routing_key=reply_key,
            arguments={
                "x-expires": ms(REPLY_QUEUE_EXPIRES),
                "x-message-ttl": ms(REPLY_QUEUE_TTL),
            },
            where="declaring the reply queue",
        )
        return consumer

    async def publish_request(self, body: bytes, headers: Mapping[str, Any]) -> None:
        with map_errors(f"broadcasting on {self._link.current_masked}", publish=True):
            channel = await self._publishing_channel(wait=True)
            exchange = await self._declare(channel, pidbox_exchange(self.namespace), "fanout")
            await exchange.publish(
                _message(body, headers, REQUEST_DELIVERY_MODE), routing_key="", mandatory=False
            )

    async def consume_pidbox(self, nodename: str) -> _AmqpPidbox:
        pidbox = _AmqpPidbox(nodename)
        await self._consume(
            pidbox,
            queue_name=pidbox_queue_name(nodename, self.namespace),
            exchange=pidbox_exchange(self.namespace),
            kind="fanout",
            routing_key="",
            arguments={
                "x-message-ttl": ms(PIDBOX_QUEUE_TTL),
                "x-expires": ms(PIDBOX_QUEUE_EXPIRES),
            },
            where=f"consuming the pidbox of {nodename}",
        )
        return pidbox

    async def send_reply(
        self, reply_to: Mapping[str, str], body: bytes, headers: Mapping[str, Any]
    ) -> None:
        where = f"replying on {self._link.current_masked}"
        with map_errors(where, publish=True):
            channel = await self._publishing_channel(wait=False)
            exchange_name = reply_to.get("exchange") or reply_exchange(self.namespace)
            exchange = await self._declare(channel, exchange_name, "direct")
            await exchange.publish(
                _message(body, headers, REPLY_DELIVERY_MODE),
                routing_key=reply_to.get("routing_key", ""),
                mandatory=False,
            )

    async def aclose(self) -> None:
        """Close the publishing channel (the adapter's ``aclose`` does it)."""
        channel, self._channel = self._channel, None
        await close_quietly(channel)
