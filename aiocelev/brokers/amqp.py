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

:meth:`AmqpBroker.broadcast` sends Celery remote-control commands
(``enable_events``, ``ping``...) as ``celery control`` does.

Every option (keyword argument of :func:`from_url`, or URL query parameter) is
listed in ``docs/brokers/amqp.md``.
"""

from __future__ import annotations

import inspect
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, cast, final

import aio_pika
import aiormq
import aiormq.abc
import anyio
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from .._clock import LamportClock
from .._control import (
    REPLY_QUEUE_EXPIRES,
    REPLY_QUEUE_TTL,
    REQUEST_DELIVERY_MODE,
    accept_reply,
    build_control_body,
    encode_control_body,
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
    ConfigurationError,
    PublishError,
)
from .._message import IncomingMessage, OutgoingMessage
from .._url import mask_url
from ._amqp_errors import describe, map_errors
from ._amqp_options import AmqpOptions, Endpoint, parse_options

__all__ = ["AmqpBroker", "from_url"]

logger = logging.getLogger("aiocelev.brokers.amqp")

#: How long closing a channel or connection may take before it is abandoned.
_CLOSE_TIMEOUT = 2.0
#: How often a waiting subscription double-checks that its channel is alive
#: (close callbacks normally wake it at once).
_LIVENESS_POLL = 1.0


#: Whether this aiormq's ``basic_publish`` can skip waiting for each frame write.
_PUBLISH_HAS_WAIT = "wait" in inspect.signature(aiormq.Channel.basic_publish).parameters


def _ms(seconds: float | None) -> int | None:
    # kombu truncates float(seconds) * 1000 to an int.
    return None if seconds is None else int(seconds * 1000)


async def _close_quietly(obj: AbstractChannel | AbstractConnection | None) -> None:
    """Close a channel or connection, ignoring every error, bounded in time."""
    if obj is None:
        return
    with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
        try:
            if not obj.is_closed:
                await obj.close()
        except Exception:  # already broken: nothing left to release
            logger.debug("ignoring error while closing %r", type(obj).__name__, exc_info=True)


@final
class _AmqpSubscription:
    """One subscription: its own channel and queue; re-created after a reconnect."""

    def __init__(self, broker: AmqpBroker, binding_keys: Sequence[str]) -> None:
        self._broker = broker
        self._keys = tuple(binding_keys)
        self._opts = broker._opts
        self._buffer: deque[IncomingMessage] = deque()
        self._wakeup = anyio.Event()
        self._channel: AbstractChannel | None = None
        self._pending_acks: list[tuple[aiormq.abc.AbstractChannel, int]] = []
        self._closed = False
        self._reconnects = 0
        self._dropped = 0
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
        return ch is not None and not ch.is_closed and self._broker._connection_alive()

    def _wake(self) -> None:
        self._wakeup.set()

    async def _setup(self) -> None:
        """Open a channel, declare exchange and queue, bind, and start consuming."""
        opts = self._opts
        conn = await self._broker._connection(wait=True)
        where = f"subscribing on {self._broker._current_masked()}"
        channel: AbstractChannel | None = None
        try:
            with map_errors(where):
                channel = await conn.channel(publisher_confirms=False)
                if not opts.no_ack and opts.prefetch_count is not None:
                    await channel.set_qos(prefetch_count=opts.prefetch_count)
                exchange = await self._broker._declare_event_exchange(channel)
                queue = await self._declare_queue(channel)
                for key in self._keys:
                    await queue.bind(exchange, routing_key=key)
                current = channel

                def on_close(_sender: Any, *_args: Any, **_kw: Any) -> None:
                    if self._channel is current:
                        self._wake()

                channel.close_callbacks.add(on_close)
                # Consume on aiormq's channel directly: one task per delivery
                # instead of two, and no intermediate message object.
                underlay = cast("aiormq.Channel", await channel.get_underlay_channel())
                await underlay.basic_consume(queue.name, self._on_message, no_ack=opts.no_ack)
        except BaseException:
            await _close_quietly(channel)
            raise
        self._channel = channel
        self.queue_name = queue.name

    async def _declare_queue(self, channel: AbstractChannel) -> AbstractQueue:
        opts = self._opts
        arguments: dict[str, Any] = {}
        if opts.message_ttl is not None:
            arguments["x-message-ttl"] = _ms(opts.message_ttl)
        if opts.expires is not None:
            arguments["x-expires"] = _ms(opts.expires)
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
                    self._wake()

        properties = message.header.properties
        headers = properties.headers
        if self._opts.no_ack and len(self._buffer) >= self._opts.max_buffer:
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
        self._wake()

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
        broker = self._broker
        first = self._channel is not None
        old, self._channel = self._channel, None
        if first:
            self._reconnects += 1
            logger.warning(
                "subscription %s lost its channel on %s; re-subscribing",
                self.queue_name,
                broker._current_masked(),
            )
        await _close_quietly(old)
        attempt = 0
        while not self._closed:
            try:
                await self._setup()
            except ClosedError:
                return  # the broker was closed under us: iteration ends
            except BrokerConnectionError as exc:
                attempt += 1
                if broker._opts.max_retries is not None and attempt > broker._opts.max_retries:
                    raise BrokerConnectionError(
                        f"giving up re-subscribing after {attempt} attempts: {exc}"
                    ) from exc
                delay = broker._backoff(attempt)
                logger.warning(
                    "re-subscribe attempt %d on %s failed (%s); next attempt in %.2fs",
                    attempt,
                    broker.url,
                    exc,
                    delay,
                )
                # Sleep, but wake up at once if the subscription is closed.
                self._wakeup = anyio.Event()
                with anyio.move_on_after(delay):
                    await self._wakeup.wait()
            else:
                if first:
                    logger.warning(
                        "subscription re-created as %s on %s",
                        self.queue_name,
                        broker._current_masked(),
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
            await _close_quietly(channel)
        self._buffer.clear()
        self._broker._subscriptions.discard(self)
        self._wake()


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
        self._conn: AbstractConnection | None = None
        self._conn_index = 0
        self._pub_channel: AbstractChannel | None = None
        self._pub_exchange: AbstractExchange | None = None
        self._lock = anyio.Lock()
        self._failures = 0
        self._next_attempt = 0.0
        self._connected_once = False
        self._closed = False
        self._subscriptions: set[_AmqpSubscription] = set()
        self._control_clock = LamportClock()
        self._dead: AbstractConnection | None = None

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
        return self._connection_alive()

    def __repr__(self) -> str:
        state = (
            "closed"
            if self._closed
            else ("connected" if self._connection_alive() else "disconnected")
        )
        return f"<AmqpBroker {self._masked!r} {state}>"

    def _current_masked(self) -> str:
        return self._endpoints[self._conn_index].masked

    def _connection_alive(self) -> bool:
        return self._usable(self._conn)

    def _usable(self, conn: AbstractConnection | None) -> bool:
        # aio-pika's ``is_closed`` only turns true after a local close(); a
        # connection closed by the server or the network is noticed through
        # the close callback (``_dead``) or the underlying aiormq connection.
        if conn is None or conn.is_closed or conn is self._dead:
            return False
        transport = getattr(conn, "transport", None)
        underlying = getattr(transport, "connection", None)
        return underlying is not None and not getattr(underlying, "is_closed", False)

    def _backoff(self, attempt: int) -> float:
        """Jittered, capped exponential backoff for the *attempt*-th retry (1-based)."""
        cap = self._opts.reconnect_max_delay
        base = min(cap, self._opts.reconnect_delay * (2 ** min(attempt - 1, 30)))
        return random.uniform(base / 2, base)

    # -- connection management -------------------------------------------

    async def _open_one(self, endpoint: Endpoint) -> AbstractConnection:
        timeout = self._opts.connect_timeout
        with map_errors(f"connecting to {endpoint.masked}"):
            with anyio.fail_after(timeout + 1):
                conn = await aio_pika.connect(endpoint.url, timeout=timeout)
        return conn

    async def _connect_locked(self) -> AbstractConnection:
        """Try each endpoint once, starting with the last good one (lock held)."""
        errors: list[str] = []
        count = len(self._endpoints)
        for step in range(count):
            index = (self._conn_index + step) % count
            endpoint = self._endpoints[index]
            if self._connected_once or step:
                logger.info("connecting to %s", endpoint.masked)
            try:
                conn = await self._open_one(endpoint)
            except BrokerConnectionError as exc:
                logger.warning(
                    "connection to %s failed: %s",
                    endpoint.masked,
                    exc.__cause__ and describe(exc.__cause__),
                )
                errors.append(str(exc))
                continue
            self._conn_index = index
            try:
                await self._open_publisher(conn)
            except BaseException:
                await _close_quietly(conn)
                raise
            if self._connected_once:
                logger.warning("reconnected to %s", endpoint.masked)
            self._conn = conn
            self._connected_once = True
            self._failures = 0
            self._next_attempt = 0.0
            conn.close_callbacks.add(self._on_connection_closed)
            return conn
        self._failures += 1
        self._next_attempt = time.monotonic() + self._backoff(self._failures)
        raise BrokerConnectionError("; ".join(errors) or f"cannot connect to {self._masked}")

    def _on_connection_closed(self, sender: Any, exc: BaseException | None = None, *_: Any) -> None:
        if sender is not None:
            self._dead = sender
        if not self._closed:
            logger.warning(
                "connection to %s lost%s",
                self._current_masked(),
                f": {describe(exc)}" if exc else "",
            )
        for sub in tuple(self._subscriptions):
            sub._wake()

    async def _open_publisher(self, conn: AbstractConnection) -> None:
        with map_errors(f"opening a channel on {self._endpoints[self._conn_index].masked}"):
            channel = await conn.channel(publisher_confirms=self._opts.confirm_publish)
            try:
                exchange = await self._declare_event_exchange(channel)
            except BaseException:
                await _close_quietly(channel)
                raise
        self._pub_channel = channel
        self._pub_exchange = exchange

    async def _declare_event_exchange(self, channel: AbstractChannel) -> AbstractExchange:
        return await channel.declare_exchange(
            self._opts.exchange, aio_pika.ExchangeType.TOPIC, durable=True, auto_delete=False
        )

    async def _connection(self, *, wait: bool) -> AbstractConnection:
        """The live connection, connecting if needed.

        :param wait: wait for a reconnect already in progress and ignore the
            backoff window (subscriptions); otherwise fail at once (publish).
        """
        if self._closed:
            raise ClosedError("the AMQP broker is closed")
        conn = self._conn
        if conn is not None and self._usable(conn):
            return conn
        if not wait and self._connected_once:
            if self._lock.locked():
                raise BrokerConnectionError(f"{self._masked}: connection lost, reconnecting")
            if time.monotonic() < self._next_attempt:
                raise BrokerConnectionError(
                    f"{self._masked}: broker unavailable; next reconnect attempt in "
                    f"{self._next_attempt - time.monotonic():.1f}s"
                )
        async with self._lock:
            if self._closed:
                raise ClosedError("the AMQP broker is closed")
            conn = self._conn
            if conn is not None and self._usable(conn):
                return conn
            old, self._conn = self._conn, None
            self._pub_channel = self._pub_exchange = None
            await _close_quietly(old)
            return await self._connect_locked()

    async def connect(self) -> None:
        """Connect (idempotent); tries every URL of a failover list once.

        :raises BrokerConnectionError: no URL could be reached.
        :raises BrokerError: the broker refused the exchange declaration (e.g. a
            ``celeryev`` exchange declared with other flags).
        """
        await self._connection(wait=True)

    async def _publisher_exchange(self) -> AbstractExchange:
        conn = await self._connection(wait=False)
        channel, exchange = self._pub_channel, self._pub_exchange
        if channel is None or exchange is None or channel.is_closed:
            # The channel died (a channel error) but the connection lives.
            async with self._lock:
                channel = self._pub_channel
                if channel is None or self._pub_exchange is None or channel.is_closed:
                    await self._open_publisher(conn)
            exchange = self._pub_exchange
            if exchange is None:  # pragma: no cover - the connection went away meanwhile
                raise BrokerConnectionError(f"{self._masked}: connection lost, reconnecting")
        return exchange

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
        if self._closed:
            raise ClosedError("the AMQP broker is closed")
        await self._publisher_exchange()
        channel = self._pub_channel
        assert channel is not None
        confirm = self._opts.confirm_publish
        timeout = self._opts.publish_timeout
        exchange_name = self._opts.exchange
        where = f"publishing to {self._current_masked()}"
        last = len(messages) - 1
        try:
            with map_errors(where, publish=True):
                underlay = cast("aiormq.Channel", await channel.get_underlay_channel())
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
                        if confirm and self._connection_alive():
                            raise PublishError(f"{where}: no confirm within {timeout}s") from exc
                        raise
        except BrokerError as exc:
            if isinstance(exc, BrokerConnectionError) or not self._connection_alive():
                await self._drop_connection()
                if not isinstance(exc, BrokerConnectionError):
                    raise BrokerConnectionError(str(exc)) from exc
            raise

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._pub_channel = self._pub_exchange = None
        self._failures = max(self._failures, 1)
        self._next_attempt = 0.0
        await _close_quietly(conn)

    async def subscribe(self, binding_keys: Sequence[str]) -> _AmqpSubscription:
        """Declare a queue bound with *binding_keys* and start consuming it.

        The subscription is live when this returns.  After a connection loss it
        re-creates its queue by itself while the caller iterates.

        :raises BrokerConnectionError: the broker cannot be reached now.
        """
        if self._closed:
            raise ClosedError("the AMQP broker is closed")
        if not binding_keys:
            raise ConfigurationError("subscribe() needs at least one binding key")
        sub = _AmqpSubscription(self, binding_keys)
        await sub._setup()
        self._subscriptions.add(sub)
        return sub

    async def aclose(self) -> None:
        """Close every subscription and the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            for sub in tuple(self._subscriptions):
                await sub.aclose()
            conn, self._conn = self._conn, None
            self._pub_channel = self._pub_exchange = None
            await _close_quietly(conn)

    async def __aenter__(self) -> AmqpBroker:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- remote control --------------------------------------------------

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
        """Send a Celery remote-control command, as ``celery control`` does.

        Publishes on the ``<control_exchange>.pidbox`` fanout exchange
        (``celery.pidbox``).  With *reply*, replies ``{nodename: {...}}`` are
        collected from a fresh reply queue for *timeout* seconds, or until
        *limit* replies arrived (*limit* defaults to ``len(destination)`` when a
        destination is given).

        :param method: e.g. ``"enable_events"``, ``"disable_events"``, ``"ping"``,
            ``"heartbeat"``.
        :param arguments: the command's keyword arguments.
        :param destination: worker node names, or ``None`` for all workers.
        :returns: the replies (``[]`` when *reply* is false).
        :raises BrokerConnectionError: the broker cannot be reached.
        """
        if self._closed:
            raise ClosedError("the AMQP broker is closed")
        if destination is not None and not isinstance(destination, (list, tuple)):
            raise ConfigurationError("destination must be a list or tuple of node names")
        namespace = self._opts.control_exchange
        conn = await self._connection(wait=True)
        where = f"broadcasting {method!r} on {self._current_masked()}"
        replies: list[dict[str, Any]] = []
        arrived = anyio.Event()
        channel: AbstractChannel | None = None
        try:
            with map_errors(where, publish=True):
                channel = await conn.channel(publisher_confirms=False)
                pidbox = await channel.declare_exchange(
                    pidbox_exchange(namespace),
                    aio_pika.ExchangeType.FANOUT,
                    durable=False,
                    auto_delete=False,
                )
                ticket: str | None = None
                reply_to: dict[str, str] | None = None
                if reply:
                    key = new_reply_key()
                    ticket = new_ticket()
                    reply_to = reply_to_mapping(key, namespace)
                    reply_ex = await channel.declare_exchange(
                        reply_exchange(namespace),
                        aio_pika.ExchangeType.DIRECT,
                        durable=False,
                        auto_delete=False,
                    )
                    queue = await channel.declare_queue(
                        reply_queue_name(key, namespace),
                        durable=False,
                        exclusive=True,
                        auto_delete=True,
                        arguments={
                            "x-expires": _ms(REPLY_QUEUE_EXPIRES),
                            "x-message-ttl": _ms(REPLY_QUEUE_TTL),
                        },
                    )
                    await queue.bind(reply_ex, routing_key=key)
                    wanted = ticket

                    async def on_reply(message: AbstractIncomingMessage) -> None:
                        headers = dict(message.headers or {})
                        got = accept_reply(
                            message.body, headers, wanted, self._control_clock, logger
                        )
                        if got is not None:
                            replies.append(got)
                            arrived.set()

                    await queue.consume(on_reply, no_ack=True)
                body, headers = build_control_body(
                    method,
                    arguments,
                    destination=destination,
                    ticket=ticket,
                    reply_to=reply_to,
                    clock=self._control_clock.forward(),
                    timeout=timeout,
                )
                await pidbox.publish(
                    aio_pika.Message(
                        encode_control_body(body),
                        headers=headers,
                        content_type="application/json",
                        content_encoding="utf-8",
                        delivery_mode=REQUEST_DELIVERY_MODE,
                        priority=0,
                    ),
                    routing_key="",
                    mandatory=False,
                )
            if not reply:
                return []
            limit = reply_limit(limit, destination)
            with anyio.move_on_after(timeout):
                while limit is None or len(replies) < limit:
                    await arrived.wait()
                    arrived = anyio.Event()
                    if replies and limit is not None and len(replies) >= limit:
                        break
            return list(replies[:limit] if limit is not None else replies)
        finally:
            await _close_quietly(channel)


def from_url(url: str, **options: Any) -> AmqpBroker:
    """Create (but do not connect) an :class:`AmqpBroker`.

    :param url: ``amqp://``/``amqps://`` URL or ``;``-separated failover list,
        optionally with query options (``?confirm_publish=1&prefetch_count=100``).
    :param options: keyword options; they win over query options.
    :raises ConfigurationError: unknown option, bad value or non-AMQP URL.
    """
    return AmqpBroker(url, **options)
