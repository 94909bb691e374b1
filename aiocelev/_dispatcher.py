"""EventDispatcher: send Celery events, batched, buffered while the broker is away."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Collection, Mapping
from types import TracebackType
from typing import Any, NamedTuple

import anyio
import anyio.abc

from ._backoff import Backoff
from ._clock import LamportClock, utcoffset, valid_clock
from ._codec import dumps, dumps_plain, plain_values
from ._events import Event, group_of, routing_key_of
from ._exceptions import (
    AiocelevError,
    BrokerError,
    BufferFullError,
    ClosedError,
    ConfigurationError,
)
from ._lifecycle import Lifecycle, LifecycleState
from ._message import OutgoingMessage
from ._overflow import (
    DISPATCHER_POLICIES,
    Overflow,
    parse_overflow,
)
from ._url import mask_url
from .brokers import Broker
from .brokers._registry import resolve_broker

__all__ = ["DispatcherStatistics", "EventDispatcher", "anon_nodename"]

logger = logging.getLogger("aiocelev.dispatcher")

#: Most event types whose group a dispatcher remembers.
_GROUP_CACHE = 1024


class DispatcherStatistics(NamedTuple):
    """Counters of an :class:`EventDispatcher` (all cumulative except ``buffered``)."""

    accepted: int
    """Events accepted by ``send`` (and not filtered out)."""
    sent: int
    """Events handed to the broker."""
    messages: int
    """Messages published (a batch counts once)."""
    batches: int
    """Batched (``<group>.multi``) messages among ``messages``."""
    buffered: int
    """Events accepted but not yet handed to the broker (now)."""
    dropped: int
    """Events lost: buffer overflow, or still unsent when the dispatcher closed."""
    filtered: int
    """Events not sent because the dispatcher or their group is disabled."""
    publish_errors: int
    """Failed publish attempts (each is retried)."""


def anon_nodename() -> str:
    """Celery's node name for a process that is not a worker: ``gen<pid>@<host>``."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


# A buffered event: (batch group or None, routing key, the event as encoded JSON
# or as a plain dict to encode at publish time, sequence number: 1-based position
# among accepted events).
_Item = tuple[str | None, str, "str | dict[str, Any]", int]


def _encode_batch(payloads: list[str | dict[str, Any]]) -> bytes:
    """The JSON array of already encoded events and plain dicts, in order."""
    if all(type(p) is dict for p in payloads):
        return dumps_plain(payloads)
    parts = [p.encode() if isinstance(p, str) else dumps_plain(p) for p in payloads]
    return b"[" + b", ".join(parts) + b"]"


class EventDispatcher:
    """Send monitoring events to the ``celeryev`` exchange, as a Celery worker does.

    An async context manager::

        async with EventDispatcher("amqp://localhost") as dispatcher:
            await dispatcher.send("task-succeeded", uuid=task_id, result="4", runtime=0.01)

    ``send`` stamps ``hostname``, ``utcoffset``, ``pid``, ``clock`` (forwarded
    now) and ``timestamp``, checks that the event is serialisable (a value that
    is not fails right there) and buffers it; a background publisher encodes
    buffered events, a whole batch at once, and hands them to the broker in
    order.  Events of plain values (strings, numbers, lists of them) are encoded
    at publish time, so do not mutate a list after passing it to ``send``.  Events of ``batch_groups`` go out as
    JSON arrays on ``<group>.multi`` (natural batching: whatever accumulated while
    the previous publish was in flight, up to ``max_batch`` per message); worker
    events are never batched.  While the broker is away, events wait in the
    bounded buffer and go out in order once it is back.  Leaving the context
    (or :meth:`aclose`) flushes, waiting at most ``close_timeout`` seconds.

    The dispatcher runs its publisher in a task group of its own: enter and
    exit it (``async with``, or ``__aenter__`` then :meth:`aclose`) in the same
    task.  It cannot be reopened once closed.

    :param broker: a :class:`~aiocelev.brokers.Broker`, or a URL to open one (the
        dispatcher then owns and closes it).
    :param hostname: the node name; default ``gen<pid>@<host>``.
    :param groups: send only events of these groups (``None``: every group).
    :param batch_groups: groups whose events are batched; ``()`` sends one message per event.
    :param enabled: start enabled (see :meth:`enable` / :meth:`disable`).
    :param clock: the Lamport clock to forward (shared with a receiver, as in Celery).
    :param max_batch: most events in one batched message.
    :param buffer_size: most events waiting for the broker.
    :param overflow: what a full buffer does: ``block`` (default), ``drop_oldest``,
        ``drop_newest`` or ``error`` (see :class:`Overflow`).
    :param block_timeout: the longest ``send`` waits for room under ``block``
        (``None``: no limit); afterwards the oldest buffered event is dropped.
    :param close_timeout: the longest leaving the context waits to flush.
    :param broker_options: options for :func:`~aiocelev.brokers.open_broker` when *broker* is a URL.
    :raises ConfigurationError: a bad argument, e.g. ``overflow="pause"`` (a
        receiver policy) or ``max_batch=0``.
    """

    def __init__(
        self,
        broker: Broker | str,
        *,
        hostname: str | None = None,
        groups: Collection[str] | None = None,
        batch_groups: Collection[str] = ("task",),
        enabled: bool = True,
        clock: LamportClock | None = None,
        max_batch: int = 100,
        buffer_size: int = 10_000,
        overflow: Overflow | str = Overflow.BLOCK,
        block_timeout: float | None = 1.0,
        close_timeout: float = 10.0,
        broker_options: Mapping[str, Any] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ConfigurationError("max_batch must be at least 1")
        if buffer_size < 1:
            raise ConfigurationError("buffer_size must be at least 1")
        self._overflow = parse_overflow(overflow, DISPATCHER_POLICIES, "EventDispatcher")
        self._broker, self._owns_broker = resolve_broker(broker, broker_options)
        self.hostname = hostname or anon_nodename()
        self.groups: set[str] | None = set(groups) if groups is not None else None
        self.batch_groups = frozenset(batch_groups)
        self.clock = clock if clock is not None else LamportClock()
        self.pid = os.getpid()
        self._enabled = enabled
        self._max_batch = max_batch
        self._buffer_size = buffer_size
        self._block_timeout = block_timeout
        self._close_timeout = close_timeout
        self._headers = {"hostname": self.hostname}

        self._buffer: deque[_Item] = deque()
        self._inflight: list[_Item] = []
        self._accepted = 0
        self._sent = 0
        self._messages = 0
        self._batches = 0
        self._dropped = 0
        self._filtered = 0
        self._publish_errors = 0
        self._connected = True
        self._wakeup = anyio.Event()
        self._publisher_waiting = False
        self._progress = anyio.Event()
        self._offset = utcoffset()
        self._offset_checked = time.monotonic()
        self._lifecycle = Lifecycle("EventDispatcher")
        self._task_group: anyio.abc.TaskGroup | None = None
        self._group_of: dict[str, str] = {}
        self._template: dict[str, Any] = {
            "hostname": self.hostname,
            "utcoffset": self._offset,
            "pid": self.pid,
            "clock": 0,
        }

    # -- public API ---------------------------------------------------------

    @property
    def broker(self) -> Broker:
        """The broker adapter this dispatcher publishes to."""
        return self._broker

    @property
    def enabled(self) -> bool:
        """Whether events are sent at all."""
        return self._enabled

    def enable(self) -> None:
        """Send events (the default)."""
        self._enabled = True

    def disable(self) -> None:
        """Stop sending events; ``send`` then drops them (counted as ``filtered``)."""
        self._enabled = False

    def statistics(self) -> DispatcherStatistics:
        """A snapshot of the counters."""
        return DispatcherStatistics(
            accepted=self._accepted,
            sent=self._sent,
            messages=self._messages,
            batches=self._batches,
            buffered=len(self._buffer) + len(self._inflight),
            dropped=self._dropped,
            filtered=self._filtered,
            publish_errors=self._publish_errors,
        )

    async def send(self, type: str, /, **fields: Any) -> None:  # noqa: A002
        """Stamp, encode and buffer one event; return once it is accepted.

        :param type: the event type, e.g. ``task-started``.
        :param fields: the event's own fields (``uuid``, ``result``...); a
            ``timestamp`` given here is kept.
        :raises TypeError: a field value is not JSON serialisable.
        :raises BufferFullError: the buffer is full and the policy is ``error``.
        :raises ClosedError: the dispatcher is not open.
        """
        if self._lifecycle.state is not LifecycleState.OPEN:
            self._lifecycle.check_open()
        group = self._group_of.get(type)
        if group is None:
            group = type.partition("-")[0]
            if len(self._group_of) < _GROUP_CACHE:
                self._group_of[type] = group
        if not self._enabled or (self.groups is not None and group not in self.groups):
            self._filtered += 1
            return
        timestamp = fields.pop("timestamp", None)
        # hostname, utcoffset and pid from a prebuilt template (in Celery's key order)
        data = self._stamp().copy()
        clock = self.clock
        clock.value += 1
        data["clock"] = clock.value
        data.update(fields)
        data["timestamp"] = timestamp if timestamp is not None else time.time()
        data["type"] = type
        # Plain events are encoded later, a whole batch in one call; anything
        # else is encoded now, so a value that is not serialisable fails here.
        # The stamped fields are plain by construction: check the caller's only.
        plain = plain_values(fields.values()) and (timestamp is None or plain_values((timestamp,)))
        await self._accept(group, type, data if plain else dumps(data))

    async def send_event(self, event: Event | Mapping[str, Any]) -> None:
        """Buffer an already complete event (e.g. one being replayed) unchanged.

        Nothing is stamped; the dispatcher's clock is adjusted to the event's.
        Group filtering and batching apply as for :meth:`send`.
        """
        self._lifecycle.check_open()
        data = event._fields if isinstance(event, Event) else event
        type_ = data.get("type")
        if not isinstance(type_, str):
            raise ConfigurationError("an event needs a string 'type' field")
        group = group_of(type_)
        if not self._enabled or (self.groups is not None and group not in self.groups):
            self._filtered += 1
            return
        clock = data.get("clock")
        if valid_clock(clock):  # an absurd clock must not drag the local one along
            self.clock.adjust(clock)
        await self._accept(group, type_, dumps(data))

    async def flush(self) -> None:
        """Return once every event accepted so far was handed to the broker (or dropped)."""
        self._lifecycle.check_open()
        await self._wait_settled(self._accepted)

    # -- context management ---------------------------------------------------

    async def __aenter__(self) -> EventDispatcher:
        self._lifecycle.opening()
        try:
            await self._broker.connect()
        except BrokerError as exc:
            # Not fatal: events are buffered and the publisher keeps retrying.
            self._connected = False
            logger.warning(
                "broker %s unavailable at start (%s); buffering events and retrying",
                self._broker.url,
                exc,
            )
        except BaseException:
            self._lifecycle.failed()
            raise
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._publisher, name=f"aiocelev publisher {self.hostname}")
        self._lifecycle.opened()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        return None

    async def aclose(self) -> None:
        """Flush (at most ``close_timeout`` seconds), stop the publisher and close.

        What leaving ``async with`` does.  Call it from the task that entered,
        and not inside a cancel scope (``move_on_after``...) entered since.
        Events still unsent then are dropped (counted in ``statistics().dropped``).
        Closing again, or closing a dispatcher never opened, does nothing more.
        """
        if self._lifecycle.state in (LifecycleState.CLOSING, LifecycleState.CLOSED):
            return
        self._lifecycle.closing()
        task_group = self._task_group
        if task_group is None:  # never opened: nothing runs, nothing to flush
            try:
                if self._owns_broker:
                    with anyio.CancelScope(shield=True):
                        await self._broker.aclose()
            finally:
                self._lifecycle.closed()
                self._progress.set()
            return
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(self._close_timeout):
                await self._wait_settled(self._accepted)
            unsent = len(self._buffer) + len(self._inflight)
            if unsent:
                self._dropped += unsent
                logger.warning(
                    "closing with %d events not delivered to %s (close_timeout=%ss)",
                    unsent,
                    self._broker.url,
                    self._close_timeout,
                )
                self._buffer.clear()
                self._inflight = []
        task_group.cancel_scope.cancel()
        try:
            await task_group.__aexit__(None, None, None)
        finally:
            self._task_group = None
            with anyio.CancelScope(shield=True):
                try:
                    if self._owns_broker:
                        await self._broker.aclose()
                finally:
                    self._lifecycle.closed()
                    self._progress.set()

    def __repr__(self) -> str:
        return (
            f"<EventDispatcher {self.hostname!r} broker={mask_url(self._broker.url)!r} "
            f"{self._lifecycle.state.value}>"
        )

    # -- internals ------------------------------------------------------------

    def _utcoffset(self) -> float:
        now = time.monotonic()
        if now - self._offset_checked > 60.0:
            self._offset = utcoffset()
            self._offset_checked = now
        return self._offset

    def _stamp(self) -> dict[str, Any]:
        """The stamped fields every event starts from (``clock`` is set per event).

        Rebuilt when the zone offset is re-read (every minute) or ``hostname`` /
        ``pid`` were reassigned.
        """
        template = self._template
        if (
            time.monotonic() - self._offset_checked > 60.0
            or template["hostname"] is not self.hostname
            or template["pid"] is not self.pid
        ):
            template = self._template = {
                "hostname": self.hostname,
                "utcoffset": self._utcoffset(),
                "pid": self.pid,
                "clock": 0,
            }
        return template

    async def _accept(self, group: str, type_: str, body: str | dict[str, Any]) -> None:
        if (
            len(self._buffer) + len(self._inflight) >= self._buffer_size
            and not await self._make_room()
        ):
            return
        self._accepted += 1
        if group in self.batch_groups:
            # Batched events go out on <group>.multi: no routing key of their own.
            self._buffer.append((group, "", body, self._accepted))
        else:
            self._buffer.append((None, routing_key_of(type_), body, self._accepted))
        if self._publisher_waiting:
            self._wakeup.set()

    def _drop_oldest(self) -> bool:
        if not self._buffer:
            return False  # everything left is in flight: cannot drop it
        self._buffer.popleft()
        self._dropped += 1
        if self._dropped == 1 or self._dropped % 1000 == 0:
            logger.warning(
                "event buffer full (%d): dropped the oldest event (%d dropped so far)",
                self._buffer_size,
                self._dropped,
            )
        return True

    async def _make_room(self) -> bool:
        """Make room for one event; ``False`` means the new event is dropped."""
        policy = self._overflow
        if policy is Overflow.ERROR:
            raise BufferFullError(f"event buffer full ({self._buffer_size} events)")
        if policy is Overflow.DROP_NEWEST:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                logger.warning(
                    "event buffer full: dropped the newest event (%d dropped)", self._dropped
                )
            return False
        if policy is Overflow.BLOCK and self._connected:
            with anyio.move_on_after(self._block_timeout):
                while len(self._buffer) + len(self._inflight) >= self._buffer_size:
                    await self._progress_wait()
                    self._lifecycle.check_open()
                    if not self._is_connected():
                        break  # the broker went away: stop waiting, drop the oldest
                else:
                    return True
        while len(self._buffer) + len(self._inflight) >= self._buffer_size:
            if not self._drop_oldest():
                self._dropped += 1
                return False
        return True

    def _is_connected(self) -> bool:
        """Whether the last publish succeeded (read afresh after an ``await``)."""
        return self._connected

    async def _progress_wait(self) -> None:
        if self._progress.is_set():
            self._progress = anyio.Event()
        await self._progress.wait()

    def _settled_through(self) -> int:
        # Events leave in order (a drop may leave a gap behind the in-flight
        # ones): everything before the oldest pending event is sent or dropped.
        if self._inflight:
            return self._inflight[0][3] - 1
        if self._buffer:
            return self._buffer[0][3] - 1
        return self._accepted

    async def _wait_settled(self, target: int) -> None:
        while self._settled_through() < target:
            if self._lifecycle.is_closed:
                raise ClosedError("the dispatcher closed before the flush completed")
            await self._progress_wait()

    def _build_messages(self, items: list[_Item]) -> tuple[list[OutgoingMessage], int]:
        messages: list[OutgoingMessage] = []
        batches = 0
        headers = self._headers
        max_batch = self._max_batch
        i, n = 0, len(items)
        while i < n:
            group, routing_key, body, _ = items[i]
            if group is None:
                encoded = body.encode() if type(body) is str else dumps_plain(body)
                messages.append(
                    OutgoingMessage(routing_key=routing_key, body=encoded, headers=headers)
                )
                i += 1
                continue
            j = i + 1
            while j < n and j - i < max_batch and items[j][0] == group:
                j += 1
            messages.append(
                OutgoingMessage(
                    routing_key=f"{group}.multi",
                    body=_encode_batch([item[2] for item in items[i:j]]),
                    headers=headers,
                )
            )
            batches += 1
            i = j
        return messages, batches

    async def _publisher(self) -> None:
        backoff = Backoff()
        take = self._max_batch * 4
        buffer = self._buffer
        while True:
            if not buffer:
                self._wakeup = anyio.Event()
                self._publisher_waiting = True
                try:
                    await self._wakeup.wait()
                finally:
                    self._publisher_waiting = False
                continue
            count = min(take, len(buffer))
            items = [buffer.popleft() for _ in range(count)]
            self._inflight = items
            messages, batches = self._build_messages(items)
            try:
                await self._broker.publish(messages)
            except AiocelevError as exc:
                self._publish_errors += 1
                # Put the events back in front, in order; trim if the buffer overflowed meanwhile.
                buffer.extendleft(reversed(items))
                self._inflight = []
                while len(buffer) > self._buffer_size:
                    self._drop_oldest()
                delay = backoff.next_delay()
                if self._connected or backoff.attempts % 10 == 1:
                    logger.warning(
                        "publishing to %s failed (%s); %d events buffered, retrying in %.2fs",
                        self._broker.url,
                        exc,
                        len(buffer),
                        delay,
                    )
                self._connected = False
                self._progress.set()
                await anyio.sleep(delay)
                continue
            if not self._connected:
                logger.info("publishing to %s again", self._broker.url)
                self._connected = True
            backoff.reset()
            self._inflight = []
            self._sent += count
            self._messages += len(messages)
            self._batches += batches
            self._progress.set()
