"""Remote control ("pidbox") for ``memory://``: node mailboxes, broadcasts and replies.

Mirrors what kombu's ``Mailbox`` does on a real broker, inside one process:
:meth:`MemoryControl.broadcast` delivers a request to the pidbox of every node
consuming one on the same hub (the ``celery.pidbox`` fanout exchange), and a
node's reply goes to the reply queue named in the request (the
``reply.celery.pidbox`` direct exchange).  Bodies travel as the same JSON bytes
as on a real broker, so whatever a handler returns must be JSON serialisable.

Used by :func:`~aiocelev.worker_events` for nodes on a :class:`MemoryBroker`,
and by tests and demos to talk to them::

    control = MemoryControl(broker)
    replies = await control.broadcast("ping", reply=True, timeout=0.5)
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, final

import anyio
import anyio.lowlevel

from .._clock import LamportClock
from .._codec import dumps, loads
from .._control import (
    accept_reply,
    build_control_body,
    encode_control_body,
    new_reply_key,
    new_ticket,
    reply_limit,
    reply_to_mapping,
)
from .._exceptions import (
    BrokerConnectionError,
    ConfigurationError,
    DecodeError,
)
from .._worker import ControlRequest
from .memory import MemoryBroker, MemoryHub

__all__ = ["MemoryControl"]

logger = logging.getLogger("aiocelev.brokers.memory")

#: Most requests waiting in one node's pidbox; more are dropped (RabbitMQ's
#: pidbox queues drop old requests by TTL instead).
MAILBOX_SIZE = 1000

_Message = tuple[bytes, dict[str, Any]]


class _Mailbox:
    """A bounded FIFO of raw messages with an async ``get``."""

    def __init__(self) -> None:
        self._items: deque[_Message] = deque()
        self._ready = anyio.Event()
        self.closed = False

    def put(self, message: _Message) -> bool:
        if self.closed or len(self._items) >= MAILBOX_SIZE:
            return False
        self._items.append(message)
        self._ready.set()
        return True

    async def get(self) -> _Message | None:
        """The next message, or ``None`` once closed."""
        while not self._items:
            if self.closed:
                return None
            if self._ready.is_set():
                self._ready = anyio.Event()
            await self._ready.wait()
        return self._items.popleft()

    def close(self) -> None:
        self.closed = True
        self._items.clear()
        self._ready.set()


class _ControlHub:
    """The pidbox and reply "exchanges" of one memory hub."""

    def __init__(self) -> None:
        self.nodes: dict[str, _Mailbox] = {}
        self.replies: dict[str, _Mailbox] = {}


_control_hubs: weakref.WeakKeyDictionary[MemoryHub, _ControlHub] = weakref.WeakKeyDictionary()


def _control_hub(hub: MemoryHub) -> _ControlHub:
    found = _control_hubs.get(hub)
    if found is None:
        found = _control_hubs[hub] = _ControlHub()
    return found


@final
class _MemoryPidbox:
    """The requests arriving in one node's pidbox."""

    def __init__(self, hub: MemoryHub, nodename: str, mailbox: _Mailbox) -> None:
        self._hub = hub  # keeps the hub (and its control hub) alive while consuming
        self._nodename = nodename
        self._mailbox = mailbox

    def __aiter__(self) -> AsyncIterator[ControlRequest]:
        return self

    async def __anext__(self) -> ControlRequest:
        while True:
            message = await self._mailbox.get()
            if message is None:
                raise StopAsyncIteration
            body, headers = message
            try:
                return ControlRequest.from_message(loads(body), headers)
            except (DecodeError, ValueError) as exc:
                logger.warning(
                    "%s: ignoring a malformed remote-control request: %s", self._nodename, exc
                )

    async def aclose(self) -> None:
        hub = _control_hubs.get(self._hub)
        if hub is not None and hub.nodes.get(self._nodename) is self._mailbox:
            del hub.nodes[self._nodename]
        self._mailbox.close()

    def __repr__(self) -> str:
        return f"<memory pidbox {self._nodename!r}>"


@final
class MemoryControl:
    """The :class:`~aiocelev.ControlTransport` of a :class:`MemoryBroker`, plus ``broadcast``.

    :param broker: the adapter whose hub the pidboxes live on.
    """

    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker
        self.clock = LamportClock()

    def __repr__(self) -> str:
        return f"<MemoryControl {self._broker.url!r}>"

    async def _hub(self) -> tuple[MemoryHub, _ControlHub]:
        await self._broker.connect()
        hub = self._broker.hub
        if not hub.available:
            raise BrokerConnectionError(f"memory broker {hub.name!r} is unavailable")
        return hub, _control_hub(hub)

    async def consume_control(self, nodename: str) -> _MemoryPidbox:
        """Start consuming *nodename*'s pidbox (live when this returns).

        :raises ConfigurationError: another consumer already uses that node name
            (kombu refuses the same).
        """
        hub, control = await self._hub()
        if nodename in control.nodes:
            raise ConfigurationError(f"a node named {nodename!r} already consumes its pidbox")
        mailbox = control.nodes[nodename] = _Mailbox()
        return _MemoryPidbox(hub, nodename, mailbox)

    async def reply(self, request: ControlRequest, nodename: str, payload: Any) -> None:
        """Send ``{nodename: payload}`` to the reply queue *request* names (dropped if gone)."""
        if request.reply_to is None:
            return
        _, control = await self._hub()
        if request.clock is not None:
            self.clock.adjust(request.clock)
        body = dumps({nodename: payload}).encode()
        headers = {"ticket": request.ticket, "clock": self.clock.forward()}
        mailbox = control.replies.get(request.reply_to["routing_key"])
        if mailbox is not None:
            mailbox.put((body, headers))
        await anyio.lowlevel.checkpoint()

    async def broadcast(
        self,
        method: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        destination: Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
    ) -> list[dict[str, Any]]:
        """Send a remote-control command to every node, as ``celery control`` does.

        Same contract as :meth:`aiocelev.brokers.amqp.AmqpBroker.broadcast`:
        with *reply*, replies ``{nodename: {...}}`` are collected for *timeout*
        seconds or until *limit* arrived (default ``len(destination)``).

        :raises ConfigurationError: *destination* is not a list or tuple.
        """
        if destination is not None and not isinstance(destination, (list, tuple)):
            raise ConfigurationError("destination must be a list or tuple of node names")
        _, control = await self._hub()
        ticket: str | None = None
        reply_to: dict[str, str] | None = None
        replies_box: _Mailbox | None = None
        key = ""
        if reply:
            key = new_reply_key()
            ticket = new_ticket()
            reply_to = reply_to_mapping(key)
            replies_box = control.replies[key] = _Mailbox()
        try:
            body, headers = build_control_body(
                method,
                arguments,
                destination=destination,
                ticket=ticket,
                reply_to=reply_to,
                clock=self.clock.forward(),
                timeout=timeout,
                pattern=pattern,
                matcher=matcher,
            )
            payload = encode_control_body(body)
            for mailbox in tuple(control.nodes.values()):
                if not mailbox.put((payload, dict(headers))):
                    logger.warning("a pidbox is full: dropped a %r request", method)
            await anyio.lowlevel.checkpoint()
            if replies_box is None or ticket is None:
                return []
            limit = reply_limit(limit, destination)
            replies: list[dict[str, Any]] = []
            with anyio.move_on_after(timeout):
                while limit is None or len(replies) < limit:
                    message = await replies_box.get()
                    if message is None:  # pragma: no cover - only closed below
                        break
                    reply_body, reply_headers = message
                    got = accept_reply(reply_body, reply_headers, ticket, self.clock, logger)
                    if got is not None:
                        replies.append(got)
            return replies
        finally:
            if replies_box is not None:
                replies_box.close()
                control.replies.pop(key, None)
