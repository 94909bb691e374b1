"""Remote control ("pidbox") for ``memory://``: node mailboxes, broadcasts and replies.

Mirrors what kombu's ``Mailbox`` does on a real broker, inside one process: a
request goes to the pidbox of every node consuming one on the same hub (the
``celery.pidbox`` fanout exchange), and a node's reply goes to the reply queue
named in the request (the ``reply.celery.pidbox`` direct exchange).  Bodies
travel as the same JSON bytes as on a real broker.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.lowlevel

from .._control import ControlRequest, parse_request
from .._exceptions import BrokerConnectionError
from ._control import PidboxTransport, RawReply

if TYPE_CHECKING:
    from .memory import MemoryBroker, MemoryHub

__all__ = ["MemoryControl"]

logger = logging.getLogger("aiocelev.brokers.memory")

#: Most messages waiting in one pidbox or reply queue; more are dropped (RabbitMQ's
#: pidbox queues drop old requests by TTL instead).
MAILBOX_SIZE = 1000


class Mailbox:
    """A bounded FIFO of raw messages with an async ``get``."""

    def __init__(self) -> None:
        self._items: deque[RawReply] = deque()
        self._ready = anyio.Event()
        self.closed = False

    def put(self, message: RawReply) -> bool:
        if self.closed or len(self._items) >= MAILBOX_SIZE:
            return False
        self._items.append(message)
        self._ready.set()
        return True

    async def get(self) -> RawReply | None:
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


@final
class _MemoryPidbox:
    """The requests arriving in one node's pidbox."""

    def __init__(self, hub: MemoryHub, nodename: str, mailbox: Mailbox) -> None:
        self._hub = hub
        self._nodename = nodename
        self._mailbox = mailbox

    def __aiter__(self) -> AsyncIterator[ControlRequest]:
        return self

    async def __anext__(self) -> ControlRequest:
        while True:
            message = await self._mailbox.get()
            if message is None:
                raise StopAsyncIteration
            request = parse_request(message.body, message.headers, self._nodename, logger)
            if request is not None:
                return request

    async def aclose(self) -> None:
        if self._hub.pidboxes.get(self._nodename) is self._mailbox:
            del self._hub.pidboxes[self._nodename]
        self._mailbox.close()

    def __repr__(self) -> str:
        return f"<memory pidbox {self._nodename!r}>"


@final
class _MemoryReplyQueue:
    def __init__(self, hub: MemoryHub, key: str, mailbox: Mailbox) -> None:
        self._hub = hub
        self._key = key
        self._mailbox = mailbox

    def __aiter__(self) -> AsyncIterator[RawReply]:
        return self

    async def __anext__(self) -> RawReply:
        message = await self._mailbox.get()
        if message is None:
            raise StopAsyncIteration
        return message

    async def aclose(self) -> None:
        if self._hub.reply_queues.get(self._key) is self._mailbox:
            del self._hub.reply_queues[self._key]
        self._mailbox.close()


@final
class MemoryControl(PidboxTransport):
    """The :class:`~aiocelev.brokers.ControlTransport` of a :class:`MemoryBroker`.

    Get it with ``broker.control()``.
    """

    def __init__(self, broker: MemoryBroker) -> None:
        super().__init__()
        self._broker = broker

    def __repr__(self) -> str:
        return f"<MemoryControl {self._broker.url!r}>"

    @property
    def identity(self) -> str:
        return f"memory hub {self._broker.url!r}"

    async def _hub(self) -> MemoryHub:
        await self._broker.connect()
        hub = self._broker.hub
        if not hub.available:
            raise BrokerConnectionError(f"memory broker {hub.name!r} is unavailable")
        return hub

    async def open_reply_queue(self, reply_key: str) -> _MemoryReplyQueue:
        hub = await self._hub()
        mailbox = hub.reply_queues[reply_key] = Mailbox()
        return _MemoryReplyQueue(hub, reply_key, mailbox)

    async def publish_request(self, body: bytes, headers: Mapping[str, Any]) -> None:
        hub = await self._hub()
        for nodename, mailbox in tuple(hub.pidboxes.items()):
            if not mailbox.put(RawReply(body, dict(headers))):
                logger.warning("the pidbox of %s is full: dropped a request", nodename)
        await anyio.lowlevel.checkpoint()

    async def consume_pidbox(self, nodename: str) -> _MemoryPidbox:
        hub = await self._hub()
        mailbox = hub.pidboxes[nodename] = Mailbox()
        return _MemoryPidbox(hub, nodename, mailbox)

    async def send_reply(
        self, reply_to: Mapping[str, str], body: bytes, headers: Mapping[str, Any]
    ) -> None:
        hub = await self._hub()
        mailbox = hub.reply_queues.get(reply_to.get("routing_key", ""))
        if mailbox is not None:
            mailbox.put(RawReply(body, dict(headers)))
        await anyio.lowlevel.checkpoint()
