"""In-process broker: ``memory://`` and ``memory://NAME``.

A real adapter with AMQP topic routing (``*``, ``#``), used by the demo, by
aiocelev's own tests and by users' tests.  Every adapter opened on the same URL
within one process shares one hub (one "server"); hubs live only as long as an
adapter uses them, so tests do not leak state into each other.  Each
subscription has a bounded queue (``?max_queue=N``, default 10,000 messages);
when it is full a publisher waits, as under RabbitMQ flow control.

For fault-injection tests, :func:`memory_hub` returns the hub of a URL and
``hub.available = False`` makes every publish fail with
:class:`~aiocelev.BrokerConnectionError` until it is set back.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, final
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.lowlevel

from .._exceptions import BrokerConnectionError, ClosedError, ConfigurationError
from .._link import LinkMonitor
from .._message import IncomingMessage, OutgoingMessage
from ._memory_control import Mailbox, MemoryControl
from ._topic import compile_bindings

__all__ = ["MemoryBroker", "MemoryHub", "from_url", "memory_hub"]


class MemoryHub:
    """The shared exchange behind every ``memory://NAME`` adapter."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.available = True
        self.published = 0
        self._subscriptions: list[_MemorySubscription] = []
        #: Remote control: node pidboxes and client reply queues on this hub.
        self.pidboxes: dict[str, Mailbox] = {}
        self.reply_queues: dict[str, Mailbox] = {}

    def __repr__(self) -> str:
        return f"<MemoryHub {self.name!r} subscriptions={len(self._subscriptions)}>"


_hubs: weakref.WeakValueDictionary[str, MemoryHub] = weakref.WeakValueDictionary()


def _hub_name(url: str) -> str:
    parts = urlsplit(url)
    return (parts.netloc + parts.path).strip("/") or "default"


def memory_hub(url: str = "memory://") -> MemoryHub:
    """The hub shared by adapters on *url* (created if needed; keep a reference)."""
    name = _hub_name(url)
    hub = _hubs.get(name)
    if hub is None:
        hub = MemoryHub(name)
        _hubs[name] = hub
    return hub


@final
class _MemorySubscription:
    def __init__(self, hub: MemoryHub, matches: Callable[[str], bool], max_queue: int) -> None:
        self._hub = hub
        self.matches = matches
        self._queue: deque[IncomingMessage] = deque()
        self._max = max_queue
        self._readable = anyio.Event()
        self._writable = anyio.Event()
        self._closed = False
        #: Always connected in-process; tests may call ``link.lost()`` / ``link.restored()``.
        self.link = LinkMonitor(f"memory://{hub.name}")

    def offer(self, message: IncomingMessage) -> bool:
        """Queue *message* if there is room (the fast path)."""
        if len(self._queue) >= self._max:
            return False
        self._queue.append(message)
        if not self._readable.is_set():
            self._readable.set()
        return True

    async def put(self, message: IncomingMessage) -> None:
        while not self._closed and not self.offer(message):
            self._writable = anyio.Event()
            await self._writable.wait()

    def __aiter__(self) -> AsyncIterator[IncomingMessage]:
        return self

    async def __anext__(self) -> IncomingMessage:
        queue = self._queue
        while not queue:
            if self._closed:
                raise StopAsyncIteration
            self._readable = anyio.Event()
            await self._readable.wait()
        message = queue.popleft()
        if not self._writable.is_set():
            self._writable.set()
        return message

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        if self in self._hub._subscriptions:
            self._hub._subscriptions.remove(self)
        self._readable.set()
        self._writable.set()


@final
class MemoryBroker:
    """In-process broker adapter; see the module docstring."""

    def __init__(self, url: str = "memory://", *, max_queue: int = 10_000) -> None:
        if max_queue < 1:
            raise ConfigurationError("max_queue must be at least 1")
        self._url = url
        self._max_queue = max_queue
        self._hub: MemoryHub | None = None
        self._closed = False
        self._subscriptions: list[_MemorySubscription] = []
        self._control: MemoryControl | None = None

    @property
    def url(self) -> str:
        return self._url

    def control(self) -> MemoryControl:
        """The remote-control transport over this hub (see :mod:`aiocelev.brokers`)."""
        if self._control is None:
            self._control = MemoryControl(self)
        return self._control

    @property
    def hub(self) -> MemoryHub:
        """The hub this adapter is connected to."""
        if self._hub is None:
            raise ClosedError("the memory broker is not connected")
        return self._hub

    async def connect(self) -> None:
        if self._closed:
            raise ClosedError("the memory broker is closed")
        if self._hub is None:
            self._hub = memory_hub(self._url)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        if self._closed:
            raise ClosedError("the memory broker is closed")
        if self._hub is None:
            await self.connect()
        hub = self.hub
        for message in messages:
            if not hub.available:
                raise BrokerConnectionError(f"memory broker {hub.name!r} is unavailable")
            incoming = IncomingMessage(
                routing_key=message.routing_key,
                body=message.body,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                headers=message.headers,
            )
            hub.published += 1
            for sub in tuple(hub._subscriptions):
                if sub.matches(message.routing_key) and not sub.offer(incoming):
                    await sub.put(incoming)
        await anyio.lowlevel.checkpoint()

    async def subscribe(self, binding_keys: Sequence[str]) -> _MemorySubscription:
        if self._closed:
            raise ClosedError("the memory broker is closed")
        if self._hub is None:
            await self.connect()
        sub = _MemorySubscription(self.hub, compile_bindings(binding_keys), self._max_queue)
        self.hub._subscriptions.append(sub)
        self._subscriptions.append(sub)
        return sub

    async def aclose(self) -> None:
        self._closed = True
        for sub in self._subscriptions:
            await sub.aclose()
        self._subscriptions.clear()
        self._hub = None

    def __repr__(self) -> str:
        return f"<MemoryBroker {self._url!r}>"


def from_url(url: str, **options: Any) -> MemoryBroker:
    """Create a :class:`MemoryBroker` for ``memory://[NAME][?max_queue=N]``."""
    query = parse_qs(urlsplit(url).query)
    if "max_queue" in query and "max_queue" not in options:
        try:
            options["max_queue"] = int(query["max_queue"][-1])
        except ValueError:
            raise ConfigurationError(f"max_queue must be an integer in {url!r}") from None
    unknown = set(options) - {"max_queue"}
    if unknown:
        raise ConfigurationError(f"unknown memory:// options: {', '.join(sorted(unknown))}")
    return MemoryBroker(url.split("?", 1)[0], **options)
