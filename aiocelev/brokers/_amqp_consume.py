"""The lean consume path: deliveries parsed where the socket's bytes arrive.

aiormq reads every frame with three ``readexactly`` calls, unmarshals it with
pamqp, passes it through one :class:`asyncio.Queue` per channel and starts a
task per delivery.  Here the connection's protocol (a
:class:`asyncio.StreamReaderProtocol`, created by :class:`LeanTransportFactory`,
aiormq's own hook for opening the transport) runs each received chunk through
a :class:`~aiocelev.brokers._amqp_wire.DeliveryDemux` first: the deliveries of
the channels a subscription attached to are assembled in place and handed to
the subscription, many per ``data_received``; every other frame reaches
aiormq's reader unchanged and in order, so the handshake, heartbeats, flow
control (``connection.blocked``), channel and connection errors, declarations,
publishing and acknowledgements stay aiormq's.

The protocol is also an :class:`asyncio.BufferedProtocol`: the transport
reads into one buffer of the protocol's, reused for every read, instead of
allocating a new ``bytes`` per read.  asyncio reads up to 256 KiB at a time,
above glibc's threshold (128 KiB) for mapping fresh memory from the kernel:
when RabbitMQ's writes come in smaller pieces the threshold never adapts, and
every read mapped, faulted in and unmapped its memory (half of the receiving
process's page faults in the ``monitor`` benchmark).  The 120 KiB buffer is
copied out once per read, into memory the allocator keeps.

aiormq declares a connection dead when it has read no frame for three
heartbeat intervals.  While deliveries are taken out, it would read nothing
although the broker is busy sending (RabbitMQ sends no heartbeat then), so the
protocol passes a heartbeat frame on whenever it has passed nothing else for a
second: aiormq sees the connection alive exactly when bytes arrive.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import weakref
from typing import TYPE_CHECKING, Any, final

import aio_pika
import aiormq
from aiormq.connection import TransportFactory
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError
from yarl import URL

from ._amqp_wire import HEARTBEAT_FRAME, DeliveryDemux, FrameError

if TYPE_CHECKING:
    from aio_pika.abc import AbstractConnection

__all__ = ["DeliveryProtocol", "LeanTransportFactory", "delivery_protocol", "open_connection"]

logger = logging.getLogger("aiocelev.brokers.amqp")

#: The longest aiormq goes without a frame passed on while deliveries arrive.
_KEEPALIVE = 1.0

#: The size of a connection's read buffer (see the module doc).
READ_SIZE = 120 * 1024

#: The protocol of each connection opened by :func:`open_connection`.
_PROTOCOLS: weakref.WeakKeyDictionary[Any, DeliveryProtocol] = weakref.WeakKeyDictionary()


class DeliveryProtocol(asyncio.StreamReaderProtocol, asyncio.BufferedProtocol):
    """aiormq's stream protocol with the deliveries of attached channels taken out first.

    :attr:`demux` is where subscriptions attach their channels.  The
    transport reads into :meth:`get_buffer`'s buffer (see the module doc).
    """

    def __init__(self, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(reader, loop=loop)
        self._reader = reader
        self._loop = loop
        self._passed_at = loop.time()
        self._read_buffer = memoryview(bytearray(READ_SIZE))
        self.demux = DeliveryDemux()
        #: The connection's writer (set by the factory): see :meth:`write_frames`.
        self.writer: asyncio.StreamWriter | None = None

    async def write_frames(self, payload: bytes) -> bool:
        """Write whole frames straight to the transport; wait only if it is over its limit.

        What aiormq's writer task does with a frame put in its queue, without
        the hand-off to that task (one event-loop iteration per publish).  The
        payload goes in one ``write``, so the frames are never split by other
        writers' frames and a cancellation cannot leave part of them behind.
        ``False`` (nothing written) when the transport is closing: the caller
        then goes through aiormq, which reports the connection's state.
        """
        writer = self.writer
        if writer is None or writer.transport.is_closing():
            return False
        writer.write(payload)
        await writer.drain()
        return True

    def get_buffer(self, sizehint: int) -> memoryview:
        """The buffer the transport reads into (the same one every time)."""
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        """The transport read *nbytes* into the buffer: handle a copy of them."""
        self.data_received(self._read_buffer[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        """Assemble deliveries; pass every other frame on to aiormq's reader."""
        try:
            out = self.demux.feed(data)
        except FrameError as exc:
            self._fail(exc)
            return
        if out:
            self._reader.feed_data(out)
            self._passed_at = self._loop.time()
        else:
            now = self._loop.time()
            if now - self._passed_at >= _KEEPALIVE:
                self._reader.feed_data(HEARTBEAT_FRAME)
                self._passed_at = now

    def _fail(self, exc: FrameError) -> None:
        logger.warning("closing an AMQP connection that sent malformed frames: %s", exc)
        self._reader.set_exception(InvalidFrameError(str(exc)))
        # StreamReaderProtocol keeps the transport while the connection lasts.
        transport: asyncio.Transport | None = getattr(self, "_transport", None)
        if transport is not None:
            transport.abort()


@final
class LeanTransportFactory(TransportFactory):
    """Opens aiormq's TCP or TLS stream with a :class:`DeliveryProtocol`."""

    def __init__(self) -> None:
        self.protocol: DeliveryProtocol | None = None

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """What aiormq's TCP and TLS factories do, with this module's protocol."""
        provider = kwargs.pop("ssl_context_provider", None)
        ssl = None
        if url.scheme == "amqps" and provider is not None:
            ssl = await provider.get_context()
        host = url.host or "localhost"
        port = url.port or (5671 if url.scheme == "amqps" else 5672)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        protocol = DeliveryProtocol(reader, loop)
        try:
            transport, _ = await loop.create_connection(
                lambda: protocol, host=host, port=port, ssl=ssl, **kwargs
            )
        except OSError as exc:
            raise AMQPConnectionError(*exc.args) from exc
        self.protocol = protocol
        protocol.writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader, protocol.writer


async def open_connection(url: str, timeout: float) -> AbstractConnection:
    """``aio_pika.connect(url, timeout=timeout)`` on a :class:`DeliveryProtocol`.

    :func:`delivery_protocol` finds the protocol of the returned connection.
    """
    factory = LeanTransportFactory()
    connection = aio_pika.Connection(URL(url))
    # aio-pika keeps only the keywords it knows; aiormq's Connection takes
    # the factory from the keywords aio-pika hands it.
    connection.kwargs["transport_factory"] = factory
    await connection.connect(timeout=timeout)
    if factory.protocol is not None:
        _PROTOCOLS[connection] = factory.protocol
    return connection


def delivery_protocol(connection: AbstractConnection) -> DeliveryProtocol | None:
    """The protocol of a connection opened by :func:`open_connection` (else ``None``)."""
    return _PROTOCOLS.get(connection)


@functools.cache
def supported() -> bool:
    """Whether this aiormq's ``Connection`` takes a ``transport_factory``."""
    return "transport_factory" in inspect.signature(aiormq.Connection.__init__).parameters
