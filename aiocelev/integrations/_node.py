"""What every framework integration shares: :class:`WorkerNode` and :class:`JobReport`.

A task framework calls its start-up and shutdown hooks from different asyncio
tasks (taskiq, arq), while an :class:`~aiocelev.EventDispatcher` and a
:class:`~aiocelev.WorkerInstrument` must be entered and left by one task.  The
:class:`WorkerNode` therefore owns one background task that holds both for the
life of the worker process: :meth:`WorkerNode.start` creates it and returns once
the node is online, :meth:`WorkerNode.stop` ends it (``worker-offline``) and
waits for it.  Nothing else is left running.

A framework reports a job through before/after hooks rather than a block of
code, so each job is a public :class:`~aiocelev.TaskHandle`
(:meth:`~aiocelev.WorkerInstrument.begin_task`), wrapped in a :class:`JobReport`
that never raises: :meth:`~JobReport.begin`, then one of
:meth:`~JobReport.succeeded`, :meth:`~JobReport.failed`, :meth:`~JobReport.retried`,
:meth:`~JobReport.revoked`.  It shows in ``inspect active`` and answers
``revoke --terminate`` through a framework-specific *cancel* callable.  The
integrations use only aiocelev's public API.

Reporting never fails a job: every send is guarded, and the dispatcher drops
the oldest buffered event (counted) rather than make a job wait for the broker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import anyio
import anyio.abc

from .. import (
    ConfigurationError,
    ControlHandler,
    DispatcherStatistics,
    EventDispatcher,
    Overflow,
    TaskHandle,
    WorkerInstrument,
    worker_events,
)
from ..brokers import Broker

__all__ = ["JobReport", "WorkerNode", "node_name"]

logger = logging.getLogger("aiocelev.integrations")

#: The overflow policy of an integration's dispatcher: a job never waits for the broker.
DEFAULT_OVERFLOW = Overflow.DROP_OLDEST


def node_name(template: str | None, prefix: str) -> str:
    """The node name for this process: *template* with ``{pid}`` and ``{host}`` replaced.

    Without a template: ``<prefix>-<pid>@<host>``, unique per worker process (a
    framework that forks several worker processes gets one node per process).
    """
    host = socket.gethostname()
    pid = str(os.getpid())
    if template is None:
        return f"{prefix}-{pid}@{host}"
    return template.replace("{pid}", pid).replace("{host}", host)


def _terminate_process() -> None:
    """Remote ``shutdown``: stop this worker process as SIGTERM does (a warm shutdown)."""
    os.kill(os.getpid(), signal.SIGTERM)


class WorkerNode:
    """The monitoring presence of one worker process: dispatcher, heartbeats, remote control.

    :param broker: the event broker (a URL such as ``redis://localhost:6379/0`` or
        ``amqp://guest:guest@localhost:5672//``, or a :class:`~aiocelev.brokers.Broker`).
    :param hostname: the node name; ``{pid}`` and ``{host}`` are replaced (default
        ``<framework>-<pid>@<host>``).
    :param framework: the framework's name: the default node name prefix and ``sw_ident``.
    :param sw_ver: the version shown as ``sw_ver``.
    :param freq: seconds between heartbeats.
    :param task_names: task names for ``inspect registered`` (a callable is
        called at start, once the framework knows its tasks).
    :param control: answer remote control (``ping``, ``stats``, ``active``,
        ``registered``, ``revoke``...).
    :param control_handlers: extra or replaced commands, as for
        :func:`~aiocelev.worker_events`.
    :param remote_shutdown: what a remote ``shutdown`` does (default: send this
        process SIGTERM, the framework's warm shutdown); ``None`` to ignore it.
    :param groups: event groups to send (``None``: all, like a worker started with ``-E``).
    :param buffer_size: events kept while the broker is away.
    :param overflow: the dispatcher's overflow policy (default ``drop_oldest``: a
        job never waits for the event broker; drops are counted in :meth:`statistics`).
    :param shield_timeout: the longest the final sends and the closing flush may take.
    :param start_timeout: the longest :meth:`start` waits for the node to be online
        (it keeps trying in the background afterwards).
    :param broker_options: options for the broker adapter when *broker* is a URL.
    :param instrument: ``False`` for a client process: only the dispatcher (for
        ``task-sent``), no worker events and no remote control.
    """

    def __init__(
        self,
        broker: Broker | str,
        *,
        framework: str,
        hostname: str | None = None,
        sw_ver: str | None = None,
        freq: float = 2.0,
        task_names: Iterable[str] | Callable[[], Iterable[str]] = (),
        control: bool = True,
        control_handlers: Mapping[str, ControlHandler | None] | None = None,
        remote_shutdown: Callable[[], None] | None = _terminate_process,
        groups: Collection[str] | None = None,
        buffer_size: int = 10_000,
        overflow: Overflow | str = DEFAULT_OVERFLOW,
        shield_timeout: float = 5.0,
        start_timeout: float = 10.0,
        broker_options: Mapping[str, Any] | None = None,
        instrument: bool = True,
    ) -> None:
        if not freq > 0:
            raise ConfigurationError("freq must be a positive number of seconds")
        if not shield_timeout > 0 or not start_timeout > 0:
            raise ConfigurationError("shield_timeout and start_timeout must be positive")
        self._broker = broker
        self._framework = framework
        self._hostname = hostname
        self._sw_ver = sw_ver
        self._freq = float(freq)
        self._task_names = task_names
        self._control = control
        self._handlers: dict[str, ControlHandler | None] = {
            "shutdown": self._remote_shutdown if remote_shutdown is not None else None
        }
        self._handlers.update(control_handlers or {})
        self._on_shutdown = remote_shutdown
        self._groups = groups
        self._buffer_size = buffer_size
        self._overflow = Overflow(overflow)
        self._blocking = self._overflow is Overflow.BLOCK
        self._shield_timeout = shield_timeout
        self._start_timeout = start_timeout
        self._broker_options = broker_options
        self._instrument = instrument
        self._runner: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._dispatcher: EventDispatcher | None = None
        self._worker: WorkerInstrument | None = None
        self._name: str | None = None
        self.errors = 0
        """Reporting errors swallowed so that the job went on (each is logged)."""

    # -- lifecycle ------------------------------------------------------------

    @property
    def hostname(self) -> str | None:
        """The node name, once started."""
        return self._name

    @property
    def worker(self) -> WorkerInstrument | None:
        """The open :class:`~aiocelev.WorkerInstrument`, or ``None`` when the node is not online."""
        return self._worker

    @property
    def dispatcher(self) -> EventDispatcher | None:
        """The open :class:`~aiocelev.EventDispatcher`, or ``None``."""
        return self._dispatcher

    def statistics(self) -> DispatcherStatistics | None:
        """The dispatcher's counters (``dropped``, ``buffered``...), or ``None`` when not open."""
        dispatcher = self._dispatcher
        return dispatcher.statistics() if dispatcher is not None else None

    async def start(self) -> None:
        """Go online (``worker-online``); return once the node is up or ``start_timeout`` passed.

        A broker that cannot be reached does not fail the start: events are
        buffered and the node keeps connecting in the background.
        """
        if self._runner is not None:
            return
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._name = node_name(self._hostname, self._framework)
        self._runner = asyncio.get_running_loop().create_task(
            self._serve(self._ready, self._stopping), name=f"aiocelev node {self._name}"
        )
        ready = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait(
                {ready, self._runner},
                timeout=self._start_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            ready.cancel()
        if self._worker is None and not self._runner.done():
            logger.warning(
                "%s: not online after %ss; jobs run unreported until it is",
                self._name,
                self._start_timeout,
            )

    async def stop(self) -> None:
        """Go offline (``worker-offline``, then a flush) and wait until the node is closed."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        assert self._stopping is not None
        self._stopping.set()
        try:
            await asyncio.shield(runner)
        except asyncio.CancelledError:
            if not runner.done():
                raise
        except Exception:
            pass  # logged by the runner

    async def _serve(self, ready: asyncio.Event, stopping: asyncio.Event) -> None:
        assert self._name is not None
        names = self._task_names() if callable(self._task_names) else self._task_names
        try:
            async with EventDispatcher(
                self._broker,
                hostname=self._name,
                groups=self._groups,
                buffer_size=self._buffer_size,
                overflow=self._overflow,
                close_timeout=self._shield_timeout,
                broker_options=self._broker_options,
            ) as dispatcher:
                self._dispatcher = dispatcher
                if not self._instrument:
                    ready.set()
                    await stopping.wait()
                    return
                async with (
                    worker_events(
                        dispatcher,
                        freq=self._freq,
                        sw_ident=self._framework,
                        sw_ver=self._sw_ver,
                        control=self._control,
                        control_handlers=self._handlers,
                        shield_timeout=self._shield_timeout,
                        task_names=list(names),
                    ) as worker,
                    anyio.create_task_group() as task_group,
                ):
                    self._task_group = task_group
                    self._worker = worker
                    ready.set()
                    try:
                        await stopping.wait()
                    finally:
                        # Jobs still open are reported revoked by the worker as it leaves.
                        self._worker = None
                        self._task_group = None
                        task_group.cancel_scope.cancel()
        except Exception:
            logger.exception("%s: the monitoring node failed; jobs continue unreported", self._name)
            raise
        finally:
            self._dispatcher = None
            self._worker = None
            ready.set()

    async def _remote_shutdown(self, worker: WorkerInstrument, **_: Any) -> Any:
        logger.warning("%s: got shutdown from remote", worker.hostname)
        if self._on_shutdown is not None:
            self._on_shutdown()
        return None

    # -- helpers for the integrations -------------------------------------------

    def spawn(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> bool:
        """Run ``function(*args)`` in the node's task group (cancelled when the node stops).

        :returns: whether the node is open (otherwise nothing is started).
        """
        task_group = self._task_group
        if task_group is None:
            return False
        task_group.start_soon(self._guarded, function, *args)
        return True

    async def _guarded(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        try:
            await function(*args)
        except Exception:
            self.errors += 1
            logger.exception("%s: background reporting step failed", self._name)

    def job(
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
        cancel: Callable[[], bool | None] | None = None,
    ) -> JobReport | None:
        """A :class:`JobReport` for one execution, or ``None`` when the node is not online.

        :param cancel: called by ``revoke --terminate``; cancels the running job the
            framework's way and returns whether it could.
        """
        worker = self._worker
        if worker is None:
            return None
        handle = worker.begin_task(
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
            cancel=cancel,
        )
        return JobReport(self, handle)

    async def send(self, type_: str, /, **fields: Any) -> None:
        """Send one event; never raises (a failure is logged and counted in :attr:`errors`)."""
        dispatcher = self._dispatcher
        if dispatcher is None:
            return
        try:
            if self._blocking:
                with anyio.CancelScope(shield=True), anyio.move_on_after(self._shield_timeout):
                    await dispatcher.send(type_, **fields)
            else:
                await dispatcher.send(type_, **fields)
        except Exception as exc:
            self.count_error(type_, exc)

    @property
    def shield_timeout(self) -> float:
        """The longest a final send or the closing flush may take (seconds)."""
        return self._shield_timeout

    def count_error(self, what: str, exc: BaseException) -> None:
        """Count and log (the first, then every 1000th) a reporting error that was swallowed."""
        self.errors += 1
        if self.errors == 1 or self.errors % 1000 == 0:
            logger.warning("%s: %s not sent (%d so far): %r", self._name, what, self.errors, exc)

    def is_revoked(self, uuid: str) -> bool:
        """Whether *uuid* was revoked by remote control (``False`` when not online)."""
        worker = self._worker
        return worker is not None and worker.is_revoked(uuid)


class JobReport:
    """One job execution, reported from a framework's hooks without ever failing the job.

    Create it with :meth:`WorkerNode.job`.  It drives a public
    :class:`~aiocelev.TaskHandle` (:attr:`handle`): :meth:`begin` sends
    ``task-received`` and ``task-started`` and lists the job in ``inspect
    active``; the first of :meth:`succeeded`, :meth:`failed`, :meth:`retried` or
    :meth:`revoked` ends it and later calls do nothing.  None of them raises: a
    reporting error is logged and counted in :attr:`WorkerNode.errors`.
    """

    def __init__(self, node: WorkerNode, handle: TaskHandle) -> None:
        self._node = node
        self.handle = handle
        """The :class:`~aiocelev.TaskHandle` of the job."""
        self.retrying = False
        """Set by an integration that learnt the job will run again (a retry)."""
        self.exception: BaseException | None = None
        """The exception the job raised, kept by an integration until it reports the outcome."""

    def __repr__(self) -> str:
        return f"<JobReport {self.handle!r}>"

    @property
    def uuid(self) -> str:
        """The job's task id."""
        return self.handle.uuid

    @property
    def root_id(self) -> str:
        """The id of the first task of the job's workflow (the job's own id by default)."""
        return self.handle.root_id

    @property
    def state(self) -> str:
        """The handle's state (``STARTED``, ``SUCCESS``...)."""
        return self.handle.state

    @property
    def terminated(self) -> bool:
        """Whether remote control (``revoke --terminate``) cancelled the job."""
        return self.handle.terminated

    async def begin(self) -> bool:
        """Report the job received and started; ``False`` if that could not be sent."""
        node, handle = self._node, self.handle
        try:
            with anyio.move_on_after(node.shield_timeout):  # bounds a blocking overflow policy
                await handle.started()
        except Exception as exc:
            node.count_error("task-started", exc)
        except BaseException:
            handle.abandon()
            raise
        if handle.state == "STARTED":
            return True
        handle.abandon()
        return False

    async def _outcome(self, type_: str, report: Coroutine[Any, Any, None]) -> None:
        try:
            await report
        except Exception as exc:
            self._node.count_error(type_, exc)

    async def succeeded(self, result: Any = None) -> None:
        """Report success with *result* (shown as its ``saferepr``)."""
        if self.handle.state == "STARTED":
            await self._outcome("task-succeeded", self.handle.succeeded(result))

    async def failed(self, exc: BaseException, *, traceback: str | None = None) -> None:
        """Report failure with *exc* (its ``repr`` and traceback, or *traceback* if given)."""
        if self.handle.state == "STARTED":
            await self._outcome("task-failed", self.handle.failed(exc, traceback=traceback))

    async def retried(self, exc: BaseException, *, traceback: str | None = None) -> None:
        """Report that the job failed with *exc* and will run again."""
        if self.handle.state == "STARTED":
            await self._outcome("task-retried", self.handle.retried(exc, traceback=traceback))

    async def revoked(self, *, terminated: bool = True) -> None:
        """Report the job cancelled (``task-revoked``; the signal number if remote control did it)."""
        if not self.handle.done:
            await self._outcome("task-revoked", self.handle.revoked(terminated=terminated))

    def abandon(self) -> None:
        """End a job whose framework never reported an outcome (its task died): revoked."""
        self.handle.abandon()
