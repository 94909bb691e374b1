"""RabbitMQ (AMQP 0-9-1) adapter on aio-pika: ``amqp://``, ``amqps://``.

URL form (kombu's)::

    amqp://USER:PASSWORD@HOST:PORT/VHOST?option=value
    amqp://guest:guest@127.0.0.1:5672//          # vhost "/"
    amqps://user:pw@rabbit.example:5671/prod      # TLS, vhost "prod"
    amqp://h1//;amqp://h2//                       # failover list, tried in turn

``pyamqp://`` and ``librabbitmq://`` are accepted as aliases of ``amqp://``.

Wire behaviour is Celery's: the ``celeryev`` topic exchange (durable, not
auto-delete); messages with the content type, encoding and headers of the
:class:`~aiocelev.OutgoingMessage`, delivery mode 1 and priority 0; each
subscription consumes its own ``celeryev.<uuid4>`` queue (exclusive,
auto-delete, ``x-message-ttl`` 5 s, ``x-expires`` 60 s) without acks.  A named
durable queue consumed with acks is available for consumers that must not lose
events across their own restarts.

The adapter reconnects by itself (jittered, capped exponential backoff, through
the failover list): a live subscription re-declares its queue and keeps
yielding; :meth:`AmqpBroker.publish` raises
:class:`~aiocelev.BrokerConnectionError` at once while the broker is away and
reconnects on a later call.  What can be lost in a gap is spelled out in
``docs/brokers/amqp.md``.

:meth:`AmqpBroker.control` is the remote-control transport: send Celery
commands (``enable_events``, ``ping``...) as ``celery control`` does, or answer
them as a node.

The parts live in their own modules: ``_amqp_connection`` (connection, failover,
reconnect), ``_amqp_publish`` (publisher), ``_amqp_subscription``
(subscriptions), ``_amqp_consume`` and ``_amqp_wire`` (deliveries parsed from
the received bytes), ``_amqp_control`` (remote control).  Every option (keyword
argument of :func:`from_url`, or URL query parameter) is listed in
``docs/brokers/amqp.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, final
from urllib.parse import urlsplit, urlunsplit

import anyio
from aio_pika.abc import AbstractConnection

from .._exceptions import ClosedError, ConfigurationError
from .._message import OutgoingMessage
from .._url import mask_url
from ._amqp_connection import AmqpConnection
from ._amqp_consume import open_connection, supported
from ._amqp_control import AmqpControl
from ._amqp_options import AmqpOptions, Endpoint, parse_options
from ._amqp_publish import AmqpPublisher
from ._amqp_queues import amqp_queue_info
from ._amqp_subscription import AmqpSubscription
from ._queues import QueueInfo

__all__ = ["AmqpBroker", "AmqpControl", "AmqpSubscription", "from_url"]


def _identity(endpoints: Sequence[Endpoint]) -> str:
    """Every endpoint's URL without options, vhost included, passwords masked."""
    bare = []
    for endpoint in endpoints:
        parts = urlsplit(endpoint.url)
        bare.append(mask_url(urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))))
    return ";".join(bare)


@final
class AmqpBroker:
    """Celery-compatible RabbitMQ adapter; create it with :func:`from_url`.

    :param url: one AMQP URL or a ``;``-separated failover list.
    :param options: see ``docs/brokers/amqp.md``.
    """

    def __init__(self, url: str, **options: Any) -> None:
        self._endpoints: list[Endpoint]
        self._opts: AmqpOptions
        self._endpoints, self._opts = parse_options(url, options)
        self._masked = mask_url(url)
        self._connection = AmqpConnection(
            self._endpoints,
            self._opts,
            self._masked,
            on_connect=self._on_connect,
            on_reset=self._on_reset,
            on_lost=self._on_lost,
            opener=open_connection if self._opts.fast_consume and supported() else None,
        )
        self._publisher = AmqpPublisher(self._connection)
        self._subscriptions: set[AmqpSubscription] = set()
        self._control: AmqpControl | None = None

    async def _on_connect(self, conn: AbstractConnection) -> None:
        await self._publisher.open(conn)

    def _on_reset(self) -> None:
        self._publisher.forget()

    def _on_lost(self) -> None:
        for sub in tuple(self._subscriptions):
            sub.wake()

    # -- introspection ---------------------------------------------------

    @property
    def url(self) -> str:
        """The URL (or failover list) with passwords masked."""
        return self._masked

    @property
    def options(self) -> AmqpOptions:
        """The effective options."""
        return self._opts

    @property
    def connected(self) -> bool:
        """Whether a connection is open right now."""
        return self._connection.alive()

    def __repr__(self) -> str:
        if self._connection.closed:
            state = "closed"
        else:
            state = "connected" if self._connection.alive() else "disconnected"
        return f"<AmqpBroker {self._masked!r} {state}>"

    # -- the broker protocol ---------------------------------------------

    async def connect(self) -> None:
        """Connect (idempotent); tries every URL of a failover list once.

        :raises BrokerConnectionError: no URL could be reached.
        :raises BrokerError: the broker refused the exchange declaration (e.g. a
            ``celeryev`` exchange declared with other flags).
        """
        await self._connection.get(wait=True)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish *messages* in order on the event exchange.

        Returns once every message is written to the connection or, with
        ``confirm_publish``, confirmed by the broker.

        :raises BrokerConnectionError: the broker is unavailable right now (raised
            at once while a reconnect is pending; a later call reconnects).
        :raises PublishError: with ``confirm_publish``, the broker nacked a message
            or did not confirm it within ``publish_timeout``.
        :raises ClosedError: the adapter was closed.
        """
        await self._publisher.publish(messages)

    async def subscribe(self, binding_keys: Sequence[str]) -> AmqpSubscription:
        """Declare a queue bound with *binding_keys* and start consuming it.

        The subscription is live when this returns.  After a connection loss it
        re-creates its queue by itself while the caller iterates.

        :raises BrokerConnectionError: the broker cannot be reached now.
        """
        if self._connection.closed:
            raise ClosedError("the AMQP broker is closed")
        if not binding_keys:
            raise ConfigurationError("subscribe() needs at least one binding key")
        sub = AmqpSubscription(self._connection, binding_keys, self._subscriptions.discard)
        await sub.start()
        self._subscriptions.add(sub)
        return sub

    async def queue_info(self, names: Sequence[str]) -> list[QueueInfo]:
        """Ready messages and consumers of each queue (passive declare; ``None`` if missing).

        :raises BrokerConnectionError: RabbitMQ is unreachable.
        """
        return await amqp_queue_info(self._connection, names)

    def control(self) -> AmqpControl:
        """The remote-control transport over this adapter's connection (same object each call).

        ``await broker.control().broadcast("ping")`` returns the replies;
        ``broker.control().consume_control(nodename)`` makes this process a node.
        """
        if self._control is None:
            self._control = AmqpControl(self._connection, _identity(self._endpoints))
        return self._control

    async def aclose(self) -> None:
        """Close every subscription and the connection (idempotent)."""
        if self._connection.closed:
            return
        self._connection.closed = True
        with anyio.CancelScope(shield=True):
            for sub in tuple(self._subscriptions):
                await sub.aclose()
            if self._control is not None:
                await self._control.aclose()
            await self._connection.aclose()

    async def __aenter__(self) -> AmqpBroker:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def from_url(url: str, **options: Any) -> AmqpBroker:
    """Create (but do not connect) an :class:`AmqpBroker`.

    :param url: ``amqp://``/``amqps://`` URL or ``;``-separated failover list,
        optionally with query options (``?confirm_publish=1&prefetch_count=100``).
    :param options: keyword options; they win over query options.
    :raises ConfigurationError: unknown option, bad value or non-AMQP URL.
    """
    return AmqpBroker(url, **options)
