"""EventDispatcher: send Celery events, batched, buffered while the broker is away."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Collection, Mapping
from types import TracebackType
from typing import Any, NamedTuple

import anyio
import anyio.abc

from ._backoff import Backoff
from ._clock import LamportClock, utcoffset, valid_clock
from ._codec import _INT_MAX, _INT_MIN, dumps, dumps_plain, plain_values
from ._events import Event, routing_key_of
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

#: Most event types whose group and routing key a dispatcher remembers.
_ROUTE_CACHE = 1024
#: How long (seconds of wall-clock time) the stamped ``utcoffset`` is reused before re-reading it.
_STAMP_PERIOD = 60.0

_OPEN = LifecycleState.OPEN
_type = type  # send() has a parameter named type


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


class _Encoded:
    """An event encoded when it was sent (its values are not all plain): kombu's JSON bytes.

    msgspec refuses to encode it, which is how a batch holding one is told apart
    from a batch of plain dicts without looking at every element.
    """

    __slots__ = ("json",)

    def __init__(self, json: bytes) -> None:
        self.json = json


class _Run:
    """Consecutive accepted events that leave in one message.

    A run of a batch group holds up to ``max_batch`` events (one ``<group>.multi``
    message); any other event is a run of its own.  ``first`` is the sequence
    number (1-based position among accepted events) of ``bodies[0]``: the events
    of a run are consecutive, so the next one is ``first + 1``.  A body is a
    plain dict (encoded at publish time, with the rest of its batch) or an
    :class:`_Encoded`.
    """

    __slots__ = ("bodies", "first", "group", "routing_key")

    def __init__(
        self,
        group: str | None,
        routing_key: str,
        bodies: list[dict[str, Any] | _Encoded],
        first: int,
    ) -> None:
        self.group = group
        self.routing_key = routing_key
        self.bodies = bodies
        self.first = first


def _encode_batch(payloads: list[dict[str, Any] | _Encoded]) -> bytes:
    """The JSON array of plain dicts and already encoded events, in order."""
    try:
        return dumps_plain(payloads)  # every element a plain dict: one call
    except TypeError:  # an element was encoded when sent (msgspec refuses _Encoded)
        parts = [p.json if type(p) is _Encoded else dumps_plain(p) for p in payloads]
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
    at publish time, so do not mutate a list after passing it to ``send``.
    Events of ``batch_groups`` go out as JSON arrays on ``<group>.multi``
    (natural batching: consecutive events of the group that accumulated while
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
        # The template every event's stamped fields are copied from (in Celery's
        # key order); rebuilt when the wall clock leaves [_stamp_from, _stamp_until).
        self._template: dict[str, Any] = {}
        self._stamp_from = self._stamp_until = 0.0
        self._hostname = hostname or anon_nodename()
        self.groups: set[str] | None = set(groups) if groups is not None else None
        self._batch_groups = frozenset(batch_groups)
        self.clock = clock if clock is not None else LamportClock()
        self._pid = os.getpid()
        self._enabled = enabled
        self._max_batch = max_batch
        self._buffer_size = buffer_size
        self._block_timeout = block_timeout
        self._close_timeout = close_timeout
        self._headers = {"hostname": self.hostname}

        # Accepted events not yet handed to the broker: _runs waiting, _inflight
        # being published.  _free is buffer_size minus the events in both.
        self._runs: deque[_Run] = deque()
        self._inflight: list[_Run] = []
        self._free = buffer_size
        # The bodies of the last run while more events of _tail_group may join it.
        self._tail: list[dict[str, Any] | _Encoded] = []
        self._tail_group: str | None = None
        self._tail_room = 0
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
        self._lifecycle = Lifecycle("EventDispatcher")
        self._task_group: anyio.abc.TaskGroup | None = None
        # event type -> (group, routing key), the group interned
        self._routes: dict[str, tuple[str, str]] = {}

    # -- public API ---------------------------------------------------------

    @property
    def broker(self) -> Broker:
        """The broker adapter this dispatcher publishes to."""
        return self._broker

    @property
    def batch_groups(self) -> frozenset[str]:
        """The groups whose events are batched (reassigning it applies to the next event)."""
        return self._batch_groups

    @batch_groups.setter
    def batch_groups(self, value: Collection[str]) -> None:
        self._batch_groups = frozenset(value)
        self._tail_group = None  # the open run was for the old groups

    @property
    def hostname(self) -> str:
        """The node name stamped on every event sent."""
        return self._hostname

    @hostname.setter
    def hostname(self, value: str) -> None:
        self._hostname = value
        self._stamp_until = 0.0  # restamp with the new name

    @property
    def pid(self) -> int:
        """The process id stamped on every event sent."""
        return self._pid

    @pid.setter
    def pid(self, value: int) -> None:
        self._pid = value
        self._stamp_until = 0.0

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
            buffered=self._buffer_size - self._free,
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
        # This runs for every event: one coroutine, and only a full buffer
        # suspends it, to wait for room.
        if self._lifecycle.state is not _OPEN:
            self._lifecycle.check_open()
        route = self._routes.get(type)
        if route is None:
            route = self._route(type)
        group = route[0]
        if not self._enabled or (self.groups is not None and group not in self.groups):
            self._filtered += 1
            return
        now = time.time()  # looked up per call: a test may replace time.time
        if not self._stamp_from <= now < self._stamp_until:
            self._restamp(now)
        timestamp = fields.pop("timestamp") if "timestamp" in fields else None
        clock = self.clock
        clock.value = value = clock.value + 1
        # hostname, utcoffset and pid from the template, in Celery's key order
        data = self._template.copy()
        data["clock"] = value
        data |= fields
        data["timestamp"] = now if timestamp is None else timestamp
        data["type"] = type
        # Plain events are encoded later, a whole batch in one call; anything
        # else is encoded now, so a value that is not serialisable fails here.
        # The stamped fields are plain by construction: check the caller's only
        # (what plain_values checks, inline).
        body: Any = data
        for v in fields.values():
            t = _type(v)
            if t is str or v is None or t is bool:
                continue
            if t is float:
                if 1e-4 <= v < 1e16 or -1e16 < v <= -1e-4 or v == 0.0:
                    continue
            elif t is int:
                if _INT_MIN <= v < _INT_MAX:
                    continue
            elif (t is list or t is tuple) and plain_values((v,)):
                continue
            body = _Encoded(dumps(data).encode("ascii"))
            break
        else:
            if timestamp is not None and not plain_values((timestamp,)):
                body = _Encoded(dumps(data).encode("ascii"))
        # what _accept does, without a second coroutine per event
        if self._free <= 0 and not await self._make_room():
            return
        self._append(group, route[1], body)

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
        route = self._routes.get(type_) or self._route(type_)
        group = route[0]
        if not self._enabled or (self.groups is not None and group not in self.groups):
            self._filtered += 1
            return
        clock = data.get("clock")
        if valid_clock(clock):  # an absurd clock must not drag the local one along
            self.clock.adjust(clock)
        await self._accept(group, route[1], _Encoded(dumps(data).encode("ascii")))

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
            unsent = self._buffer_size - self._free
            if unsent:
                self._dropped += unsent
                logger.warning(
                    "closing with %d events not delivered to %s (close_timeout=%ss)",
                    unsent,
                    self._broker.url,
                    self._close_timeout,
                )
                self._runs.clear()
                self._tail_group = None
                self._inflight = []
                self._free = self._buffer_size
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

    def _route(self, type_: str) -> tuple[str, str]:
        """The group (interned: compared by identity) and routing key of *type_*, remembered."""
        route = (sys.intern(type_.partition("-")[0]), routing_key_of(type_))
        if len(self._routes) < _ROUTE_CACHE:
            self._routes[type_] = route
        return route

    def _restamp(self, now: float) -> None:
        """Rebuild the template of the stamped fields (``clock`` is set per event).

        Done when the wall clock leaves the template's minute (the zone offset
        is re-read: a DST change shows within a minute) or ``hostname`` /
        ``pid`` were reassigned.
        """
        self._template = {
            "hostname": self._hostname,
            "utcoffset": utcoffset(),
            "pid": self._pid,
            "clock": 0,
        }
        self._stamp_from = now
        self._stamp_until = now + _STAMP_PERIOD

    def _new_run(
        self, group: str | None, routing_key: str, body: dict[str, Any] | _Encoded
    ) -> None:
        """Start a run with *body*, the last event accepted; a batch group's run stays open.

        The open run (the tail) takes the next events of its group while it has
        room; any other event, or the publisher taking the run, closes it.
        """
        bodies = [body]
        self._runs.append(_Run(group, routing_key, bodies, self._accepted))
        if group is not None and self._max_batch > 1:
            self._tail = bodies
            self._tail_room = self._max_batch - 1
            self._tail_group = group
        else:
            self._tail_group = None

    async def _accept(self, group: str, routing_key: str, body: dict[str, Any] | _Encoded) -> None:
        """Buffer *body*, an event of *group*, making room first if the buffer is full.

        :meth:`send` does the same without awaiting this coroutine.
        """
        if self._free <= 0 and not await self._make_room():
            return
        self._append(group, routing_key, body)

    def _append(self, group: str, routing_key: str, body: dict[str, Any] | _Encoded) -> None:
        """Buffer *body* in the room just taken, and wake the publisher if it waits."""
        self._free -= 1
        self._accepted += 1
        if group is self._tail_group:  # the open run of a batch group has room
            self._tail.append(body)
            self._tail_room -= 1
            if not self._tail_room:
                self._tail_group = None
        elif group in self._batch_groups:
            self._new_run(group, "", body)
        else:
            self._new_run(None, routing_key, body)
        if self._publisher_waiting:
            self._publisher_waiting = False
            self._wakeup.set()

    def _drop_oldest(self) -> bool:
        runs = self._runs
        if not runs:
            return False  # everything left is in flight: cannot drop it
        run = runs[0]
        del run.bodies[0]
        run.first += 1
        if not run.bodies:
            runs.popleft()
            if not runs:
                self._tail_group = None
        self._free += 1
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
                while self._free <= 0:
                    await self._progress_wait()
                    self._lifecycle.check_open()
                    if not self._is_connected():
                        break  # the broker went away: stop waiting, drop the oldest
                else:
                    return True
        while self._free <= 0:
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
            return self._inflight[0].first - 1
        if self._runs:
            return self._runs[0].first - 1
        return self._accepted

    async def _wait_settled(self, target: int) -> None:
        while self._settled_through() < target:
            if self._lifecycle.is_closed:
                raise ClosedError("the dispatcher closed before the flush completed")
            await self._progress_wait()

    def _build_messages(self, runs: list[_Run]) -> tuple[list[OutgoingMessage], int]:
        messages: list[OutgoingMessage] = []
        batches = 0
        headers = self._headers
        for run in runs:
            if run.group is None:
                (body,) = run.bodies
                encoded = body.json if type(body) is _Encoded else dumps_plain(body)
                messages.append(
                    OutgoingMessage(routing_key=run.routing_key, body=encoded, headers=headers)
                )
                continue
            messages.append(
                OutgoingMessage(
                    routing_key=f"{run.group}.multi",
                    body=_encode_batch(run.bodies),
                    headers=headers,
                )
            )
            batches += 1
        return messages, batches

    async def _publisher(self) -> None:
        backoff = Backoff()
        take = self._max_batch * 4
        runs = self._runs
        while True:
            if not runs:
                self._wakeup = anyio.Event()
                self._publisher_waiting = True
                try:
                    await self._wakeup.wait()
                finally:
                    self._publisher_waiting = False
                continue
            # Whole runs, about `take` events (a run is one message).
            taken: list[_Run] = []
            count = 0
            while runs and count < take:
                run = runs.popleft()
                taken.append(run)
                count += len(run.bodies)
            if not runs:
                self._tail_group = None  # the open run, if any, is taken: later events start anew
            self._inflight = taken
            messages, batches = self._build_messages(taken)
            try:
                await self._broker.publish(messages)
            except AiocelevError as exc:
                self._publish_errors += 1
                # Put the events back in front, in order; trim if the buffer overflowed meanwhile.
                runs.extendleft(reversed(taken))
                self._inflight = []
                while self._free < 0:
                    self._drop_oldest()
                delay = backoff.next_delay()
                if self._connected or backoff.attempts % 10 == 1:
                    logger.warning(
                        "publishing to %s failed (%s); %d events buffered, retrying in %.2fs",
                        self._broker.url,
                        exc,
                        self._buffer_size - self._free,
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
            self._free += count
            self._sent += count
            self._messages += len(messages)
            self._batches += batches
            self._progress.set()
