"""Worker instrumentation: make any asyncio worker visible to Flower and ``celery events``.

:func:`worker_events` wraps an :class:`~aiocelev.EventDispatcher` and speaks for
one worker node, as a Celery worker's ``Heart`` and request machinery do::

    async with EventDispatcher(url, hostname="asyncw@host") as dispatcher:
        async with worker_events(dispatcher) as worker:
            async with worker.task(task_id, "app.add", args=(2, 2)) as task:
                task.set_result(await add(2, 2))

* ``worker-online`` on enter, ``worker-heartbeat`` every *freq* seconds and
  ``worker-offline`` on exit (also when leaving through an exception or a
  cancellation), with Celery's fields and field order;
* per task: ``task-received`` + ``task-started`` on enter, then
  ``task-succeeded``, ``task-failed``, ``task-retried`` or ``task-revoked``;
* remote control: the node answers ``ping``, ``enable_events``,
  ``disable_events`` and ``heartbeat`` broadcasts (Flower enables task events
  every few seconds; ``celery inspect ping`` finds the node) and the read-only
  inspection commands Flower's worker page uses (``stats``, ``active``,
  ``registered``, and empty ``reserved``/``scheduled``/``revoked``/
  ``active_queues``/``conf``) when the broker adapter can consume the node's
  pidbox (see :class:`ControlTransport`).  Commands that would change or stop
  the worker (``shutdown``, ``revoke``, ``pool_restart``...) are not answered.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from fnmatch import fnmatchcase
from types import MappingProxyType, TracebackType
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.abc

from ._backoff import Backoff
from ._clock import valid_clock
from ._dispatcher import EventDispatcher
from ._exceptions import AiocelevError, BrokerError, ClosedError, ConfigurationError
from ._saferepr import saferepr
from ._version import __version__

__all__ = [
    "ControlHandler",
    "ControlRequest",
    "ControlSubscription",
    "ControlTransport",
    "TaskRetry",
    "TaskScope",
    "WorkerInstrument",
    "control_transport_for",
    "load_average",
    "worker_events",
]

logger = logging.getLogger("aiocelev.worker")

#: Celery's ``argsrepr_maxsize`` / ``kwargsrepr_maxsize`` / ``resultrepr_maxsize``.
REPR_MAXSIZE = 1024

#: How long a send made while leaving (offline, failure, revocation) may take.
DEFAULT_SHIELD_TIMEOUT = 5.0


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, each rounded *up* to 2 decimals.

    ``[0.0, 0.0, 0.0]`` where the platform has no load average (Windows).
    """
    try:
        loads = os.getloadavg()
    except (AttributeError, OSError):
        return [0.0, 0.0, 0.0]
    return [math.ceil(value * 100) / 100 for value in loads]


def _iso(value: str | datetime | date | None) -> str | None:
    """An ``eta``/``expires`` value as Celery sends it: ISO-8601 text or ``None``."""
    if value is None or isinstance(value, str):
        return value
    return value.isoformat()


def _exception_repr(exc: BaseException) -> str:
    try:
        return repr(exc)
    except Exception:
        return f"<{type(exc).__name__} (unrepresentable)>"


def _format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


# -- remote control ---------------------------------------------------------


@dataclass(frozen=True)
class ControlRequest:
    """One remote-control request taken from a node's pidbox.

    Build it from a decoded request body and its message headers with
    :meth:`from_message`; transports may keep what they need to reply
    (e.g. a channel) in :attr:`context`.
    """

    method: str
    """The command, e.g. ``"ping"``."""
    arguments: Mapping[str, Any] = field(default_factory=dict)
    """Its keyword arguments."""
    destination: tuple[str, ...] | None = None
    """Node names it is for; ``None``: every node (unless *pattern* says otherwise)."""
    pattern: str | None = None
    """With *matcher*: a pattern node names must match."""
    matcher: str | None = None
    """``"glob"`` (default) or ``"pcre"``."""
    ticket: str | None = None
    """Ties the reply to the request; set when a reply is wanted."""
    reply_to: Mapping[str, str] | None = None
    """``{"exchange": ..., "routing_key": ...}`` when a reply is wanted."""
    clock: int | None = None
    """The sender's Lamport clock (header ``clock``)."""
    expires: float | None = None
    """Header ``expires`` (epoch seconds; ``0``/``None``: never)."""
    context: Any = field(default=None, compare=False, repr=False)
    """Transport-private data."""

    @classmethod
    def from_message(
        cls, body: Any, headers: Mapping[str, Any] | None = None, *, context: Any = None
    ) -> ControlRequest:
        """Parse a decoded pidbox request body (kombu ``Mailbox`` format).

        :raises ValueError: the body is not a request.
        """
        if type(body) is not dict or not isinstance(body.get("method"), str):
            raise ValueError("a remote-control request is a JSON object with a 'method'")
        arguments = body.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise ValueError("'arguments' must be a JSON object")
        destination = body.get("destination")
        if destination is not None:
            if not isinstance(destination, (list, tuple)):
                raise ValueError("'destination' must be a list of node names")
            destination = tuple(str(name) for name in destination)
        reply_to = body.get("reply_to")
        if reply_to is not None and not (
            isinstance(reply_to, dict) and isinstance(reply_to.get("routing_key"), str)
        ):
            raise ValueError("'reply_to' must be an object with a 'routing_key'")
        headers = headers or {}
        clock = headers.get("clock")
        expires = headers.get("expires")
        pattern = body.get("pattern")
        matcher = body.get("matcher")
        ticket = body.get("ticket")
        return cls(
            method=body["method"],
            arguments=MappingProxyType(dict(arguments)),
            destination=destination,
            pattern=pattern if isinstance(pattern, str) else None,
            matcher=matcher if isinstance(matcher, str) else None,
            ticket=ticket if isinstance(ticket, str) else None,
            reply_to=MappingProxyType(dict(reply_to)) if reply_to is not None else None,
            clock=clock if valid_clock(clock) else None,
            expires=float(expires) if isinstance(expires, (int, float)) and expires else None,
            context=context,
        )

    @property
    def wants_reply(self) -> bool:
        """Whether the sender waits for replies."""
        return self.reply_to is not None

    def addressed_to(self, nodename: str) -> bool:
        """Whether node *nodename* should handle this request (kombu's rules).

        A non-empty ``destination`` lists the nodes; otherwise ``pattern`` and
        ``matcher`` (``glob`` or ``pcre``, matched from the start) select them;
        otherwise every node does.
        """
        if self.destination:
            return nodename in self.destination
        if self.pattern and self.matcher:
            if self.matcher == "glob":
                return fnmatchcase(nodename, self.pattern)
            if self.matcher == "pcre":
                import re

                try:
                    return re.match(self.pattern, nodename) is not None
                except re.error:
                    return False
            return False
        return True


@runtime_checkable
class ControlSubscription(Protocol):
    """The requests arriving in one node's pidbox, live from creation until :meth:`aclose`."""

    def __aiter__(self) -> AsyncIterator[ControlRequest]: ...

    async def __anext__(self) -> ControlRequest: ...

    async def aclose(self) -> None:
        """Stop consuming and release the pidbox queue."""
        ...


@runtime_checkable
class ControlTransport(Protocol):
    """What a broker adapter offers so a node can answer remote control.

    Celery's ``app.control`` (kombu ``Mailbox``) broadcasts a request to every
    node's ``<nodename>.<namespace>.pidbox`` queue; a node replies
    ``{nodename: payload}`` on the reply exchange named in the request's
    ``reply_to``, with headers ``ticket`` (the request's) and ``clock``.
    """

    async def consume_control(self, nodename: str) -> ControlSubscription:
        """Start consuming *nodename*'s pidbox; live when this returns.

        :raises BrokerConnectionError: the broker cannot be reached now.
        """
        ...

    async def reply(self, request: ControlRequest, nodename: str, payload: Any) -> None:
        """Send ``{nodename: payload}`` to where *request* wants replies.

        :raises BrokerConnectionError: the broker cannot be reached now.
        """
        ...


def control_transport_for(broker: object) -> ControlTransport | None:
    """The remote-control transport for a broker adapter, or ``None`` if it has none.

    An adapter that implements :class:`ControlTransport` itself is returned as
    is; ``memory://`` and ``amqp://`` adapters get the transport aiocelev ships.
    """
    if isinstance(broker, ControlTransport):
        return broker
    from .brokers.memory import MemoryBroker

    if isinstance(broker, MemoryBroker):
        from .brokers._memory_control import MemoryControl

        return MemoryControl(broker)
    if type(broker).__module__ == "aiocelev.brokers.amqp":
        from .brokers._amqp_control import AmqpControl

        return AmqpControl(broker)  # type: ignore[arg-type]
    return None


#: A control command handler: ``await handler(worker, **arguments)`` returns the reply payload.
ControlHandler = Callable[..., Awaitable[Any]]


async def _ping(worker: WorkerInstrument, **_: Any) -> Any:
    return {"ok": "pong"}


async def _enable_events(worker: WorkerInstrument, **_: Any) -> Any:
    groups = worker.dispatcher.groups
    if groups is not None and "task" not in groups:
        groups.add("task")
        logger.info("%s: task events enabled by remote control", worker.hostname)
        return {"ok": "task events enabled"}
    return {"ok": "task events already enabled"}


async def _disable_events(worker: WorkerInstrument, **_: Any) -> Any:
    dispatcher = worker.dispatcher
    if dispatcher.groups is None:
        # Unrestricted: keep every group but "task" that this node sends itself.
        dispatcher.groups = {"worker"}
    elif "task" in dispatcher.groups:
        dispatcher.groups.discard("task")
    else:
        return {"ok": "task events already disabled"}
    logger.info("%s: task events disabled by remote control", worker.hostname)
    return {"ok": "task events disabled"}


async def _heartbeat(worker: WorkerInstrument, **_: Any) -> Any:
    await worker.heartbeat()
    return None


def _rusage() -> dict[str, Any] | str:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return "N/A"
    usage = resource.getrusage(resource.RUSAGE_SELF)
    names = (
        "utime", "stime", "maxrss", "ixrss", "idrss", "isrss", "minflt", "majflt",
        "nswap", "inblock", "oublock", "msgsnd", "msgrcv", "nsignals", "nvcsw", "nivcsw",
    )  # fmt: skip
    return {name: getattr(usage, f"ru_{name}") for name in names}


async def _stats(worker: WorkerInstrument, **_: Any) -> Any:
    # The shape of a Celery worker's ``stats`` reply, with what an asyncio node knows.
    return {
        "total": dict(worker._totals),
        "pid": worker.dispatcher.pid,
        "clock": str(worker.dispatcher.clock.value),
        "uptime": round(time.monotonic() - worker._started_at),
        "pool": {"implementation": "asyncio", "running": worker.active},
        "broker": {"url": worker.dispatcher.broker.url},
        "prefetch_count": None,
        "rusage": _rusage(),
        "sw_ident": worker.sw_ident,
        "sw_ver": worker.sw_ver,
    }


async def _active(worker: WorkerInstrument, **_: Any) -> Any:
    return [scope._info() for scope in worker._running.values()]


async def _registered(worker: WorkerInstrument, **_: Any) -> Any:
    return sorted(worker._totals)


async def _empty_list(worker: WorkerInstrument, **_: Any) -> Any:
    return []


async def _empty_dict(worker: WorkerInstrument, **_: Any) -> Any:
    return {}


_DEFAULT_HANDLERS: dict[str, ControlHandler] = {
    "ping": _ping,
    "enable_events": _enable_events,
    "disable_events": _disable_events,
    "heartbeat": _heartbeat,
    # Read-only inspection (``celery inspect ...``, Flower's worker page).
    "stats": _stats,
    "active": _active,
    "registered": _registered,
    "reserved": _empty_list,
    "scheduled": _empty_list,
    "revoked": _empty_list,
    "active_queues": _empty_list,
    "conf": _empty_dict,
}


# -- tasks --------------------------------------------------------------------


class TaskRetry(Exception):
    """Raised (``raise task.retry(exc)``) to report that a task will be retried.

    The :class:`TaskScope` that created it sends ``task-retried`` and swallows it.
    """

    def __init__(self, scope: TaskScope, exc: BaseException | None) -> None:
        super().__init__(f"task {scope.uuid} will be retried" + (f": {exc!r}" if exc else ""))
        self.scope = scope
        self.exc = exc


class TaskScope:
    """One task execution, reported as a Celery worker reports it.

    Create it with :meth:`WorkerInstrument.task` and use it as
    ``async with``: entering sends ``task-received`` and ``task-started``;
    leaving sends exactly one of

    * ``task-succeeded`` (``result`` = :func:`saferepr` of what :meth:`set_result`
      was given, ``runtime`` in seconds) when the block completes;
    * ``task-retried`` when the block raises :meth:`retry`'s exception (which
      the scope then swallows);
    * ``task-revoked`` (``terminated=True``) when the block is cancelled (the
      cancellation propagates);
    * ``task-failed`` (``exception``, ``traceback``) when any other exception
      escapes (it propagates).
    """

    def __init__(
        self,
        worker: WorkerInstrument,
        uuid: str,
        name: str,
        *,
        args: Any,
        kwargs: Any,
        argsrepr: str | None,
        kwargsrepr: str | None,
        retries: int,
        root_id: str | None,
        parent_id: str | None,
        eta: str | datetime | None,
        expires: str | datetime | None,
    ) -> None:
        self._worker = worker
        self.uuid = uuid
        """The task id."""
        self.name = name
        """The task name."""
        self._received = {
            "uuid": uuid,
            "name": name,
            "args": argsrepr if argsrepr is not None else saferepr(args, REPR_MAXSIZE),
            "kwargs": kwargsrepr if kwargsrepr is not None else saferepr(kwargs, REPR_MAXSIZE),
            "root_id": root_id or uuid,
            "parent_id": parent_id,
            "retries": retries,
            "eta": _iso(eta),
            "expires": _iso(expires),
        }
        self._result: Any = None
        self._started: float | None = None
        self._time_start: float | None = None
        self._entered = False
        self.state = "PENDING"
        """``PENDING``, then ``STARTED``, then ``SUCCESS``, ``FAILURE``, ``RETRY`` or ``REVOKED``."""
        self.runtime: float | None = None
        """Seconds between entering and leaving (monotonic clock), once left."""

    def __repr__(self) -> str:
        return f"<TaskScope {self.name!r} {self.uuid!r} {self.state}>"

    def _info(self) -> dict[str, Any]:
        """What ``celery inspect active`` shows for a running task."""
        worker = self._worker
        return {
            "id": self.uuid,
            "name": self.name,
            "args": self._received["args"],
            "kwargs": self._received["kwargs"],
            "type": self.name,
            "hostname": worker.hostname,
            "time_start": self._time_start,
            "acknowledged": True,
            "delivery_info": {},
            "worker_pid": worker.dispatcher.pid,
        }

    @property
    def result(self) -> Any:
        """The value given to :meth:`set_result` (``None`` by default)."""
        return self._result

    def set_result(self, value: Any) -> None:
        """Record the task's return value for ``task-succeeded``."""
        self._result = value

    def retry(self, exc: BaseException | None = None) -> TaskRetry:
        """The exception to raise to report a retry: ``raise task.retry(exc)``.

        The scope sends ``task-retried`` with ``exception=repr(exc)`` and the
        traceback of *exc* (or of the retry itself), and does not let it
        propagate; requeueing the work is up to the caller.
        """
        return TaskRetry(self, exc)

    async def send_event(self, type: str, /, **fields: Any) -> None:  # noqa: A002
        """Send a custom task event (e.g. ``task-progress``) carrying this task's ``uuid``."""
        await self._worker.dispatcher.send(type, uuid=self.uuid, **fields)

    async def __aenter__(self) -> TaskScope:
        if self._entered:
            raise ClosedError(f"{self!r} can be entered only once")
        self._entered = True
        worker = self._worker
        worker._check_open()
        dispatcher = worker.dispatcher
        await dispatcher.send("task-received", **self._received)
        worker._processed += 1
        await dispatcher.send("task-started", uuid=self.uuid)
        worker._active += 1
        worker._running[id(self)] = self
        worker._totals[self.name] = worker._totals.get(self.name, 0) + 1
        self.state = "STARTED"
        self._started = time.monotonic()
        self._time_start = time.time()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        worker = self._worker
        worker._active -= 1
        worker._running.pop(id(self), None)
        assert self._started is not None
        self.runtime = time.monotonic() - self._started
        if exc is None:
            self.state = "SUCCESS"
            await worker.dispatcher.send(
                "task-succeeded",
                uuid=self.uuid,
                result=saferepr(self._result, REPR_MAXSIZE),
                runtime=self.runtime,
            )
            return None
        if isinstance(exc, TaskRetry) and exc.scope is self:
            self.state = "RETRY"
            cause = exc.exc
            shown = cause if cause is not None and cause.__traceback__ is not None else exc
            await worker._send_shielded(
                "task-retried",
                uuid=self.uuid,
                exception=_exception_repr(cause if cause is not None else exc),
                traceback=_format_traceback(shown),
            )
            return True
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            self.state = "REVOKED"
            await worker._send_shielded(
                "task-revoked", uuid=self.uuid, terminated=True, signum=None, expired=False
            )
            return None
        self.state = "FAILURE"
        await worker._send_shielded(
            "task-failed",
            uuid=self.uuid,
            exception=_exception_repr(exc),
            traceback=_format_traceback(exc),
        )
        return None


# -- the worker -----------------------------------------------------------------


class WorkerInstrument:
    """The events and remote-control presence of one worker node.

    Create it with :func:`worker_events` and use it as ``async with``.  The node
    name is the dispatcher's ``hostname``.

    :attr:`active` counts the task scopes open right now; :attr:`processed` the
    tasks accepted (``task-received`` sent) since the start, as Celery counts.
    """

    def __init__(
        self,
        dispatcher: EventDispatcher,
        *,
        freq: float = 2.0,
        sw_ident: str = "aiocelev",
        sw_ver: str | None = None,
        sw_sys: str | None = None,
        control: bool | ControlTransport = True,
        control_handlers: Mapping[str, ControlHandler | None] | None = None,
        shield_timeout: float = DEFAULT_SHIELD_TIMEOUT,
    ) -> None:
        if not freq > 0:
            raise ConfigurationError("freq must be a positive number of seconds")
        if not shield_timeout > 0:
            raise ConfigurationError("shield_timeout must be positive")
        self.dispatcher = dispatcher
        """The dispatcher the events go through."""
        self.freq = float(freq)
        """Seconds between heartbeats."""
        self.sw_ident = sw_ident
        self.sw_ver = sw_ver if sw_ver is not None else __version__
        self.sw_sys = sw_sys if sw_sys is not None else platform.system()
        self._control = control
        self._handlers: dict[str, ControlHandler] = dict(_DEFAULT_HANDLERS)
        for method, handler in (control_handlers or {}).items():
            if handler is None:
                self._handlers.pop(method, None)
            else:
                self._handlers[method] = handler
        self._shield_timeout = shield_timeout
        self._active = 0
        self._processed = 0
        self._state = "new"
        self._task_group: anyio.abc.TaskGroup | None = None
        self._transport: ControlTransport | None = None
        self._control_live = anyio.Event()
        self._running: dict[int, TaskScope] = {}
        self._totals: dict[str, int] = {}
        self._started_at = time.monotonic()

    # -- public API ---------------------------------------------------------

    @property
    def hostname(self) -> str:
        """The node name (the dispatcher's ``hostname``)."""
        return self.dispatcher.hostname

    @property
    def active(self) -> int:
        """Tasks running now (open task scopes)."""
        return self._active

    @property
    def processed(self) -> int:
        """Tasks accepted since the start."""
        return self._processed

    @property
    def control_transport(self) -> ControlTransport | None:
        """The remote-control transport in use, if any."""
        return self._transport

    async def wait_control_ready(self) -> None:
        """Return once the node consumes its pidbox (never, if it has no transport)."""
        await self._control_live.wait()

    def task(
        self,
        uuid: str,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        retries: int = 0,
        root_id: str | None = None,
        parent_id: str | None = None,
        eta: str | datetime | None = None,
        expires: str | datetime | None = None,
        argsrepr: str | None = None,
        kwargsrepr: str | None = None,
    ) -> TaskScope:
        """A :class:`TaskScope` for one execution of task *uuid* (use it as ``async with``).

        :param args: positional arguments, shown as ``saferepr(args, 1024)``.
        :param kwargs: keyword arguments, shown as ``saferepr(kwargs, 1024)``.
        :param retries: how many times the task was retried before.
        :param root_id: the id of the workflow's first task (default: *uuid*, as Celery).
        :param parent_id: the id of the task that sent this one.
        :param eta: when the task was due (``datetime`` or ISO-8601 text).
        :param expires: when the task expires (``datetime`` or ISO-8601 text).
        :param argsrepr: text to show instead of *args* (e.g. to hide secrets).
        :param kwargsrepr: text to show instead of *kwargs*.
        """
        return TaskScope(
            self,
            uuid,
            name,
            args=tuple(args) if not isinstance(args, (tuple, list)) else args,
            kwargs=dict(kwargs) if kwargs is not None else {},
            argsrepr=argsrepr,
            kwargsrepr=kwargsrepr,
            retries=retries,
            root_id=root_id,
            parent_id=parent_id,
            eta=eta,
            expires=expires,
        )

    async def revoked(
        self,
        uuid: str,
        *,
        terminated: bool = False,
        expired: bool = False,
        signum: int | str | None = None,
    ) -> None:
        """Report task *uuid* revoked (e.g. dropped before it ran, or expired)."""
        self._check_open()
        await self.dispatcher.send(
            "task-revoked", uuid=uuid, terminated=terminated, signum=signum, expired=expired
        )

    async def rejected(self, uuid: str, *, requeue: bool = False) -> None:
        """Report task *uuid*'s message rejected (and requeued, if *requeue*)."""
        self._check_open()
        await self.dispatcher.send("task-rejected", uuid=uuid, requeue=requeue)

    async def heartbeat(self) -> None:
        """Send a ``worker-heartbeat`` now (the periodic ones continue as scheduled)."""
        self._check_open()
        await self._send_beat("worker-heartbeat")

    # -- context management ---------------------------------------------------

    async def __aenter__(self) -> WorkerInstrument:
        if self._state != "new":
            raise ClosedError("a WorkerInstrument can be entered only once")
        self._state = "opening"
        self._started_at = time.monotonic()
        subscription: ControlSubscription | None = None
        try:
            if self._control is True:
                self._transport = control_transport_for(self.dispatcher.broker)
                if self._transport is None:
                    logger.info(
                        "%s: broker %s offers no remote-control transport; "
                        "the node will not answer broadcasts",
                        self.hostname,
                        self.dispatcher.broker.url,
                    )
            elif self._control is not False:
                self._transport = self._control
            if self._transport is not None:
                try:
                    subscription = await self._transport.consume_control(self.hostname)
                except BrokerError as exc:
                    logger.warning(
                        "%s: cannot consume the pidbox yet (%s); retrying in the background",
                        self.hostname,
                        exc,
                    )
                else:
                    self._control_live.set()
            await self._send_beat("worker-online")
            task_group = anyio.create_task_group()
            await task_group.__aenter__()
        except BaseException:
            self._state = "closed"
            if subscription is not None:
                with anyio.CancelScope(shield=True):
                    await subscription.aclose()
            raise
        self._task_group = task_group
        self._state = "open"
        task_group.start_soon(self._heartbeat_loop, name=f"aiocelev heartbeat {self.hostname}")
        if self._transport is not None:
            task_group.start_soon(
                self._control_loop,
                self._transport,
                subscription,
                name=f"aiocelev pidbox {self.hostname}",
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._state = "closing"
        task_group = self._task_group
        assert task_group is not None
        self._task_group = None
        try:
            # (Not inside a new cancel scope: the task group's scope must be the
            # innermost one when it exits.  It waits for its tasks even when cancelled.)
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._shield_timeout) as scope:
                try:
                    await self._send_beat("worker-offline")
                    await self.dispatcher.flush()
                except AiocelevError as error:
                    logger.warning("%s: worker-offline not sent: %s", self.hostname, error)
            if scope.cancelled_caught:
                logger.warning(
                    "%s: worker-offline not confirmed within %ss",
                    self.hostname,
                    self._shield_timeout,
                )
            self._state = "closed"
        return None

    def __repr__(self) -> str:
        return (
            f"<WorkerInstrument {self.hostname!r} {self._state} active={self._active} "
            f"processed={self._processed}>"
        )

    # -- internals ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state != "open":
            raise ClosedError(f"the worker instrument is {self._state}: use it as 'async with'")

    def _beat_fields(self) -> dict[str, Any]:
        return {
            "freq": self.freq,
            "active": self._active,
            "processed": self._processed,
            "loadavg": load_average(),
            "sw_ident": self.sw_ident,
            "sw_ver": self.sw_ver,
            "sw_sys": self.sw_sys,
        }

    async def _send_beat(self, type_: str) -> None:
        await self.dispatcher.send(type_, **self._beat_fields())

    async def _send_shielded(self, type_: str, **fields: Any) -> None:
        """Send while leaving: immune to cancellation, bounded in time, never raising."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._shield_timeout) as scope:
            try:
                await self.dispatcher.send(type_, **fields)
            except AiocelevError as exc:
                logger.warning("%s: %s not sent: %s", self.hostname, type_, exc)
        if scope.cancelled_caught:
            logger.warning(
                "%s: %s not accepted within %ss", self.hostname, type_, self._shield_timeout
            )

    async def _heartbeat_loop(self) -> None:
        freq = self.freq
        due = anyio.current_time() + freq
        while True:
            await anyio.sleep_until(due)
            now = anyio.current_time()
            due += freq
            if due <= now:  # fell behind (a blocked loop): do not send a burst
                due = now + freq
            try:
                await self._send_beat("worker-heartbeat")
            except ClosedError:
                logger.warning("%s: the dispatcher closed; heartbeats stop", self.hostname)
                return
            except AiocelevError as exc:
                logger.warning("%s: heartbeat not sent: %s", self.hostname, exc)

    async def _control_loop(
        self, transport: ControlTransport, subscription: ControlSubscription | None
    ) -> None:
        backoff = Backoff(initial=0.5, maximum=10.0)
        while True:
            if subscription is None:
                try:
                    subscription = await transport.consume_control(self.hostname)
                except BrokerError as exc:
                    delay = backoff.next_delay()
                    logger.debug(
                        "%s: pidbox unavailable (%s); retry in %.1fs", self.hostname, exc, delay
                    )
                    await anyio.sleep(delay)
                    continue
                except ClosedError:
                    return
                backoff.reset()
                if not self._control_live.is_set():
                    logger.info("%s: answering remote control", self.hostname)
                    self._control_live.set()
            try:
                async for request in subscription:
                    await self._handle_control(transport, request)
                return  # the subscription was closed under us (broker closed)
            except BrokerError as exc:
                logger.warning("%s: pidbox consumer failed (%s); resubscribing", self.hostname, exc)
            except ClosedError:
                return
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(self._shield_timeout):
                    try:
                        await subscription.aclose()
                    except AiocelevError as exc:  # pragma: no cover - defensive
                        logger.debug("ignoring error closing the pidbox consumer: %s", exc)
            subscription = None
            await anyio.sleep(backoff.next_delay())

    async def _handle_control(self, transport: ControlTransport, request: ControlRequest) -> None:
        if not request.addressed_to(self.hostname):
            return
        handler = self._handlers.get(request.method)
        if handler is None:
            # Not a command this node implements: stay silent (the caller's
            # timeout covers us) rather than send an error Flower cannot render.
            logger.debug("%s: ignoring remote-control command %r", self.hostname, request.method)
            return
        try:
            payload = await handler(self, **request.arguments)
        except AiocelevError as exc:
            payload = {"error": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:
            logger.exception("%s: remote-control command %r failed", self.hostname, request.method)
            payload = {"error": repr(exc)}
        if not request.wants_reply:
            return
        try:
            await transport.reply(request, self.hostname, payload)
        except AiocelevError as exc:
            logger.warning("%s: reply to %r not sent: %s", self.hostname, request.method, exc)


def worker_events(
    dispatcher: EventDispatcher,
    *,
    freq: float = 2.0,
    sw_ident: str = "aiocelev",
    sw_ver: str | None = None,
    sw_sys: str | None = None,
    control: bool | ControlTransport = True,
    control_handlers: Mapping[str, ControlHandler | None] | None = None,
    shield_timeout: float = DEFAULT_SHIELD_TIMEOUT,
) -> WorkerInstrument:
    """Report a worker node through *dispatcher*; use the result as ``async with``.

    :param dispatcher: an open :class:`~aiocelev.EventDispatcher`; its
        ``hostname`` is the node name (e.g. ``"asyncw@host"``).
    :param freq: seconds between ``worker-heartbeat`` events (monitors consider
        the node gone after ``2 * freq`` without one).
    :param sw_ident: software name in worker events (Celery sends ``py-celery``).
    :param sw_ver: software version (default: aiocelev's).
    :param sw_sys: operating system (default: :func:`platform.system`).
    :param control: answer remote-control broadcasts (``ping``,
        ``enable_events``, ``disable_events``, ``heartbeat``, and the
        inspection commands ``stats``, ``active``, ``registered``...) when the broker
        adapter offers a :class:`ControlTransport`; ``False`` to stay silent;
        or a transport to use.
    :param control_handlers: extra commands (``{"name": async handler(worker, **arguments)}``,
        whose return value is the reply), or ``None`` values to remove built-in ones.
    :param shield_timeout: the longest a send made while leaving (``worker-offline``
        with its flush, ``task-failed``/``task-revoked`` after an exception or a
        cancellation) may take.
    """
    return WorkerInstrument(
        dispatcher,
        freq=freq,
        sw_ident=sw_ident,
        sw_ver=sw_ver,
        sw_sys=sw_sys,
        control=control,
        control_handlers=control_handlers,
        shield_timeout=shield_timeout,
    )
