"""EventReceiver: ``async for event in receiver`` over the event exchange."""

from __future__ import annotations

import inspect
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, NamedTuple, TypeVar, overload

import anyio
import anyio.abc

from ._backoff import Backoff
from ._clock import MAX_CLOCK, LamportClock, utcoffset
from ._codec import (
    DEFAULT_MAX_MESSAGE_SIZE,
    element_error,
    not_an_event,
    parse_message,
    validate_event,
)
from ._events import Event, TaskSent, _registry, event_class
from ._exceptions import (
    AiocelevError,
    BrokerConnectionError,
    BrokerError,
    BufferFullError,
    ConfigurationError,
    DecodeError,
    EndOfStream,
)
from ._lifecycle import Lifecycle, LifecycleState
from ._link import ConnectionCallback, ConnectionStatus, LinkMonitor
from ._message import IncomingMessage
from ._overflow import RECEIVER_POLICIES, Overflow, parse_overflow
from ._url import mask_url
from .brokers import Broker, Subscription
from .brokers._registry import resolve_broker

__all__ = ["EventBatches", "ErrorCallback", "EventReceiver", "Handler", "ReceiverStatistics"]

logger = logging.getLogger("aiocelev.receiver")

#: ``on_error(error, message)``: called for every malformed message (or batch
#: element); its return value is ignored.
ErrorCallback = Callable[[DecodeError, IncomingMessage], object]
#: A :meth:`EventReceiver.capture` handler: called with each event; a plain or
#: a coroutine function (what it returns, or its coroutine returns, is ignored).
Handler = Callable[[Event], object]

_new = object.__new__
#: Stores an event's wire dict (the slot's own setter: cheaper than object.__setattr__).
_set_fields: Callable[[Event, dict[str, Any]], None] = vars(Event)["_fields"].__set__

_LOG_FIRST = 10
_LOG_EVERY = 1000

# Who is reading the subscription (inside its ``__anext__``): one task at a time.
_NOBODY, _PUMP, _CONSUMER = 0, 1, 2


class ReceiverStatistics(NamedTuple):
    """Counters of an :class:`EventReceiver` (cumulative except ``buffered``)."""

    messages: int
    """Messages taken from the broker."""
    events: int
    """Valid events decoded."""
    delivered: int
    """Events handed to the caller."""
    buffered: int
    """Events decoded and waiting for the caller (now)."""
    dropped: int
    """Events dropped by the overflow policy."""
    malformed: Mapping[str, int]
    """Malformed messages (or batch elements) by reason."""
    invalid_clocks: int
    """Events whose ``clock`` was null, not an integer or absurd (replaced by a local one)."""


class _Ack:
    """Marks, in the buffer, the end of a message that wants acknowledging."""

    __slots__ = ("ack",)

    def __init__(self, ack: Callable[[], None]) -> None:
        self.ack = ack


#: An event in the buffer: typed, or its wire dict (see ``EventReceiver._dicts``).
_Buffered = Event | dict[str, Any]
_Item = Event | dict[str, Any] | _Ack

_B = TypeVar("_B", Event, dict[str, Any])


def _wrap(data: dict[str, Any]) -> Event:
    """The typed event of a prepared wire dict (the dict itself, not a copy)."""
    event = _new(_registry.get(data["type"]) or event_class(data["type"]))
    _set_fields(event, data)
    return event


def _unwrap(item: _Buffered) -> dict[str, Any]:
    return item if type(item) is dict else item._fields  # type: ignore[union-attr]


class EventReceiver:
    """Receive monitoring events as typed :class:`~aiocelev.Event` objects.

    ::

        async with EventReceiver("amqp://localhost", routing_keys=["task.#"]) as receiver:
            async for event in receiver:
                print(event.type, event.hostname)

    When ``__aenter__`` returns the subscription is live: nothing published after
    that is missed.  Once the receiver is closed (or the broker ends the
    subscription), ``async for`` ends and :meth:`receive` raises
    :class:`~aiocelev.EndOfStream`.  Batched messages are expanded in order; each event's clock is
    merged into the receiver's Lamport clock as Celery's receiver does
    (``task-sent`` clocks are replaced; a missing, null, non-integer or absurd
    clock is replaced by the local clock, never crashing the stream);
    ``local_received`` is set.  A malformed message is counted by reason, logged,
    passed to ``on_error``, and skipped: every valid event still arrives.

    Decoded events wait in a bounded buffer (``buffer_size``).  When it is full,
    ``overflow`` decides: ``pause`` (default) stops reading from the broker, so
    backpressure reaches it (Redis buffers for the subscriber up to its
    ``client-output-buffer-limit``, then disconnects it; RabbitMQ holds messages
    in the queue, up to its TTL, only when consuming with acknowledgements,
    ``no_ack=False``: in the default no-ack mode the AMQP adapter keeps reading
    into its own memory); ``drop_oldest`` / ``drop_newest`` keep reading and
    drop (counted in ``statistics().dropped``); ``error`` ends the stream with
    :class:`~aiocelev.BufferFullError`.  ``block`` is a dispatcher policy and is
    refused here.

    While the buffer is empty, the task waiting in ``async for`` /
    :meth:`receive` / :meth:`batches` reads the subscription itself (*pull
    mode*: a message reaches it without a hand-off through the receiver's own
    task); the receiver's task reads whenever the caller is away (busy with
    an event), which keeps the read-ahead, ``pause`` and the drop policies as
    described.  Nothing awaits between the adapter handing a message over and
    its events joining the buffer, so cancelling the caller never loses a
    message.  A read right after acknowledgements were requested is left to
    the receiver's task, which sends them.  While the caller reads, the
    adapter's reconnects run in the caller's task, and a cancellation of the
    caller takes effect once the adapter's current read ends (at most
    0.2 seconds on Redis).

    The receiver reads in a task group of its own: enter and exit it
    (``async with``, or ``__aenter__`` then :meth:`aclose`) in the same task.
    It cannot be reopened once closed.

    :param broker: a :class:`~aiocelev.brokers.Broker`, or a URL (then owned and closed).
    :param routing_keys: binding keys (AMQP topic syntax), e.g. ``["task.#"]``.
    :param clock: the Lamport clock to adjust (share one with a dispatcher, as Celery does).
    :param localize: shift timestamps by the sender/receiver zone difference, as
        Celery's receiver does by default.  Off by default: event timestamps are
        epoch seconds and already correct; Celery's shift skews them across zones.
    :param buffer_size: most decoded events waiting for the caller.
    :param overflow: ``pause`` (default), ``drop_oldest``, ``drop_newest`` or
        ``error`` (see :class:`~aiocelev.Overflow`).
    :param on_error: called with ``(DecodeError, IncomingMessage)`` per malformed message.
    :param max_message_size: larger messages are rejected (reason ``too-large``).
    :param connect_timeout: how long ``__aenter__`` keeps retrying (with backoff)
        to connect and subscribe before raising :class:`~aiocelev.BrokerConnectionError`.
    :param broker_options: options for ``open_broker`` when *broker* is a URL.
    :param on_connection: called with a :class:`~aiocelev.ConnectionStatus` each
        time the subscription loses its broker and each time it is back (see
        :attr:`connection`); a plain function, its return value is ignored.
    :raises ConfigurationError: a bad argument, e.g. ``overflow="block"`` (a
        dispatcher policy) or no routing key.
    """

    def __init__(
        self,
        broker: Broker | str,
        *,
        routing_keys: Sequence[str] = ("#",),
        clock: LamportClock | None = None,
        localize: bool = False,
        buffer_size: int = 10_000,
        overflow: Overflow | str = Overflow.PAUSE,
        on_error: ErrorCallback | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        connect_timeout: float = 10.0,
        broker_options: Mapping[str, Any] | None = None,
        on_connection: ConnectionCallback | None = None,
    ) -> None:
        if isinstance(routing_keys, str):
            routing_keys = [routing_keys]
        if not routing_keys:
            raise ConfigurationError("routing_keys must name at least one binding key")
        if buffer_size < 1:
            raise ConfigurationError("buffer_size must be at least 1")
        self._overflow = parse_overflow(overflow, RECEIVER_POLICIES, "EventReceiver")
        self._broker, self._owns_broker = resolve_broker(broker, broker_options)
        self.routing_keys = tuple(routing_keys)
        self.clock = clock if clock is not None else LamportClock()
        self.localize = localize
        self._buffer_size = buffer_size
        self._on_error = on_error
        self._max_message_size = max_message_size
        self._connect_timeout = connect_timeout

        self._buffer: deque[_Item] = deque()
        self._acks_buffered = 0  # _Ack markers in the buffer (not events)
        # Markers of messages whose last event went out in the latest batch:
        # acknowledged when the caller asks for more.
        self._deferred_acks: deque[_Ack] = deque()
        # Whether __anext__ may hand over the first buffered item as it is: no
        # deferred acknowledgement is due and events are buffered typed.
        self._direct = True
        # Wake-ups cost an Event only when the other side is actually waiting.
        self._readable = anyio.Event()
        self._writable = anyio.Event()
        self._reader_waiting = False
        self._pump_waiting = False
        # Pull mode: while the buffer is empty the consumer reads the
        # subscription itself (one hand-off fewer); the pump reads while the
        # consumer is away.  See _fill and _pump.
        self._reader = _NOBODY
        self._pump_parked = False
        self._pump_wake = anyio.Event()
        # Acknowledgements requested since the subscription was last read: the
        # adapter sends them from its next read, which is then left to the pump
        # (never cancelled mid-stream) rather than to a cancellable consumer.
        self._acked = False
        # Events of a message the consumer read that did not fit the buffer under
        # ``pause``: the pump buffers them (waiting for room) before reading more.
        self._carry: tuple[list[_Buffered], Callable[[], None] | None, int] | None = None
        # What _decode makes of an event: its wire dict (True, since a caller
        # asked for ``batches(dicts=True)``) or a typed Event.  Every event in
        # the buffer has the current form (_set_form converts the rest).
        self._dicts = False
        self._messages = 0
        self._events = 0
        # Events handed over = those that entered the buffer, less those still
        # in it and those that left otherwise (dropped as the oldest, or
        # discarded on close): counted per message, not per event handed over.
        self._entered = 0
        self._gone = 0
        self._dropped = 0
        self._invalid_clocks = 0
        self._malformed: Counter[str] = Counter()
        self._pump_error: BaseException | None = None
        self._pump_done = False
        self._subscription: Subscription | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._lifecycle = Lifecycle("EventReceiver")
        self._link = LinkMonitor(mask_url(self._broker.url), connected=False)
        self._unlisten: Callable[[], None] | None = None
        if on_connection is not None:
            self._link.listen(on_connection)

    # -- public API ---------------------------------------------------------

    @property
    def broker(self) -> Broker:
        """The broker adapter this receiver consumes from."""
        return self._broker

    @property
    def connection(self) -> ConnectionStatus:
        """Whether events can arrive now, and the gaps so far.

        ``connected`` turns false as soon as the adapter notices a lost
        connection (events published until it is back may be lost: a *gap*,
        counted in ``gaps``) and true again once it has resubscribed; it is
        also false before the receiver is open and after the adapter gave up.
        Adapters that do not report their connection are taken as connected
        while the subscription lasts.
        """
        return self._link.status

    def add_connection_listener(self, callback: ConnectionCallback) -> Callable[[], None]:
        """Like ``on_connection``, added later; returns a function that removes it."""
        return self._link.listen(callback)

    def statistics(self) -> ReceiverStatistics:
        """A snapshot of the counters."""
        buffered = len(self._buffer) - self._acks_buffered
        return ReceiverStatistics(
            messages=self._messages,
            events=self._events,
            delivered=self._entered - buffered - self._gone,
            buffered=buffered,
            dropped=self._dropped,
            malformed=dict(self._malformed),
            invalid_clocks=self._invalid_clocks,
        )

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        # The common case inline (one coroutine per event, not two): an event is ready.
        buffer = self._buffer
        if buffer and self._direct and type(buffer[0]) is not _Ack:
            if self._pump_waiting:
                self._writable.set()
            return buffer.popleft()  # type: ignore[return-value]
        try:
            return await self.receive()
        except EndOfStream:
            raise StopAsyncIteration from None

    async def receive(self) -> Event:
        """The next event (what ``async for`` yields).

        :raises EndOfStream: the receiver was closed, or the broker ended the subscription.
        :raises BrokerConnectionError: the adapter gave up reconnecting.
        :raises BufferFullError: the buffer overflowed under ``overflow="error"``.
        :raises ClosedError: the receiver was never opened.
        """
        buffer = self._buffer
        if self._deferred_acks:
            self._ack_deferred()
        if self._dicts:
            self._set_form(False)
        while True:
            if buffer:
                item = buffer.popleft()
                if self._pump_waiting:
                    self._writable.set()
                kind = type(item)
                if kind is _Ack:
                    self._acks_buffered -= 1
                    self._acknowledge(item)  # type: ignore[arg-type]
                    continue
                if kind is dict:  # a batches(dicts=True) caller switched the form meanwhile
                    return _wrap(item)  # type: ignore[arg-type]
                return item  # type: ignore[return-value]
            await self._fill()

    @overload
    def batches(
        self, max_size: int | None = None, *, dicts: Literal[False] = False
    ) -> EventBatches[Event]: ...

    @overload
    def batches(
        self, max_size: int | None = None, *, dicts: Literal[True]
    ) -> EventBatches[dict[str, Any]]: ...

    def batches(
        self, max_size: int | None = None, *, dicts: bool = False
    ) -> EventBatches[Event] | EventBatches[dict[str, Any]]:
        """Iterate over the events in lists: every event buffered when the caller asks.

        ::

            async for batch in receiver.batches():
                state.apply_many(batch)

        Each list holds the events that were waiting (at least one, at most
        *max_size*), in order: under load whole messages at a time, a single
        event when they trickle in.  The per-event cost of ``async for`` is
        paid once per list.  A message consumed with acknowledgements is
        acknowledged once its last event was handed over *and* the caller asked
        for the next list (or event), as with ``async for``.  Iteration ends as
        ``async for`` does, and raises what :meth:`receive` raises.

        With ``dicts=True`` the lists hold each event's wire dict instead of
        an :class:`~aiocelev.Event`: the same fields, prepared the same way
        (clock merged, ``local_received`` set, timestamps localized), without
        the typed wrapper.  It is the fast path for consumers that take
        mappings, such as :meth:`ClusterState.apply_many
        <aiocelev.ClusterState.apply_many>`, a store or a JSON writer; the
        dicts belong to the caller::

            async for batch in receiver.batches(dicts=True):
                state.apply_many(batch)

        :param max_size: the longest list (``None``: no limit beyond ``buffer_size``).
        :param dicts: yield wire dicts rather than typed events.
        :raises ConfigurationError: *max_size* is below 1.
        """
        if max_size is not None and max_size < 1:
            raise ConfigurationError("max_size must be at least 1")
        if dicts:
            return EventBatches[dict[str, Any]](self, max_size, True)
        return EventBatches[Event](self, max_size, False)

    @overload
    async def receive_batch(
        self, max_size: int | None = None, *, dicts: Literal[False] = False
    ) -> list[Event]: ...

    @overload
    async def receive_batch(
        self, max_size: int | None = None, *, dicts: Literal[True]
    ) -> list[dict[str, Any]]: ...

    async def receive_batch(
        self, max_size: int | None = None, *, dicts: bool = False
    ) -> list[Event] | list[dict[str, Any]]:
        """The events waiting now, as a list (what :meth:`batches` yields).

        Waits for at least one event.  With ``dicts=True``, each event's wire
        dict (see :meth:`batches`).

        :raises EndOfStream: the receiver was closed, or the broker ended the subscription.
        :raises BrokerConnectionError: the adapter gave up reconnecting.
        :raises BufferFullError: the buffer overflowed under ``overflow="error"``.
        :raises ClosedError: the receiver was never opened.
        """
        buffer = self._buffer
        if self._deferred_acks:
            self._ack_deferred()
        while True:
            if buffer:
                if dicts is not self._dicts:
                    self._set_form(dicts)
                if self._acks_buffered == 0 and (max_size is None or len(buffer) <= max_size):
                    batch: list[Any] = list(buffer)
                    buffer.clear()
                else:
                    batch = self._take_mixed(max_size)
                if self._pump_waiting:
                    self._writable.set()
                if batch:
                    return batch
                continue
            await self._fill()

    def _take_mixed(self, max_size: int | None) -> list[Any]:
        """Take events up to *max_size* from a buffer holding acknowledgement markers.

        Markers before the first event taken belong to messages handed over
        before: they are acknowledged now.  Markers after it wait for the
        caller's next request (``_deferred_acks``).
        """
        buffer = self._buffer
        limit = len(buffer) if max_size is None else max_size
        batch: list[_Buffered] = []
        deferred = self._deferred_acks
        while buffer:
            item = buffer[0]
            if type(item) is _Ack:
                buffer.popleft()
                self._acks_buffered -= 1
                if batch:
                    deferred.append(item)
                    self._direct = False
                else:
                    self._acknowledge(item)
                continue
            if len(batch) >= limit:
                break
            batch.append(buffer.popleft())  # type: ignore[arg-type]
        return batch

    def _set_form(self, dicts: bool) -> None:
        """Decode events as wire dicts (or typed events) from now on; convert those buffered."""
        self._dicts = dicts
        self._direct = not dicts and not self._deferred_acks
        convert: Callable[[Any], _Buffered] = _unwrap if dicts else _wrap
        buffer = self._buffer
        # In place (the pump may hold a reference): rotate once through it.
        # Events not buffered yet (a carry, the pump's message waiting for
        # room) are conformed when they join the buffer (_enqueue, _put).
        for _ in range(len(buffer)):
            item = buffer.popleft()
            buffer.append(item if type(item) is _Ack else convert(item))

    def _conform(self, events: list[_Buffered], start: int) -> None:
        """Give ``events[start:]`` the buffer's form, if a caller switched it since they were decoded."""
        if start < len(events) and (type(events[start]) is dict) is not self._dicts:
            convert: Callable[[Any], _Buffered] = _unwrap if self._dicts else _wrap
            for i in range(start, len(events)):
                events[i] = convert(events[i])

    def _ack_deferred(self) -> None:
        deferred = self._deferred_acks
        while deferred:
            self._acknowledge(deferred.popleft())
        self._direct = not self._dicts

    async def _fill(self) -> None:
        """Wait until the buffer holds something (or the stream ended); raise if it ended.

        While the buffer is empty and nobody reads the subscription, the
        consumer reads it itself (pull mode): a message goes from the adapter
        to the caller without passing through the pump task.  The pump reads
        whenever the consumer is away (see :meth:`_pump`), so read-ahead,
        ``pause`` and the drop policies work as before.
        """
        if self._pump_done:
            if self._pump_error is not None:
                raise self._pump_error
            raise EndOfStream(
                "the receiver is closed"
                if self._lifecycle.state is not LifecycleState.OPEN
                else "the broker ended the subscription"
            )
        if not self._lifecycle.is_open:
            self._lifecycle.check_open()
        try:
            if self._reader == _NOBODY and self._carry is None and not self._acked:
                await self._pull()
                return
            # The pump reads (or has a message to finish buffering): wait for it.
            self._wake_pump()
            self._readable = anyio.Event()
            self._reader_waiting = True
            try:
                await self._readable.wait()
            finally:
                self._reader_waiting = False
        finally:
            # Leaving: the pump reads ahead while the caller is busy.
            self._wake_pump()

    async def _pull(self) -> None:
        """Read one message from the subscription in the caller's task and buffer it.

        Nothing awaits between the adapter handing a message over and its
        events joining the buffer, so a cancelled caller loses nothing that was
        read.  The end of the subscription or a broker error ends the stream
        as it does in the pump.
        """
        subscription = self._subscription
        assert subscription is not None
        self._reader = _CONSUMER
        try:
            message = await subscription.__anext__()
        except StopAsyncIteration:
            self._pump_done = True
            return
        except Exception as exc:
            self._fail(exc)
            return
        finally:
            self._reader = _NOBODY
        if self._pump_done:  # closed meanwhile
            return
        self._messages += 1
        try:
            events = self._decode(message)
        except DecodeError as exc:
            self._report(exc, message)
            events = None
        if events:
            try:
                rest = self._put(events, message.ack, 0)
            except BufferFullError as exc:
                self._fail(exc)
                return
            if rest >= 0:
                self._carry = (events, message.ack, rest)
        elif message.ack is not None:
            self._ack_eventless(message.ack)

    def _fail(self, exc: Exception) -> None:
        """End the stream with *exc* (raised once the buffered events are taken)."""
        if not isinstance(exc, AiocelevError):
            logger.exception("the receiver's pump failed")
        self._pump_error = exc
        self._pump_done = True
        self._link.lost(str(exc))

    def _wake_pump(self) -> None:
        if self._pump_parked:
            self._pump_wake.set()

    async def capture(
        self,
        handlers: Mapping[str, Handler],
        *,
        limit: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Dispatch events to ``handlers[event.type]`` (or ``handlers["*"]``), as Celery's ``capture``.

        Handlers may be plain or coroutine functions; events without a handler
        are skipped.  Returns after *limit* events or *timeout* seconds (``None``:
        no limit), with the number of events handled.
        """
        fallback = handlers.get("*")
        handled = 0
        with anyio.move_on_after(timeout):
            async for event in self:
                handler = handlers.get(event.type, fallback)
                if handler is not None:
                    result = handler(event)
                    if inspect.isawaitable(result):
                        await result
                    handled += 1
                if limit is not None and handled >= limit:
                    break
        return handled

    # -- context management ---------------------------------------------------

    async def __aenter__(self) -> EventReceiver:
        self._lifecycle.opening()
        try:
            self._subscription = await self._subscribe_with_retry()
        except BaseException:
            self._lifecycle.failed()
            if self._owns_broker:
                with anyio.CancelScope(shield=True):
                    await self._broker.aclose()
            raise
        source = getattr(self._subscription, "link", None)
        if isinstance(source, LinkMonitor):
            self._unlisten = source.listen(self._follow_link)
        self._link.restored()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._pump, self._subscription, name="aiocelev receiver pump")
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
        """Stop reading, end the subscription and close (the owned broker too).

        What leaving ``async with`` does.  Call it from the task that entered,
        and not inside a cancel scope (``move_on_after``...) entered since.
        Buffered events are discarded; afterwards ``async for`` ends and
        :meth:`receive` raises :class:`~aiocelev.EndOfStream`.  Closing again,
        or closing a receiver never opened, does nothing more.
        """
        if self._lifecycle.state in (LifecycleState.CLOSING, LifecycleState.CLOSED):
            return
        self._lifecycle.closing()
        try:
            if self._task_group is not None:
                self._task_group.cancel_scope.cancel()
                await self._task_group.__aexit__(None, None, None)
        finally:
            self._task_group = None
            if self._unlisten is not None:
                self._unlisten()
                self._unlisten = None
            with anyio.CancelScope(shield=True):
                try:
                    if self._subscription is not None:
                        await self._subscription.aclose()
                finally:
                    if self._owns_broker:
                        await self._broker.aclose()
                    self._gone += len(self._buffer) - self._acks_buffered
                    self._buffer.clear()
                    self._deferred_acks.clear()
                    self._acks_buffered = 0
                    self._carry = None
                    self._pump_done = True
                    self._lifecycle.closed()
                    self._readable.set()
                    self._writable.set()
                    self._pump_wake.set()

    def __repr__(self) -> str:
        return (
            f"<EventReceiver {list(self.routing_keys)!r} broker={mask_url(self._broker.url)!r} "
            f"{self._lifecycle.state.value}>"
        )

    # -- internals ------------------------------------------------------------

    async def _subscribe_with_retry(self) -> Subscription:
        backoff = Backoff()
        deadline = anyio.current_time() + self._connect_timeout
        while True:
            try:
                await self._broker.connect()
                return await self._broker.subscribe(self.routing_keys)
            except BrokerError as exc:
                delay = backoff.next_delay()
                what = self._cannot_subscribe(exc)
                if anyio.current_time() + delay > deadline:
                    error = BrokerConnectionError(what)
                    error.reason = _broker_reason(exc)
                    raise error from exc
                logger.warning("%s; retrying in %.2fs", what, delay)
                await anyio.sleep(delay)

    def _cannot_subscribe(self, exc: BrokerError) -> str:
        """``cannot subscribe to URL: reason``, the URL (password masked) said once."""
        reason = _broker_reason(exc) or str(exc) or type(exc).__name__
        raw, masked = self._broker.url, mask_url(self._broker.url)
        if raw in reason or masked in reason:
            # No reason without the URL from the adapter: its message names it already.
            return f"cannot subscribe: {reason.replace(raw, masked)}"
        return f"cannot subscribe to {masked}: {reason}"

    def _follow_link(self, status: ConnectionStatus) -> None:
        if status.connected:
            self._link.restored()
        else:
            self._link.lost(status.reason or "connection lost")

    def _acknowledge(self, marker: _Ack) -> None:
        self._acked = True
        try:
            marker.ack()
        except AiocelevError as exc:
            logger.warning("acknowledging a message failed: %s", exc)

    def _report(self, error: DecodeError, message: IncomingMessage) -> None:
        count = self._malformed[error.reason] = self._malformed[error.reason] + 1
        if count <= _LOG_FIRST or count % _LOG_EVERY == 0:
            logger.warning(
                "skipped a malformed message (routing key %r, %d so far with reason %r): %s",
                message.routing_key,
                count,
                error.reason,
                error.detail[:200],
            )
        if self._on_error is not None:
            try:
                self._on_error(error, message)
            except Exception:
                logger.exception("the on_error callback raised")

    async def _pump(self, subscription: Subscription) -> None:
        hold = False
        try:
            while True:
                carry = self._carry
                if carry is not None:
                    self._carry = None
                    await self._enqueue(*carry)
                # Leave the subscription to a consumer reading it, and to one
                # just handed events (it reads next, unless it goes away first:
                # leaving receive() wakes the pump).
                while not self._pump_done and (hold or self._reader != _NOBODY):
                    hold = False
                    self._pump_wake = anyio.Event()
                    self._pump_parked = True
                    try:
                        await self._pump_wake.wait()
                    finally:
                        self._pump_parked = False
                if self._pump_done:
                    return
                if self._carry is not None:
                    continue
                # The pump is the reader until the message's events are all
                # buffered (under ``pause`` that waits for room): order is kept.
                self._reader = _PUMP
                self._acked = False
                try:
                    message = await subscription.__anext__()
                    self._messages += 1
                    try:
                        events = self._decode(message)
                    except DecodeError as exc:
                        self._report(exc, message)
                        events = None
                    if events:
                        await self._enqueue(events, message.ack)
                        hold = self._reader_waiting
                    elif message.ack is not None:
                        self._ack_eventless(message.ack)
                except StopAsyncIteration:
                    return
                finally:
                    self._reader = _NOBODY
        except Exception as exc:
            self._fail(exc)
        finally:
            self._pump_done = True
            self._readable.set()

    def _ack_eventless(self, ack: Callable[[], None]) -> None:
        """Acknowledge a message without events, after every message before it."""
        marker = _Ack(ack)
        if not self._buffer and not self._deferred_acks:
            self._acknowledge(marker)
            return
        # Acknowledgements go out in delivery order (AMQP acks "this and every
        # earlier tag"): behind the events still waiting.
        self._buffer.append(marker)
        self._acks_buffered += 1

    def _decode(self, message: IncomingMessage) -> list[_Buffered]:
        """Decode a message into prepared events, in one pass per event.

        Validation (as :func:`~aiocelev._codec.validate_event`), the clock merge,
        ``localize``, ``local_received`` and the wrap in the event class (unless
        the buffer holds wire dicts) happen in one loop.  Batch elements that
        are not events are reported.

        :raises DecodeError: the message as a whole cannot be decoded.
        """
        obj = parse_message(message, max_size=self._max_message_size)
        if type(obj) is dict:
            items: list[Any] = [obj]
            single = True
        elif type(obj) is list:
            items = obj
            single = False
        else:
            raise not_an_event(obj)
        now = time.time()
        localize = self.localize
        here = utcoffset() if localize else 0.0
        clock = self.clock
        registry_get = _registry.get
        task_sent = TaskSent
        new = _new
        set_fields = _set_fields
        events: list[_Buffered] = []
        append = events.append
        wrap = not self._dicts
        errors: dict[str, DecodeError] | None = None
        cls: type[Event] | None
        ts: Any
        host: Any
        # The clock's value is kept in a local and stored back at the end (and
        # before on_error runs): nothing awaits in between, and on an error
        # the value reached so far is stored (finally).
        value = clock.value
        invalid_clocks = 0
        try:
            for data in items:
                # validate_event's checks, in as few lookups as the common case
                # allows: a built-in type (the registry holds non-empty strings
                # only), a numeric timestamp and a string hostname.  Anything
                # else (a custom type included) is decided by validate_event.
                try:
                    cls = registry_get(data["type"])
                    ts = data["timestamp"]
                    host = data["hostname"]
                except (KeyError, TypeError):  # not a dict, a key missing, unhashable type
                    cls = None
                if (
                    cls is None
                    or (type(ts) is not float and type(ts) is not int)
                    or type(host) is not str
                ):
                    why = validate_event(data)
                    if why is not None:
                        if single:
                            raise DecodeError("not-an-event", why)
                        if errors is None:
                            errors = {}
                        # on_error may read the clock and the statistics
                        clock.value = value
                        self._invalid_clocks += invalid_clocks
                        invalid_clocks = 0
                        self._report(element_error(why, errors), message)
                        continue
                    cls = event_class(data["type"])
                    ts = data["timestamp"]
                if cls is task_sent:
                    # Clients never synchronise their clocks: Celery replaces them.
                    sent = (value or 1) - 1
                    data["clock"] = sent
                    value = (sent if sent > value else value) + 1
                else:
                    raw = data.get("clock")
                    if type(raw) is int and 0 <= raw < MAX_CLOCK:
                        value = (raw if raw > value else value) + 1
                    else:
                        if "clock" in data:
                            invalid_clocks += 1
                        value += 1
                        data["clock"] = value
                if localize:
                    offset = data.get("utcoffset")
                    # A float timestamp from this machine's offset (the common
                    # case) would come out unchanged: skip the arithmetic.
                    if (offset != here or type(ts) is not float) and (
                        type(offset) is int or type(offset) is float
                    ):
                        data["timestamp"] = ts - (offset - here) * 3600
                data["local_received"] = now
                if wrap:
                    event = new(cls)
                    set_fields(event, data)
                    append(event)
                else:
                    append(data)
        finally:
            clock.value = value
            if invalid_clocks:
                self._invalid_clocks += invalid_clocks
        self._events += len(events)
        return events

    def _prepare(self, data: dict[str, Any], now: float, here: float) -> Event:
        """Prepare one valid wire dict as :meth:`_decode` does (clock, ``local_received``, wrap)."""
        clock = self.clock
        if data["type"] == "task-sent":
            value = (clock.value or 1) - 1
            data["clock"] = value
            clock.adjust(value)
        else:
            raw = data.get("clock")
            if type(raw) is int and 0 <= raw < MAX_CLOCK:
                clock.adjust(raw)
            else:
                if "clock" in data:
                    self._invalid_clocks += 1
                data["clock"] = clock.forward()
        if self.localize:
            offset = data.get("utcoffset")
            if type(offset) is int or type(offset) is float:
                data["timestamp"] = data["timestamp"] - (offset - here) * 3600
        data["local_received"] = now
        return _wrap(data)

    async def _enqueue(
        self, events: list[_Buffered], ack: Callable[[], None] | None, start: int = 0
    ) -> None:
        """Buffer *events* from *start* on (then the ack marker), waiting for room under ``pause``."""
        self._conform(events, start)
        buffer = self._buffer
        limit = self._buffer_size
        if start == 0 and len(buffer) + len(events) <= limit:
            buffer.extend(events)
            self._entered += len(events)
            if ack is not None:
                buffer.append(_Ack(ack))
                self._acks_buffered += 1
            if self._reader_waiting:
                self._readable.set()
            return
        start = self._put(events, ack, start)
        while start >= 0:
            if self._reader_waiting:
                self._readable.set()
            while len(buffer) >= limit:
                self._writable = anyio.Event()
                self._pump_waiting = True
                try:
                    await self._writable.wait()
                finally:
                    self._pump_waiting = False
            start = self._put(events, ack, start)

    def _put(self, events: list[_Buffered], ack: Callable[[], None] | None, start: int) -> int:
        """Buffer ``events[start:]`` (then the ack marker) as the overflow policy says.

        Returns ``-1`` once all are buffered or dropped, else the index of the
        first event that must wait for room (``pause``).

        :raises BufferFullError: the buffer is full and ``overflow="error"``.
        """
        self._conform(events, start)
        buffer = self._buffer
        limit = self._buffer_size
        if start == 0 and len(buffer) + len(events) <= limit:
            buffer.extend(events)
            self._entered += len(events)
            start = len(events)
        policy = self._overflow
        for i in range(start, len(events)):
            if len(buffer) >= limit:
                if policy is Overflow.PAUSE:
                    return i
                if policy is Overflow.DROP_OLDEST:
                    self._drop_oldest()
                elif policy is Overflow.DROP_NEWEST:
                    self._count_drop()
                    continue
                else:
                    self._pump_error = BufferFullError(
                        f"receiver buffer full ({limit} events) and overflow='error'"
                    )
                    raise self._pump_error
            buffer.append(events[i])
            self._entered += 1
        if ack is not None:
            buffer.append(_Ack(ack))
            self._acks_buffered += 1
        if self._reader_waiting:
            self._readable.set()
        return -1

    def _drop_oldest(self) -> None:
        buffer = self._buffer
        while buffer:
            item = buffer.popleft()
            if type(item) is _Ack:
                self._acks_buffered -= 1
                self._acknowledge(item)
                continue
            self._gone += 1
            self._count_drop()
            return

    def _count_drop(self) -> None:
        self._dropped += 1
        if self._dropped == 1 or self._dropped % _LOG_EVERY == 0:
            logger.warning(
                "receiver buffer full (%d events): %d events dropped so far",
                self._buffer_size,
                self._dropped,
            )


def _broker_reason(exc: BaseException) -> str | None:
    """The first :attr:`BrokerError.reason` along *exc*'s chain of causes, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BrokerError) and current.reason:
            return current.reason
        current = current.__cause__ or current.__context__
    return None


class EventBatches(Generic[_B]):
    """``async for batch in receiver.batches()``: lists of events (see :meth:`EventReceiver.batches`).

    ``EventBatches[Event]`` yields typed events, ``EventBatches[dict[str, Any]]``
    (``batches(dicts=True)``) wire dicts.
    """

    __slots__ = ("_dicts", "_max_size", "_receiver")

    def __init__(self, receiver: EventReceiver, max_size: int | None, dicts: bool = False) -> None:
        self._receiver = receiver
        self._max_size = max_size
        self._dicts = dicts

    def __aiter__(self) -> EventBatches[_B]:
        return self

    async def __anext__(self) -> list[_B]:
        try:
            return await self._receiver.receive_batch(  # type: ignore[no-any-return,call-overload]
                self._max_size, dicts=self._dicts
            )
        except EndOfStream:
            raise StopAsyncIteration from None
