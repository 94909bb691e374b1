"""Worker instrumentation: make any asyncio worker visible to Flower and ``celery events``.

:func:`worker_events` wraps an :class:`~aiocelev.EventDispatcher` and speaks for
one worker node, as a Celery worker's ``Heart`` and request machinery do::

    async with EventDispatcher(url, hostname="asyncw@host") as dispatcher:
        async with worker_events(dispatcher) as worker:
            async with worker.task(task_id, "app.add", args=(2, 2)) as task:
                task.set_result(await add(2, 2))

* ``worker-online`` on enter, ``worker-heartbeat`` every *freq* seconds and
  ``worker-offline`` on exit (also when leaving through an exception, a
  cancellation or a remote ``shutdown``), with Celery's fields and field order;
* per task (:class:`~aiocelev.TaskScope`): ``task-received`` + ``task-started`` on
  enter, then ``task-succeeded``, ``task-failed``, ``task-retried`` or ``task-revoked``;
  or the same driven by calls from a framework's hooks (:meth:`WorkerInstrument.begin_task`
  returns a :class:`~aiocelev.TaskHandle`);
* remote control through the broker's :meth:`~aiocelev.brokers.Broker.control`
  transport: ``ping``, ``enable_events``, ``disable_events``, ``heartbeat``,
  ``revoke`` (with ``terminate``: cancels the running task scope), ``shutdown``
  (leaves the ``async with`` block cleanly) and the inspection commands
  ``stats``, ``active``, ``registered``, ``revoked``, ``query_task``, ``clock``
  (plus empty ``reserved``/``scheduled``/``active_queues``/``conf``), see
  :mod:`aiocelev._worker_control`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import platform
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

from ._dispatcher import EventDispatcher
from ._exceptions import (
    AiocelevError,
    BrokerError,
    ClosedError,
    ConfigurationError,
    NotSupportedError,
)
from ._task_scope import CancelCallback, TaskHandle, TaskScope, signal_number
from ._version import __version__
from ._worker_control import DEFAULT_HANDLERS, ControlHandler, serve_control
from .brokers._control import ControlSubscription, ControlTransport

__all__ = ["WorkerInstrument", "load_average", "worker_events"]

logger = logging.getLogger("aiocelev.worker")

#: How long a send made while leaving (offline, failure, revocation) may take.
DEFAULT_SHIELD_TIMEOUT = 5.0

#: Revoked task ids a node remembers (Celery keeps 50,000 for 3 hours).
MAX_REVOKED = 10_000


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, each rounded *up* to 2 decimals.

    ``[0.0, 0.0, 0.0]`` where the platform has no load average (Windows).
    """
    try:
        loads = os.getloadavg()
    except (AttributeError, OSError):
        return [0.0, 0.0, 0.0]
    return [math.ceil(value * 100) / 100 for value in loads]


class WorkerInstrument:
    """The events and remote-control presence of one worker node.

    Create it with :func:`worker_events` and use it as ``async with``.  The node
    name is the dispatcher's ``hostname``.

    :attr:`active` counts the tasks running right now (open task scopes and
    started task handles); :attr:`processed` the
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
        task_names: Iterable[str] = (),
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
        self._handlers: dict[str, ControlHandler] = dict(DEFAULT_HANDLERS)
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
        self._running: dict[int, TaskHandle] = {}
        self._orphans: list[tuple[TaskHandle, bool]] = []
        self._totals: dict[str, int] = {}
        self._task_names = set(task_names)
        self._revoked: OrderedDict[str, None] = OrderedDict()
        self._started_at = time.monotonic()
        self._shutdown_requested = False

    # -- public API ---------------------------------------------------------

    @property
    def hostname(self) -> str:
        """The node name (the dispatcher's ``hostname``)."""
        return self.dispatcher.hostname

    @property
    def active(self) -> int:
        """Tasks running now (open task scopes and started task handles)."""
        return self._active

    @property
    def processed(self) -> int:
        """Tasks accepted since the start."""
        return self._processed

    @property
    def uptime(self) -> float:
        """Seconds since the node went online."""
        return time.monotonic() - self._started_at

    @property
    def totals(self) -> Mapping[str, int]:
        """Tasks accepted since the start, by task name (``stats()["total"]``)."""
        return dict(self._totals)

    @property
    def running_tasks(self) -> tuple[TaskHandle, ...]:
        """The tasks running now, as :class:`~aiocelev.TaskHandle` (``inspect active``).

        A :class:`~aiocelev.TaskScope`'s handle is its :attr:`~aiocelev.TaskScope.handle`.
        """
        return tuple(self._running.values())

    @property
    def registered_tasks(self) -> frozenset[str]:
        """Task names this node declared (*task_names*) or ran (``inspect registered``)."""
        return frozenset(self._task_names.union(self._totals))

    @property
    def revoked_ids(self) -> frozenset[str]:
        """Task ids revoked by remote control (the most recent 10,000)."""
        return frozenset(self._revoked)

    def is_revoked(self, uuid: str) -> bool:
        """Whether task *uuid* was revoked: check before running a task, as Celery does."""
        return uuid in self._revoked

    async def revoke(
        self,
        task_ids: Iterable[str],
        *,
        terminate: bool = False,
        signal: str | int | None = None,
    ) -> list[str]:
        """Remember *task_ids* as revoked; with *terminate*, cancel those running now.

        What ``celery control revoke`` does on a node: a cancelled
        :class:`~aiocelev.TaskScope` reports ``task-revoked`` with
        ``terminated=True`` and the signal number (``SIGTERM`` by default); a
        :class:`~aiocelev.TaskHandle` has its *cancel* callback called
        (:meth:`~aiocelev.TaskHandle.terminate`).

        :returns: the ids of the running tasks that were cancelled.
        """
        ids = list(task_ids)
        for uuid in ids:
            self._revoked[uuid] = None
            self._revoked.move_to_end(uuid)
        while len(self._revoked) > MAX_REVOKED:
            self._revoked.popitem(last=False)
        terminated: list[str] = []
        if terminate:
            signum = signal_number(signal if signal is not None else "SIGTERM")
            wanted = set(ids)
            for handle in self.running_tasks:
                if handle.uuid in wanted and handle.terminate(signum):
                    logger.info(
                        "%s: terminating %s (signal %s)", self.hostname, handle.uuid, signum
                    )
                    terminated.append(handle.uuid)
        await anyio.lowlevel.checkpoint()
        return terminated

    @property
    def shutdown_requested(self) -> bool:
        """Whether :meth:`request_shutdown` was called (e.g. by ``celery control shutdown``)."""
        return self._shutdown_requested

    def request_shutdown(self) -> None:
        """Leave the ``async with`` block: its body is cancelled, ``worker-offline`` is sent.

        The cancellation ends at the block's edge (code after it runs); use it to
        stop on SIGTERM or on a remote ``shutdown``.
        """
        self._shutdown_requested = True
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

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
            self.begin_task(
                uuid,
                name,
                args,
                kwargs,
                retries=retries,
                root_id=root_id,
                parent_id=parent_id,
                eta=eta,
                expires=expires,
                argsrepr=argsrepr,
                kwargsrepr=kwargsrepr,
            )
        )

    def begin_task(
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
        cancel: CancelCallback | None = None,
    ) -> TaskHandle:
        """A :class:`TaskHandle` for one execution of task *uuid*, reported by calls.

        For frameworks that run a job between a before-hook and an after-hook::

            handle = worker.begin_task(job.id, job.name, job.args, cancel=job_task.cancel)
            await handle.started()          # task-received, task-started
            ...                             # the framework runs the job
            await handle.succeeded(result)  # or failed(exc), retried(exc), revoked()

        Nothing is sent until :meth:`TaskHandle.started` (or ``received()``).
        The parameters are those of :meth:`task`, plus:

        :param cancel: called by ``revoke --terminate`` to cancel the running job
            the framework's way (e.g. ``asyncio.Task.cancel``); returns whether it
            could (``None`` counts as yes).  Without it, ``revoke --terminate``
            leaves the task running.
        """
        return TaskHandle(
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
            cancel=cancel,
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
                try:
                    self._transport = self.dispatcher.broker.control()
                except NotSupportedError:
                    logger.info(
                        "%s: broker %s offers no remote control; "
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
                serve_control,
                self,
                self._handlers,
                self._transport,
                subscription,
                self._control_live,
                self._shield_timeout,
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
        swallowed = False
        try:
            # (Not inside a new cancel scope: the task group's scope must be the
            # innermost one when it exits.  It waits for its tasks even when
            # cancelled, and swallows only its own cancellation: a remote
            # ``shutdown`` ends here, a cancellation from outside goes on.)
            task_group.cancel_scope.cancel()
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                swallowed = bool(await task_group.__aexit__(exc_type, exc, tb))
            else:
                # Any other exception propagates as it is (not in a group).
                await task_group.__aexit__(None, None, None)
        finally:
            await self._end_open_handles()
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
        return True if swallowed else None

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

    # -- hooks for TaskHandle ---------------------------------------------------

    def _task_received(self, handle: TaskHandle) -> None:
        self._processed += 1
        self._totals[handle.name] = self._totals.get(handle.name, 0) + 1

    def _task_started(self, handle: TaskHandle) -> None:
        self._active += 1
        self._running[id(handle)] = handle

    def _task_done(self, handle: TaskHandle) -> None:
        if self._running.pop(id(handle), None) is not None:
            self._active -= 1

    def _report_abandoned(self, handle: TaskHandle, *, terminated: bool) -> None:
        """Send ``task-revoked`` for an abandoned handle, from the node's task group."""
        fields = {
            "uuid": handle.uuid,
            "terminated": terminated,
            "signum": handle.signum if handle.terminated else None,
            "expired": False,
        }
        if self._state == "open" and self._task_group is not None:
            self._task_group.start_soon(
                functools.partial(self._send_shielded, "task-revoked", **fields),
                name=f"aiocelev abandoned {handle.uuid}",
            )
        elif self._state == "closing":
            self._orphans.append((handle, terminated))
        else:
            logger.info("%s: task %s abandoned after the node closed", self.hostname, handle.uuid)

    async def _end_open_handles(self) -> None:
        """Leaving: handles still open (not a scope's) or abandoned meanwhile: ``task-revoked``."""
        for handle in list(self._running.values()):
            if not handle._scoped:
                handle.abandon()  # appends to the orphans: the node is closing
        while self._orphans:
            handle, terminated = self._orphans.pop(0)
            await self._send_shielded(
                "task-revoked",
                uuid=handle.uuid,
                terminated=terminated,
                signum=handle.signum if handle.terminated else None,
                expired=False,
            )


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
    task_names: Iterable[str] = (),
) -> WorkerInstrument:
    """Report a worker node through *dispatcher*; use the result as ``async with``.

    :param dispatcher: an open :class:`~aiocelev.EventDispatcher`; its
        ``hostname`` is the node name (e.g. ``"asyncw@host"``).
    :param freq: seconds between ``worker-heartbeat`` events (monitors consider
        the node gone after ``2 * freq`` without one).
    :param sw_ident: software name in worker events (Celery sends ``py-celery``).
    :param sw_ver: software version (default: aiocelev's).
    :param sw_sys: operating system (default: :func:`platform.system`).
    :param control: answer remote-control broadcasts (``ping``, ``revoke``,
        ``shutdown``, ``enable_events``, ``disable_events``, ``heartbeat``, and
        the inspection commands ``stats``, ``active``, ``registered``,
        ``revoked``, ``query_task``...) through the broker's
        :meth:`~aiocelev.brokers.Broker.control` transport; ``False`` to stay
        silent; or a :class:`~aiocelev.brokers.ControlTransport` to use.
    :param control_handlers: extra commands (``{"name": async handler(worker, **arguments)}``,
        whose return value is the reply), or ``None`` values to remove built-in ones.
    :param shield_timeout: the longest a send made while leaving (``worker-offline``
        with its flush, ``task-failed``/``task-revoked`` after an exception or a
        cancellation) may take.
    :param task_names: task names the node runs, listed by ``inspect registered``
        (names of tasks it ran are listed too).
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
        task_names=task_names,
    )
