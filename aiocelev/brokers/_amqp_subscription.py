"""The AMQP adapter's subscriptions: one channel and queue each, re-created after a loss.

By default a subscription consumes its own ``celeryev.<uuid4>`` queue
(exclusive, auto-delete, with Celery's ``x-message-ttl`` / ``x-expires``)
without acks, into a buffer bounded by ``max_buffer`` (the oldest message is
dropped and counted when the consumer falls behind).  With ``queue_name`` and
``durable`` it consumes a named durable queue with acks and ``prefetch_count``.
Recovery after a connection or channel loss runs in the iterating task.

On a connection opened by ``_amqp_consume`` (the default, ``fast_consume``)
the subscription attaches its channel to the connection's
:class:`~aiocelev.brokers._amqp_wire.DeliveryDemux` before ``basic.consume``:
its deliveries are assembled from the received bytes and appended to the
buffer, many per read, and never reach aiormq's reader.  Otherwise aiormq
delivers them one task each to :meth:`AmqpSubscription._on_message`.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, cast, final

import aiormq
import aiormq.abc
import anyio
from aio_pika.abc import AbstractChannel, AbstractQueue
from aiormq.abc import DeliveredMessage

from .._backoff import Backoff
from .._exceptions import AiocelevError, BrokerConnectionError, BrokerError, ClosedError
from .._link import LinkMonitor
from .._message import IncomingMessage, incoming_message
from ._amqp_connection import AmqpConnection, close_quietly, declare_event_exchange, ms
from ._amqp_consume import delivery_protocol
from ._amqp_errors import map_errors
from ._amqp_wire import Attachment, DeliveryDemux

__all__ = ["AmqpSubscription"]

logger = logging.getLogger("aiocelev.brokers.amqp")

#: How often a waiting subscription double-checks that its channel is alive
#: (close callbacks normally wake it at once).
_LIVENESS_POLL = 1.0


@final
class AmqpSubscription:
    """One subscription: its own channel and queue; re-created after a reconnect.

    :param connection: the adapter's connection.
    :param binding_keys: routing keys bound on the event exchange.
    :param on_close: called once with the subscription when it is closed.
    """

    def __init__(
        self,
        connection: AmqpConnection,
        binding_keys: Sequence[str],
        on_close: Callable[[AmqpSubscription], None] | None = None,
    ) -> None:
        self._link = connection
        self._keys = tuple(binding_keys)
        self._opts = connection.opts
        self._on_close = on_close
        self._buffer: deque[IncomingMessage] = deque()
        self._wakeup = anyio.Event()
        self._channel: AbstractChannel | None = None
        self._pending_acks: list[tuple[aiormq.abc.AbstractChannel, int]] = []
        #: Where this subscription's channel is attached for lean deliveries.
        self._attached: tuple[DeliveryDemux, int, Attachment] | None = None
        #: The aiormq channel the lean deliveries arrive on (for acks).
        self._underlay: aiormq.abc.AbstractChannel | None = None
        self._closed = False
        self._reconnects = 0
        #: Backoff of the recovery in progress: kept across calls, because the task
        #: iterating (a caller in pull mode) may be cancelled in the middle of one.
        self._recovery: Backoff | None = None
        self._dropped = 0
        #: Whether this subscription hears the broker now; each loss is a gap.
        self.link = LinkMonitor(connection.masked)
        #: Name of the queue currently consumed (changes after a reconnect
        #: unless a fixed ``queue_name`` is configured).
        self.queue_name: str | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("live" if self._alive() else "reconnecting")
        return f"<AmqpSubscription {self.queue_name!r} keys={list(self._keys)!r} {state}>"

    @property
    def dropped(self) -> int:
        """Messages dropped in no-ack mode because ``max_buffer`` were already waiting."""
        return self._dropped

    @property
    def reconnects(self) -> int:
        """How many times this subscription re-created its queue after a connection loss."""
        return self._reconnects

    def _alive(self) -> bool:
        ch = self._channel
        return ch is not None and not ch.is_closed and self._link.alive()

    def wake(self) -> None:
        """Make a waiting ``__anext__`` look again (the connection was lost)."""
        self._wakeup.set()

    async def start(self) -> None:
        """Open a channel, declare exchange and queue, bind, and start consuming."""
        opts = self._opts
        conn = await self._link.get(wait=True)
        where = f"subscribing on {self._link.current_masked}"
        channel: AbstractChannel | None = None
        try:
            with map_errors(where):
                channel = await conn.channel(publisher_confirms=False)
                if not opts.no_ack and opts.prefetch_count is not None:
                    await channel.set_qos(prefetch_count=opts.prefetch_count)
                exchange = await declare_event_exchange(channel, opts)
                queue = await self._declare_queue(channel)
                for key in self._keys:
                    await queue.bind(exchange, routing_key=key)
                current = channel

                def on_close(_sender: Any, *_args: Any, **_kw: Any) -> None:
                    if self._channel is current:
                        self.wake()

                channel.close_callbacks.add(on_close)
                # Consume on aiormq's channel directly: one task per delivery
                # instead of two, and no intermediate message object.
                underlay = cast("aiormq.Channel", await channel.get_underlay_channel())
                protocol = delivery_protocol(conn) if opts.fast_consume else None
                if protocol is not None:
                    # Attached before basic.consume: the first delivery may
                    # arrive in the same read as consume-ok.
                    demux = protocol.demux
                    self._underlay = underlay
                    self._attached = (
                        demux,
                        underlay.number,
                        demux.attach(underlay.number, self._deliver, self.wake, self.wake),
                    )
                await underlay.basic_consume(queue.name, self._on_message, no_ack=opts.no_ack)
        except BaseException:
            self._detach()
            await close_quietly(channel)
            raise
        self._channel = channel
        self.queue_name = queue.name

    async def _declare_queue(self, channel: AbstractChannel) -> AbstractQueue:
        opts = self._opts
        arguments: dict[str, Any] = {}
        if opts.message_ttl is not None:
            arguments["x-message-ttl"] = ms(opts.message_ttl)
        if opts.expires is not None:
            arguments["x-expires"] = ms(opts.expires)
        if opts.queue_name and opts.durable:
            return await channel.declare_queue(
                opts.queue_name,
                durable=True,
                exclusive=False,
                auto_delete=False,
                arguments=arguments,
            )
        # A fresh name after every reconnect: the previous exclusive queue may
        # still be held by a half-dead connection on the server side.
        name = opts.queue_name or f"{opts.queue_prefix}.{uuid.uuid4()}"
        return await channel.declare_queue(
            name, durable=False, exclusive=True, auto_delete=True, arguments=arguments or None
        )

    def _detach(self) -> None:
        """Stop taking lean deliveries (before the channel closes)."""
        attached, self._attached = self._attached, None
        self._underlay = None
        if attached is not None:
            demux, number, attachment = attached
            demux.detach(number, attachment)

    def _deliver(
        self,
        tag: int,
        routing_key: str,
        body: bytes,
        content_type: str | None,
        content_encoding: str | None,
        headers: Mapping[str, Any] | None,
    ) -> None:
        """One delivery assembled by the demux (woken once per read, not here)."""
        if self._closed:
            return
        ack = None
        opts = self._opts
        if opts.no_ack:
            if len(self._buffer) >= opts.max_buffer:
                self._drop_oldest()
        else:
            channel = self._underlay
            if channel is not None:

                def ack() -> None:
                    # Sent by the consuming task on its next __anext__ (or
                    # aclose): acks stay in that task and in delivery order.
                    self._pending_acks.append((channel, tag))
                    self.wake()

        self._buffer.append(
            incoming_message(
                routing_key,
                body,
                content_type,
                content_encoding,
                dict(headers) if headers else {},
                ack,
            )
        )

    def _drop_oldest(self) -> None:
        # No-ack consumption cannot slow RabbitMQ down: keep memory bounded by
        # dropping the oldest waiting message (it would soon expire by TTL anyway).
        self._buffer.popleft()
        self._dropped += 1
        if self._dropped == 1 or self._dropped % 1000 == 0:
            logger.warning(
                "subscription %s: consumer too slow, %d messages dropped so far "
                "(max_buffer=%d; use no_ack=False for backpressure)",
                self.queue_name,
                self._dropped,
                self._opts.max_buffer,
            )

    async def _on_message(self, message: DeliveredMessage) -> None:
        if self._closed:
            return
        ack = None
        if not self._opts.no_ack:
            tag = message.delivery_tag
            channel = message.channel
            if tag is not None:

                def ack() -> None:
                    # Sent by the consuming task on its next __anext__ (or
                    # aclose): acks stay in that task and in delivery order.
                    self._pending_acks.append((channel, tag))
                    self.wake()

        properties = message.header.properties
        headers = properties.headers
        if self._opts.no_ack and len(self._buffer) >= self._opts.max_buffer:
            self._drop_oldest()
        self._buffer.append(
            IncomingMessage(
                routing_key=message.routing_key or "",
                body=message.body,
                content_type=properties.content_type,
                content_encoding=properties.content_encoding,
                headers=dict(headers) if headers else {},
                ack=ack,
            )
        )
        self.wake()

    async def _flush_acks(self) -> None:
        """Send the acknowledgements requested since the last call."""
        if not self._pending_acks:
            return
        pending, self._pending_acks = self._pending_acks, []
        # Acks are requested in delivery order: one multiple-ack of the highest
        # tag per channel acknowledges everything before it too.
        last: dict[aiormq.abc.AbstractChannel, int] = {}
        for channel, tag in pending:
            last[channel] = max(tag, last.get(channel, 0))
        for channel, tag in last.items():
            if channel.is_closed:
                # Its channel is gone: the broker requeues it, nothing to do.
                continue
            try:
                with map_errors("acknowledging a message"):
                    await channel.basic_ack(tag, multiple=True)
            except BrokerError as exc:
                logger.warning("could not acknowledge a message (it will be redelivered): %s", exc)
                return

    def __aiter__(self) -> AsyncIterator[IncomingMessage]:
        return self

    async def __anext__(self) -> IncomingMessage:
        if self._buffer and not self._pending_acks:
            return self._buffer.popleft()
        while True:
            await self._flush_acks()
            if self._buffer:
                return self._buffer.popleft()
            if self._closed:
                raise StopAsyncIteration
            if self._channel is None or not self._alive():
                await self._recover()
                continue
            self._wakeup = anyio.Event()
            with anyio.move_on_after(_LIVENESS_POLL):
                await self._wakeup.wait()

    async def _recover(self) -> None:
        """Re-create channel, queue and bindings, retrying with backoff (caller's task)."""
        link = self._link
        first = self._channel is not None
        old, self._channel = self._channel, None
        self._detach()
        if first or self._recovery is None:
            self._recovery = Backoff(self._opts.reconnect_delay, self._opts.reconnect_max_delay)
        if first:
            self._reconnects += 1
            self.link.lost(link.last_error or "channel closed")
            logger.warning(
                "subscription %s lost its channel on %s; re-subscribing",
                self.queue_name,
                link.current_masked,
            )
        await close_quietly(old)
        backoff = self._recovery
        while not self._closed:
            try:
                await self.start()
            except ClosedError:
                return  # the broker was closed under us: iteration ends
            except BrokerConnectionError as exc:
                delay = backoff.next_delay()
                attempt = backoff.attempts
                if self._opts.max_retries is not None and attempt > self._opts.max_retries:
                    raise BrokerConnectionError(
                        f"giving up re-subscribing after {attempt} attempts: {exc}"
                    ) from exc
                logger.warning(
                    "re-subscribe attempt %d on %s failed (%s); next attempt in %.2fs",
                    attempt,
                    link.masked,
                    exc,
                    delay,
                )
                # Sleep, but wake up at once if the subscription is closed.
                self._wakeup = anyio.Event()
                with anyio.move_on_after(delay):
                    await self._wakeup.wait()
            else:
                self.link.restored()
                self._recovery = None
                if self._reconnects:
                    logger.warning(
                        "subscription re-created as %s on %s",
                        self.queue_name,
                        link.current_masked,
                    )
                return

    async def aclose(self) -> None:
        """Stop consuming; acknowledged messages are acked first; the queue goes (unless durable)."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                await self._flush_acks()
            except AiocelevError:  # pragma: no cover - _flush_acks logs and swallows
                pass
            channel, self._channel = self._channel, None
            self._detach()
            await close_quietly(channel)
        self._buffer.clear()
        if self._on_close is not None:
            self._on_close(self)
        self.wake()
