"""Remote control ("pidbox") for the AMQP adapter: a node's mailbox and its replies.

What a Celery worker's pidbox does on RabbitMQ (kombu ``Mailbox`` / ``Node``):

* queue ``<nodename>.<namespace>.pidbox`` (``celery`` namespace by default),
  exclusive, auto-delete, ``x-message-ttl`` 300 s and ``x-expires`` 10 s, bound
  to the ``<namespace>.pidbox`` fanout exchange (not durable) and consumed
  without acks;
* a reply ``{nodename: payload}`` goes to the exchange and routing key named in
  the request's ``reply_to`` (the ``reply.<namespace>.pidbox`` direct
  exchange), JSON, delivery mode 1, headers ``ticket`` and ``clock``.

:class:`AmqpControl` is the :class:`~aiocelev.ControlTransport` used by
:func:`~aiocelev.worker_events` for nodes on an ``amqp://`` broker.  Sending
commands is :meth:`AmqpBroker.broadcast <aiocelev.brokers.amqp.AmqpBroker.broadcast>`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, final

import aio_pika
import anyio
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from .._clock import LamportClock
from .._codec import dumps, loads
from .._control import REPLY_QUEUE_EXPIRES, REPLY_QUEUE_TTL, pidbox_exchange
from .._exceptions import BrokerConnectionError, ClosedError, DecodeError
from .._worker import ControlRequest
from ._amqp_errors import map_errors
from .amqp import AmqpBroker, _close_quietly, _ms

__all__ = ["AmqpControl"]

logger = logging.getLogger("aiocelev.brokers.amqp")

#: Celery's ``control_queue_ttl`` / ``control_queue_expires`` defaults, which
#: its workers put on their pidbox queues (the same values as on reply queues).
PIDBOX_QUEUE_TTL = REPLY_QUEUE_TTL
PIDBOX_QUEUE_EXPIRES = REPLY_QUEUE_EXPIRES


@final
class _AmqpPidbox:
    """The requests arriving in one node's pidbox queue.

    Ends with :class:`~aiocelev.BrokerConnectionError` when the connection is
    lost (the caller consumes again once the broker is back).
    """

    def __init__(self, nodename: str) -> None:
        self._nodename = nodename
        self._buffer: deque[ControlRequest] = deque()
        self._wakeup = anyio.Event()
        self._channel: AbstractChannel | None = None
        self._lost = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<AmqpPidbox {self._nodename!r}>"

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        headers = dict(message.headers or {})
        try:
            request = ControlRequest.from_message(loads(message.body), headers)
        except (DecodeError, ValueError) as exc:
            logger.warning(
                "%s: ignoring a malformed remote-control request: %s", self._nodename, exc
            )
            return
        self._buffer.append(request)
        self._wakeup.set()

    def _on_close(self, *_: Any) -> None:
        self._lost = True
        self._wakeup.set()

    def __aiter__(self) -> AsyncIterator[ControlRequest]:
        return self

    async def __anext__(self) -> ControlRequest:
        while True:
            if self._buffer:
                return self._buffer.popleft()
            if self._closed:
                raise StopAsyncIteration
            channel = self._channel
            if self._lost or channel is None or channel.is_closed:
                raise BrokerConnectionError(
                    f"{self._nodename}: the pidbox consumer lost its connection"
                )
            self._wakeup = anyio.Event()
            with anyio.move_on_after(1.0):  # double-check liveness now and then
                await self._wakeup.wait()

    async def aclose(self) -> None:
        """Stop consuming; the (auto-delete) pidbox queue goes with the channel."""
        if self._closed:
            return
        self._closed = True
        channel, self._channel = self._channel, None
        await _close_quietly(channel)
        self._buffer.clear()
        self._wakeup.set()


@final
class AmqpControl:
    """The :class:`~aiocelev.ControlTransport` of an :class:`~aiocelev.brokers.amqp.AmqpBroker`.

    :param broker: the adapter (shares its connection and reconnects).
    """

    def __init__(self, broker: AmqpBroker) -> None:
        self._broker = broker
        self._namespace = broker.options.control_exchange
        self._reply_channel: AbstractChannel | None = None
        self.clock = LamportClock()

    def __repr__(self) -> str:
        return f"<AmqpControl {self._broker.url!r}>"

    async def consume_control(self, nodename: str) -> _AmqpPidbox:
        """Declare and consume *nodename*'s pidbox queue (live when this returns).

        :raises BrokerConnectionError: the broker cannot be reached now.
        :raises BrokerError: another connection already consumes that node's
            pidbox (the queue is exclusive, as Celery's).
        """
        if self._broker._closed:
            raise ClosedError("the AMQP broker is closed")
        conn = await self._broker._connection(wait=True)
        pidbox = _AmqpPidbox(nodename)
        channel: AbstractChannel | None = None
        try:
            with map_errors(f"consuming the pidbox of {nodename} on {self._broker.url}"):
                channel = await conn.channel(publisher_confirms=False)
                exchange = await channel.declare_exchange(
                    pidbox_exchange(self._namespace),
                    aio_pika.ExchangeType.FANOUT,
                    durable=False,
                    auto_delete=False,
                )
                queue = await channel.declare_queue(
                    f"{nodename}.{self._namespace}.pidbox",
                    durable=False,
                    exclusive=True,
                    auto_delete=True,
                    arguments={
                        "x-message-ttl": _ms(PIDBOX_QUEUE_TTL),
                        "x-expires": _ms(PIDBOX_QUEUE_EXPIRES),
                    },
                )
                await queue.bind(exchange, routing_key="")
                channel.close_callbacks.add(pidbox._on_close)
                await queue.consume(pidbox._on_message, no_ack=True)
        except BaseException:
            await _close_quietly(channel)
            raise
        pidbox._channel = channel
        return pidbox

    async def reply(self, request: ControlRequest, nodename: str, payload: Any) -> None:
        """Send ``{nodename: payload}`` where *request* wants its replies.

        A reply to a client that has gone (its reply queue expired) is dropped by
        the broker, as with Celery.

        :raises BrokerConnectionError: the broker cannot be reached now.
        """
        if request.reply_to is None:
            return
        if request.clock is not None:
            self.clock.adjust(request.clock)
        conn = await self._broker._connection(wait=False)
        where = f"replying to {request.method!r} on {self._broker.url}"
        with map_errors(where, publish=True):
            channel = self._reply_channel
            if channel is None or channel.is_closed:
                channel = self._reply_channel = await conn.channel(publisher_confirms=False)
            exchange_name = request.reply_to.get("exchange") or f"reply.{self._namespace}.pidbox"
            exchange = await channel.declare_exchange(
                exchange_name, aio_pika.ExchangeType.DIRECT, durable=False, auto_delete=False
            )
            headers: dict[str, Any] = {"ticket": request.ticket, "clock": self.clock.forward()}
            await exchange.publish(
                aio_pika.Message(
                    dumps({nodename: payload}).encode("ascii"),
                    headers=headers,
                    content_type="application/json",
                    content_encoding="utf-8",
                    delivery_mode=1,
                    priority=0,
                ),
                routing_key=request.reply_to["routing_key"],
                mandatory=False,
            )
