"""The AMQP adapter's one connection: failover list, liveness and reconnects.

Every part of the adapter (publisher, subscriptions, remote control) opens its
channels on the connection :class:`AmqpConnection` holds.  It connects lazily,
tries each URL of a failover list once per attempt (starting with the last one
that worked) and, after a failed attempt, keeps a jittered, capped exponential
backoff window (:class:`~aiocelev._backoff.Backoff`) during which callers that
must not wait (``publish``) fail at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, final

import aio_pika
import anyio
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from .._backoff import Backoff
from .._exceptions import BrokerConnectionError, ClosedError
from ._amqp_errors import describe, map_errors
from ._amqp_options import AmqpOptions, Endpoint

__all__ = ["AmqpConnection", "close_quietly", "declare_event_exchange", "ms"]

logger = logging.getLogger("aiocelev.brokers.amqp")

#: How long closing a channel or connection may take before it is abandoned.
CLOSE_TIMEOUT = 2.0


def ms(seconds: float | None) -> int | None:
    """Seconds as the integer milliseconds of an ``x-`` queue argument (kombu truncates)."""
    return None if seconds is None else int(seconds * 1000)


async def close_quietly(obj: AbstractChannel | AbstractConnection | None) -> None:
    """Close a channel or connection, ignoring every error, bounded in time."""
    if obj is None:
        return
    with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
        try:
            if not obj.is_closed:
                await obj.close()
        except Exception:  # already broken: nothing left to release
            logger.debug("ignoring error while closing %r", type(obj).__name__, exc_info=True)


async def declare_event_exchange(channel: AbstractChannel, opts: AmqpOptions) -> AbstractExchange:
    """Declare the event exchange as Celery does: topic, durable, not auto-delete."""
    return await channel.declare_exchange(
        opts.exchange, aio_pika.ExchangeType.TOPIC, durable=True, auto_delete=False
    )


@final
class AmqpConnection:
    """The live connection of one adapter, (re)connected on demand.

    :param endpoints: the failover list.
    :param opts: the adapter's options (timeouts and backoff).
    :param masked: the whole URL, passwords masked (for messages).
    :param on_connect: awaited with each new connection before it is handed out
        (the publisher opens its channel); an error there discards the connection.
    :param on_reset: called when the connection is discarded.
    :param on_lost: called when the connection closes (to wake waiting consumers).
    :param opener: opens one connection to a URL within a timeout (seconds);
        ``aio_pika.connect`` when not given.
    """

    def __init__(
        self,
        endpoints: list[Endpoint],
        opts: AmqpOptions,
        masked: str,
        *,
        on_connect: Callable[[AbstractConnection], Awaitable[None]],
        on_reset: Callable[[], None],
        on_lost: Callable[[], None],
        opener: Callable[[str, float], Awaitable[AbstractConnection]] | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.opts = opts
        self.masked = masked
        self._on_connect = on_connect
        self._on_reset = on_reset
        self._on_lost = on_lost
        self._opener = opener
        self._conn: AbstractConnection | None = None
        self._index = 0
        #: Held while (re)connecting, and by whoever re-opens a channel that
        #: every user shares (the publisher's).
        self.lock = anyio.Lock()
        self.backoff = Backoff(opts.reconnect_delay, opts.reconnect_max_delay)
        self._next_attempt = 0.0
        self._connected_once = False
        self._dead: AbstractConnection | None = None
        self.closed = False
        #: Why the connection was last lost (for connection statuses), if known.
        self.last_error: str | None = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("connected" if self.alive() else "disconnected")
        return f"<AmqpConnection {self.masked!r} {state}>"

    @property
    def current_masked(self) -> str:
        """The masked URL of the endpoint in use (or tried last)."""
        return self.endpoints[self._index].masked

    def alive(self) -> bool:
        """Whether the connection is open right now."""
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

    async def _open_one(self, endpoint: Endpoint) -> AbstractConnection:
        timeout = self.opts.connect_timeout
        with map_errors(f"connecting to {endpoint.masked}"):
            with anyio.fail_after(timeout + 1):
                if self._opener is not None:
                    conn = await self._opener(endpoint.url, timeout)
                else:
                    conn = await aio_pika.connect(endpoint.url, timeout=timeout)
        return conn

    async def _connect_locked(self) -> AbstractConnection:
        """Try each endpoint once, starting with the last good one (lock held)."""
        errors: list[str] = []
        reasons: list[str] = []
        count = len(self.endpoints)
        for step in range(count):
            index = (self._index + step) % count
            endpoint = self.endpoints[index]
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
                reason = exc.reason or str(exc)
                reasons.append(reason if count == 1 else f"{endpoint.masked}: {reason}")
                continue
            self._index = index
            try:
                await self._on_connect(conn)
            except BaseException:
                await close_quietly(conn)
                raise
            if self._connected_once:
                logger.warning("reconnected to %s", endpoint.masked)
            self._conn = conn
            self._connected_once = True
            self.backoff.reset()
            self._next_attempt = 0.0
            conn.close_callbacks.add(self._on_closed)
            return conn
        self._next_attempt = time.monotonic() + self.backoff.next_delay()
        error = BrokerConnectionError("; ".join(errors) or f"cannot connect to {self.masked}")
        error.reason = "; ".join(reasons) or None
        raise error

    def _on_closed(self, sender: Any, exc: BaseException | None = None, *_: Any) -> None:
        if sender is not None:
            self._dead = sender
        self.last_error = describe(exc) if exc else "connection closed"
        if not self.closed:
            logger.warning(
                "connection to %s lost%s",
                self.current_masked,
                f": {describe(exc)}" if exc else "",
            )
        self._on_lost()

    async def get(self, *, wait: bool) -> AbstractConnection:
        """The live connection, connecting if needed.

        :param wait: wait for a reconnect already in progress and ignore the
            backoff window (subscriptions, remote control); otherwise fail at
            once (publish).
        :raises BrokerConnectionError: no endpoint could be reached.
        :raises ClosedError: the adapter was closed.
        """
        if self.closed:
            raise ClosedError("the AMQP broker is closed")
        conn = self._conn
        if conn is not None and self._usable(conn):
            return conn
        if not wait and self._connected_once:
            if self.lock.locked():
                raise BrokerConnectionError(f"{self.masked}: connection lost, reconnecting")
            if time.monotonic() < self._next_attempt:
                raise BrokerConnectionError(
                    f"{self.masked}: broker unavailable; next reconnect attempt in "
                    f"{self._next_attempt - time.monotonic():.1f}s"
                )
        async with self.lock:
            if self.closed:
                raise ClosedError("the AMQP broker is closed")
            conn = self._conn
            if conn is not None and self._usable(conn):
                return conn
            old, self._conn = self._conn, None
            self._on_reset()
            await close_quietly(old)
            return await self._connect_locked()

    async def drop(self) -> None:
        """Discard the connection (found dead by a user); the next :meth:`get` reconnects."""
        conn, self._conn = self._conn, None
        self._on_reset()
        # Counts as a failure: a failed reconnect right after waits longer.
        self.backoff.attempts = max(self.backoff.attempts, 1)
        self._next_attempt = 0.0
        await close_quietly(conn)

    async def aclose(self) -> None:
        """Close the connection for good (idempotent)."""
        self.closed = True
        with anyio.CancelScope(shield=True):
            conn, self._conn = self._conn, None
            self._on_reset()
            await close_quietly(conn)
