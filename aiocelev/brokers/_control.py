"""The remote-control boundary: what a broker adapter offers for Celery's pidbox.

Celery's ``app.control`` (kombu ``Mailbox``) broadcasts a request to every
node's ``<nodename>.<namespace>.pidbox`` queue; a node replies
``{nodename: payload}`` on the reply exchange named in the request's
``reply_to``, with headers ``ticket`` (the request's) and ``clock``.

Every adapter reaches this through one hook, :meth:`Broker.control()
<aiocelev.brokers.Broker.control>`, which returns a :class:`ControlTransport`.
The adapters shipped with aiocelev implement it by subclassing
:class:`PidboxTransport`, which owns everything that does not depend on the
broker: building and encoding requests, the Lamport clock, the one reply
collector (:class:`Replies`: timeout, limit, early stop when every named node
answered, duplicate node names) and the node-name registry.  An adapter only
moves bytes: it publishes a request, opens a reply queue, consumes a node's
pidbox and sends a reply.

Duplicate node names are handled alike on every broker: a second
:meth:`~ControlTransport.consume_control` for a node name that is already
consumed through the same broker (same URL, same namespace) in this process
raises :class:`~aiocelev.DuplicateNodeError`; a duplicate in another process is
refused by RabbitMQ (the pidbox queue is exclusive, also
:class:`~aiocelev.DuplicateNodeError`) and cannot be seen on Redis pub/sub or
by the memory broker's other hubs, where both nodes answer and the client marks
the second reply :attr:`~aiocelev.ControlReply.duplicate`, as Celery's
``DuplicateNodenameWarning`` does.
"""

from __future__ import annotations

import logging
import math
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from types import TracebackType
from typing import Any, NamedTuple, Protocol, final, runtime_checkable

import anyio

from .._clock import LamportClock
from .._control import (
    DEFAULT_CONTROL_EXCHANGE,
    ControlReply,
    ControlRequest,
    build_control_body,
    decode_replies,
    encode_control_body,
    encode_reply_body,
    new_reply_key,
    new_ticket,
    reply_headers,
    reply_limit,
    reply_to_mapping,
)
from .._exceptions import ClosedError, ConfigurationError, DuplicateNodeError

__all__ = [
    "ControlSubscription",
    "ControlTransport",
    "PidboxTransport",
    "RawReply",
    "Replies",
    "ReplyQueue",
]

logger = logging.getLogger("aiocelev.control")


class RawReply(NamedTuple):
    """One reply message as it came off the broker: JSON body bytes and headers."""

    body: bytes
    headers: Mapping[str, Any]


@runtime_checkable
class ControlSubscription(Protocol):
    """The requests arriving in one node's pidbox, live from creation until :meth:`aclose`.

    Malformed requests are logged and skipped.  Iteration raises
    :class:`~aiocelev.BrokerConnectionError` when the connection is lost (the
    owner consumes again once the broker is back) and ends after :meth:`aclose`.
    """

    def __aiter__(self) -> AsyncIterator[ControlRequest]: ...

    async def __anext__(self) -> ControlRequest: ...

    async def aclose(self) -> None:
        """Stop consuming and release the pidbox queue."""
        ...


@runtime_checkable
class ReplyQueue(Protocol):
    """A client's reply queue: raw replies, live from creation until :meth:`aclose`.

    ``__anext__`` waits for the next reply; the collector bounds the wait, so
    an implementation must tolerate being cancelled while it waits.
    """

    def __aiter__(self) -> AsyncIterator[RawReply]: ...

    async def __anext__(self) -> RawReply: ...

    async def aclose(self) -> None:
        """Delete the reply queue."""
        ...


@runtime_checkable
class ControlTransport(Protocol):
    """Remote control over one broker: send commands, or be a node that answers them."""

    @property
    def namespace(self) -> str:
        """Celery's ``control_exchange`` (``"celery"``): exchanges are ``<namespace>.pidbox``."""
        ...

    @property
    def clock(self) -> LamportClock:
        """The Lamport clock stamped on requests and replies (merged from what arrives)."""
        ...

    def broadcast(
        self,
        method: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        destination: Sequence[str] | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
        reply: bool = True,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> Replies:
        """Send *method* to every node (or *destination*), as ``celery control`` does.

        Returns the reply stream; nothing is sent until it is entered::

            async with transport.broadcast("ping", timeout=1.0) as replies:
                async for reply in replies:
                    print(reply.node, reply.payload)
        """
        ...

    async def consume_control(self, nodename: str) -> ControlSubscription:
        """Start consuming *nodename*'s pidbox; live when this returns.

        :raises BrokerConnectionError: the broker cannot be reached now.
        :raises DuplicateNodeError: the node name is already in use.
        """
        ...

    async def reply(self, request: ControlRequest, nodename: str, payload: Any) -> None:
        """Send ``{nodename: payload}`` to where *request* wants replies (if it does).

        :raises BrokerConnectionError: the broker cannot be reached now.
        """
        ...


# -- the shared implementation ------------------------------------------------

#: Node names consumed in this process: ``(broker identity, namespace, nodename)``.
_consuming: set[tuple[str, str, str]] = set()
_consuming_lock = threading.Lock()


@final
class _NodeSubscription:
    """A node's pidbox subscription that frees the node name when closed."""

    def __init__(self, inner: ControlSubscription, key: tuple[str, str, str]) -> None:
        self._inner = inner
        self._key: tuple[str, str, str] | None = key

    def __repr__(self) -> str:
        return repr(self._inner)

    def __aiter__(self) -> AsyncIterator[ControlRequest]:
        return self

    async def __anext__(self) -> ControlRequest:
        return await self._inner.__anext__()

    async def aclose(self) -> None:
        key, self._key = self._key, None
        if key is not None:
            with _consuming_lock:
                _consuming.discard(key)
        await self._inner.aclose()


class PidboxTransport(ABC):
    """Base class of the remote-control transports of aiocelev's adapters.

    Subclasses implement four byte-moving primitives; everything else
    (request bodies, clocks, the reply collector, node names) lives here.

    :param namespace: Celery's ``control_exchange`` setting.
    """

    def __init__(self, namespace: str = DEFAULT_CONTROL_EXCHANGE) -> None:
        self._namespace = namespace
        self._clock = LamportClock()

    @property
    def namespace(self) -> str:
        """Celery's ``control_exchange`` (``"celery"`` by default)."""
        return self._namespace

    @property
    def clock(self) -> LamportClock:
        """The Lamport clock of this transport (requests and replies)."""
        return self._clock

    # -- what an adapter implements -------------------------------------------

    @property
    @abstractmethod
    def identity(self) -> str:
        """Where node names must be unique: the broker and virtual host / database."""

    @abstractmethod
    async def open_reply_queue(self, reply_key: str) -> ReplyQueue:
        """Declare and consume the reply queue for *reply_key*; live when this returns."""

    @abstractmethod
    async def publish_request(self, body: bytes, headers: Mapping[str, Any]) -> None:
        """Publish an encoded request on the ``<namespace>.pidbox`` fanout exchange.

        Celery publishes it with routing key ``""``, delivery mode 2,
        ``application/json`` and the given headers (``clock``, ``expires``).
        """

    @abstractmethod
    async def consume_pidbox(self, nodename: str) -> ControlSubscription:
        """Consume *nodename*'s pidbox; live when this returns."""

    @abstractmethod
    async def send_reply(
        self, reply_to: Mapping[str, str], body: bytes, headers: Mapping[str, Any]
    ) -> None:
        """Send an encoded reply to the exchange and routing key of *reply_to*.

        A reply nobody waits for any more is dropped, as with Celery.
        """

    # -- the contract ----------------------------------------------------------

    def broadcast(
        self,
        method: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        destination: Sequence[str] | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
        reply: bool = True,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> Replies:
        """Send *method* to the nodes; see :meth:`ControlTransport.broadcast`.

        :raises ConfigurationError: *destination* is not a list or tuple, or
            *timeout* / *limit* are out of range.
        """
        return Replies(
            self,
            method,
            arguments,
            destination=destination,
            pattern=pattern,
            matcher=matcher,
            reply=reply,
            timeout=timeout,
            limit=limit,
        )

    async def consume_control(self, nodename: str) -> ControlSubscription:
        """Consume *nodename*'s pidbox (see the module notes on duplicate names)."""
        key = (self.identity, self._namespace, nodename)
        with _consuming_lock:
            if key in _consuming:
                raise DuplicateNodeError(
                    f"a node named {nodename!r} already consumes its pidbox on {self.identity}"
                )
            _consuming.add(key)
        try:
            inner = await self.consume_pidbox(nodename)
        except BaseException:
            with _consuming_lock:
                _consuming.discard(key)
            raise
        return _NodeSubscription(inner, key)

    async def reply(self, request: ControlRequest, nodename: str, payload: Any) -> None:
        """Answer *request* as node *nodename* (nothing if no reply is wanted)."""
        if request.reply_to is None:
            return
        if request.clock is not None:
            self._clock.adjust(request.clock)
        body = encode_reply_body(nodename, payload)
        await self.send_reply(
            request.reply_to, body, reply_headers(request.ticket, self._clock.forward())
        )


@final
class Replies:
    """The replies to one broadcast, as they arrive: the one reply collector.

    Enter it to send the request (the reply queue is live before the request
    goes out); iterate to take :class:`~aiocelev.ControlReply` objects as they
    arrive.  Iteration ends after *timeout* seconds, after *limit* replies, or
    as soon as every node named in *destination* answered.  Leaving the block
    deletes the reply queue, also on cancellation::

        async with transport.broadcast("ping", timeout=1.0) as replies:
            async for reply in replies:
                ...

    :meth:`collect` (or awaiting the object) does both and returns the list::

        replies = await transport.broadcast("ping")
    """

    def __init__(
        self,
        transport: PidboxTransport,
        method: str,
        arguments: Mapping[str, Any] | None,
        *,
        destination: Sequence[str] | None,
        pattern: str | None,
        matcher: str | None,
        reply: bool,
        timeout: float,
        limit: int | None,
    ) -> None:
        if destination is not None and (
            not isinstance(destination, (list, tuple))
            or not all(isinstance(node, str) for node in destination)
        ):
            raise ConfigurationError("destination must be a list or tuple of node names")
        if not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
            raise ConfigurationError(
                f"timeout must be a positive number of seconds, not {timeout!r}"
            )
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ConfigurationError(f"limit must be a positive integer, not {limit!r}")
        self._transport = transport
        self.method = method
        self._arguments = dict(arguments or {})
        self._destination = list(destination) if destination is not None else None
        self._pattern = pattern
        self._matcher = matcher
        self._reply = reply
        self._timeout = float(timeout)
        self._limit = reply_limit(limit, self._destination)
        self._queue: ReplyQueue | None = None
        self._ticket = ""
        self._deadline = 0.0
        self._pending: deque[ControlReply] = deque()
        self._seen: set[str] = set()
        self._count = 0
        self._state = "new"

    def __repr__(self) -> str:
        return f"<Replies {self.method!r} {self._state} received={self._count}>"

    @property
    def received(self) -> int:
        """Replies taken so far."""
        return self._count

    @property
    def nodes(self) -> frozenset[str]:
        """Names of the nodes that answered so far."""
        return frozenset(self._seen)

    @property
    def missing(self) -> list[str]:
        """Nodes named in *destination* that have not answered (``[]`` without one)."""
        return [node for node in self._destination or () if node not in self._seen]

    async def __aenter__(self) -> Replies:
        if self._state != "new":
            raise ClosedError("a Replies object can be entered once")
        self._state = "open"
        transport = self._transport
        ticket: str | None = None
        reply_to: dict[str, str] | None = None
        try:
            if self._reply:
                key = new_reply_key()
                ticket = self._ticket = new_ticket()
                reply_to = reply_to_mapping(key, transport.namespace)
                self._queue = await transport.open_reply_queue(key)
            body, headers = build_control_body(
                self.method,
                self._arguments,
                destination=self._destination,
                ticket=ticket,
                reply_to=reply_to,
                clock=transport.clock.forward(),
                timeout=self._timeout,
                pattern=self._pattern,
                matcher=self._matcher,
            )
            await transport.publish_request(encode_control_body(body), headers)
        except BaseException:
            await self._close()
            raise
        self._deadline = anyio.current_time() + self._timeout
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def aclose(self) -> None:
        """Stop waiting and delete the reply queue (idempotent)."""
        await self._close()

    async def _close(self) -> None:
        self._state = "closed"
        queue, self._queue = self._queue, None
        if queue is not None:
            with anyio.CancelScope(shield=True):
                await queue.aclose()

    def _done(self) -> bool:
        if self._limit is not None and self._count >= self._limit:
            return True
        return bool(self._destination) and not self.missing

    def __aiter__(self) -> AsyncIterator[ControlReply]:
        return self

    async def __anext__(self) -> ControlReply:
        if self._state == "new":
            raise ClosedError(
                "enter the replies first: async with transport.broadcast(...) as replies"
            )
        while True:
            if self._pending and not (self._limit is not None and self._count >= self._limit):
                got = self._pending.popleft()
                self._count += 1
                if got.node in self._seen:
                    logger.warning(
                        "received more than one reply from node %r: give each node a unique name",
                        got.node,
                    )
                    got = ControlReply(got.node, got.payload, duplicate=True)
                self._seen.add(got.node)
                return got
            queue = self._queue
            if queue is None or self._done():
                raise StopAsyncIteration
            remaining = self._deadline - anyio.current_time()
            if remaining <= 0:
                raise StopAsyncIteration
            with anyio.move_on_after(remaining):
                raw = await queue.__anext__()
                self._pending.extend(
                    decode_replies(
                        raw.body, raw.headers, self._ticket, self._transport.clock, logger
                    )
                )
                continue
            raise StopAsyncIteration

    async def collect(self) -> list[ControlReply]:
        """Send the request and return every reply (what ``celery control`` prints)."""
        async with self:
            return [reply async for reply in self]

    def __await__(self) -> Generator[Any, None, list[ControlReply]]:
        return self.collect().__await__()
