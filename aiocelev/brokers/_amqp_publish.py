"""The AMQP adapter's publisher: one channel on the event exchange, optional confirms."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import cast, final

import aiormq
import anyio
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aiormq.abc import ChannelFrame
from pamqp.commands import Basic

from .._exceptions import BrokerConnectionError, BrokerError, ClosedError, PublishError
from .._message import OutgoingMessage
from ._amqp_connection import AmqpConnection, close_quietly, declare_event_exchange
from ._amqp_consume import DeliveryProtocol, delivery_protocol
from ._amqp_errors import map_errors
from ._amqp_frames import PublishEncoder

__all__ = ["AmqpPublisher"]

#: Whether this aiormq's ``basic_publish`` can skip waiting for each frame write.
_PUBLISH_HAS_WAIT = "wait" in inspect.signature(aiormq.Channel.basic_publish).parameters


@final
class AmqpPublisher:
    """Publishes on the event exchange through a channel of the shared connection.

    The channel is opened with every new connection (:meth:`open` is the
    connection's ``on_connect`` hook) and again when a channel error closed it.
    """

    def __init__(self, connection: AmqpConnection) -> None:
        self._link = connection
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._encoder = PublishEncoder()
        # The lean protocol of the current connection (fast_consume), if any:
        # frames are written through it directly (see _write_frames).
        self._protocol: DeliveryProtocol | None = None

    async def open(self, conn: AbstractConnection) -> None:
        """Open the publishing channel on *conn* and declare the event exchange."""
        link = self._link
        with map_errors(f"opening a channel on {link.current_masked}"):
            channel = await conn.channel(publisher_confirms=link.opts.confirm_publish)
            try:
                exchange = await declare_event_exchange(channel, link.opts)
            except BaseException:
                await close_quietly(channel)
                raise
        self._channel = channel
        self._exchange = exchange
        self._protocol = delivery_protocol(conn)

    def forget(self) -> None:
        """Drop the channel (its connection is being discarded)."""
        self._channel = self._exchange = None
        self._protocol = None

    async def _ready_channel(self) -> AbstractChannel:
        link = self._link
        conn = await link.get(wait=False)
        channel, exchange = self._channel, self._exchange
        if channel is None or exchange is None or channel.is_closed:
            # The channel died (a channel error) but the connection lives.
            async with link.lock:
                channel = self._channel
                if channel is None or self._exchange is None or channel.is_closed:
                    await self.open(conn)
            channel = self._channel
            if channel is None:  # pragma: no cover - the connection went away meanwhile
                raise BrokerConnectionError(f"{link.masked}: connection lost, reconnecting")
        return channel

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish *messages* in order; see :meth:`AmqpBroker.publish
        <aiocelev.brokers.amqp.AmqpBroker.publish>`."""
        link = self._link
        if link.closed:
            raise ClosedError("the AMQP broker is closed")
        channel = await self._ready_channel()
        opts = link.opts
        confirm = opts.confirm_publish
        timeout = opts.publish_timeout
        exchange_name = opts.exchange
        where = f"publishing to {link.current_masked}"
        last = len(messages) - 1
        try:
            with map_errors(where, publish=True):
                underlay = cast("aiormq.Channel", await channel.get_underlay_channel())
                if not confirm and await self._write_frames(underlay, messages, timeout):
                    return
            for index, message in enumerate(messages):
                with map_errors(where, publish=True):
                    properties = Basic.Properties(
                        content_type=message.content_type,
                        content_encoding=message.content_encoding,
                        headers=dict(message.headers),
                        delivery_mode=message.delivery_mode,
                        priority=message.priority,
                    )
                    try:
                        # Without confirms only the last frame write of a batch
                        # is awaited: frames leave in order, so once it is
                        # written, all of them are.
                        extra = {"wait": confirm or index == last} if _PUBLISH_HAS_WAIT else {}
                        await underlay.basic_publish(
                            message.body,
                            exchange=exchange_name,
                            routing_key=message.routing_key,
                            properties=properties,
                            mandatory=False,
                            timeout=timeout,
                            **extra,
                        )
                    except TimeoutError as exc:
                        if confirm and link.alive():
                            raise PublishError(f"{where}: no confirm within {timeout}s") from exc
                        raise
        except BrokerError as exc:
            if isinstance(exc, BrokerConnectionError) or not link.alive():
                await link.drop()
                if not isinstance(exc, BrokerConnectionError):
                    raise BrokerConnectionError(str(exc)) from exc
            raise

    async def _write_frames(
        self, underlay: aiormq.Channel, messages: Sequence[OutgoingMessage], timeout: float | None
    ) -> bool:
        """Without confirms: write every message's frames as one buffer; wait until written.

        Returns ``False`` (nothing written) when the batch needs aiormq's own
        path: a closed channel (it raises the right error) or a routing key
        too long for a frame.
        """
        if underlay.is_closed or not messages:
            return False
        payload = self._encoder.encode(
            underlay.number, self._link.opts.exchange, messages, underlay.max_content_size
        )
        if payload is None:
            return False
        protocol = self._protocol
        if protocol is not None:
            # Straight to the transport: no hop through aiormq's writer task.
            with anyio.fail_after(timeout):
                if await protocol.write_frames(payload):
                    return True
        # A future of the channel: rejected if the channel or connection closes.
        written = underlay.create_future()
        with anyio.fail_after(timeout):
            await underlay.connection.write_queue.put(
                ChannelFrame(payload=payload, should_close=False, drain_future=written)
            )
            await written
        return True
