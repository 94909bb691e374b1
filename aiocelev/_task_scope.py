"""One task execution, reported with Celery's task events.

:class:`TaskHandle` is the one implementation: a task reported by calls
(``started()``, then one outcome), for frameworks that run a job between a
before-hook and an after-hook.  :class:`TaskScope` is the same driven by an
``async with`` block.
"""

from __future__ import annotations

import logging
import signal as _signal
import time
import traceback
from collections.abc import Callable
from datetime import date, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from ._exceptions import ClosedError, TaskStateError
from ._saferepr import saferepr

if TYPE_CHECKING:
    from ._worker import WorkerInstrument

__all__ = [
    "REPR_MAXSIZE",
    "CancelCallback",
    "TaskHandle",
    "TaskRetry",
    "TaskScope",
    "signal_number",
]

logger = logging.getLogger("aiocelev.worker")

#: What ``revoke --terminate`` calls to cancel a running task: it returns whether it
#: could (``None`` counts as yes).
CancelCallback = Callable[[], "bool | None"]

#: The states a task ends in.
FINAL_STATES = frozenset({"SUCCESS", "FAILURE", "RETRY", "REVOKED", "REJECTED"})

#: Celery's ``argsrepr_maxsize`` / ``kwargsrepr_maxsize`` / ``resultrepr_maxsize``.
REPR_MAXSIZE = 1024


def iso(value: str | datetime | date | None) -> str | None:
    """An ``eta``/``expires`` value as Celery sends it: ISO-8601 text or ``None``."""
    if value is None or isinstance(value, str):
        return value
    return value.isoformat()


def exception_repr(exc: BaseException) -> str:
    """``repr(exc)``, or a placeholder when its ``__repr__`` fails."""
    try:
        return repr(exc)
    except Exception:
        return f"<{type(exc).__name__} (unrepresentable)>"


def format_traceback(exc: BaseException) -> str:
    """The formatted traceback of *exc*, as ``task-failed`` carries it."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def signal_number(name: str | int | None) -> int | None:
    """A signal given as Celery does (``"TERM"``, ``"SIGKILL"``, ``9``) as its number."""
    if name is None:
        return None
    if isinstance(name, int):
        return name
    text = str(name).strip().upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return int(_signal.Signals[text])
    except KeyError:
        return None


class TaskHandle:
    """One task execution, reported by calls: for frameworks with before/after hooks.

    Create it with :meth:`WorkerInstrument.begin_task`.  ``await started()``
    sends ``task-received`` and ``task-started`` (``await received()`` first
    sends only ``task-received``, for a job taken but not yet running) and lists
    the task in ``inspect active``; then exactly one outcome ends it:

    * :meth:`succeeded` (``task-succeeded``), :meth:`failed` (``task-failed``) or
      :meth:`retried` (``task-retried``), once started;
    * :meth:`revoked` (``task-revoked``) or :meth:`rejected` (``task-rejected``),
      at any point (a job dropped before it ran, too);
    * :meth:`abandon`, which needs no ``await``: for a job whose framework will
      never report an outcome (its asyncio task died).

    ``revoke --terminate`` calls the *cancel* callback given to
    :meth:`~WorkerInstrument.begin_task` (see :meth:`terminate`); the framework
    then reports the outcome, usually :meth:`revoked`, which carries the signal.

    Outcomes are sent shielded from cancellation and bounded by the worker's
    ``shield_timeout``; they never raise because of the broker.  Driving the
    handle out of order (an outcome twice, ``succeeded()`` before ``started()``)
    raises :class:`~aiocelev.TaskStateError`.  After :meth:`abandon` (by you, or
    by the worker leaving its ``async with`` block while the task was open), later
    outcomes are ignored.
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
        cancel: CancelCallback | None,
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
            "eta": iso(eta),
            "expires": iso(expires),
        }
        self._retries = retries
        self._cancel = cancel
        self._scoped = False  # driven by a TaskScope: left alone when the worker leaves
        self._state = "PENDING"
        self._started: float | None = None
        self._time_start: float | None = None
        self.abandoned = False
        """Whether :meth:`abandon` ended the task (later outcomes are ignored)."""
        self.terminated = False
        """Whether ``revoke --terminate`` (:meth:`terminate`) asked to cancel the task."""
        self.signum: int | None = None
        """The signal number :meth:`terminate` was given (reported by :meth:`revoked`)."""
        self.runtime: float | None = None
        """Seconds from ``started()`` to the outcome (monotonic clock), once ended."""
        self.result: Any = None
        """The value given to :meth:`succeeded`."""
        self.exception: BaseException | None = None
        """The exception given to :meth:`failed` or :meth:`retried`."""

    def __repr__(self) -> str:
        return f"<TaskHandle {self.name!r} {self.uuid!r} {self._state}>"

    @property
    def state(self) -> str:
        """``PENDING``, ``RECEIVED``, ``STARTED``, then ``SUCCESS``, ``FAILURE``, ``RETRY``,
        ``REVOKED`` or ``REJECTED``."""
        return self._state

    @property
    def done(self) -> bool:
        """Whether the task has ended (an outcome was reported, or it was abandoned)."""
        return self._state in FINAL_STATES

    @property
    def root_id(self) -> str:
        """The id of the workflow's first task (the task's own id by default)."""
        return str(self._received["root_id"])

    @property
    def parent_id(self) -> str | None:
        """The id of the task that sent this one, if any."""
        parent = self._received["parent_id"]
        return None if parent is None else str(parent)

    @property
    def retries(self) -> int:
        """How many times the task was retried before this execution."""
        return self._retries

    def info(self) -> dict[str, Any]:
        """What ``celery inspect active`` shows for this task."""
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

    # -- start ------------------------------------------------------------------

    async def received(self) -> None:
        """Send ``task-received``: the worker took the job (counted in ``processed``).

        Optional: :meth:`started` sends it first when it was not sent.

        :raises ClosedError: the worker instrument is not open.
        :raises TaskStateError: ``task-received`` was already sent.
        """
        if self._state != "PENDING":
            raise TaskStateError(f"{self!r}: task-received was already sent")
        worker = self._worker
        worker._check_open()
        await worker.dispatcher.send("task-received", **self._received)
        self._state = "RECEIVED"
        worker._task_received(self)

    async def started(self) -> None:
        """Send ``task-started`` (and ``task-received`` before it, if not sent yet).

        The task is then running: counted in ``active``, listed by ``inspect
        active`` and cancellable by ``revoke --terminate``.  The broker's errors
        (e.g. :class:`~aiocelev.BufferFullError` under the ``fail`` overflow
        policy) propagate, as when entering a :class:`TaskScope`.

        :raises ClosedError: the worker instrument is not open.
        :raises TaskStateError: the task was already started, or has ended.
        """
        if self._state == "PENDING":
            await self.received()
        if self._state != "RECEIVED":
            raise TaskStateError(f"{self!r}: started() once, and before an outcome")
        worker = self._worker
        worker._check_open()
        await worker.dispatcher.send("task-started", uuid=self.uuid)
        worker._task_started(self)
        self._state = "STARTED"
        self._started = time.monotonic()
        self._time_start = time.time()

    # -- remote control -----------------------------------------------------------

    def terminate(self, signum: int | str | None = _signal.SIGTERM) -> bool:
        """Cancel the running task through its *cancel* callback (``revoke --terminate``).

        The callback runs once (a second request only updates :attr:`signum`);
        :attr:`terminated` and :attr:`signum` tell the code that reports the
        outcome what happened.

        :returns: whether the task was running and the callback accepted to cancel it.
        """
        if self._state != "STARTED" or self._cancel is None:
            return False
        number = signal_number(signum)
        if self.terminated:
            self.signum = number
            return True
        try:
            accepted = self._cancel()
        except Exception:
            logger.exception("%s: cannot cancel task %s", self._worker.hostname, self.uuid)
            return False
        if accepted is False:
            return False
        self.terminated = True
        self.signum = number
        return True

    async def send_event(self, type: str, /, **fields: Any) -> None:  # noqa: A002
        """Send a custom task event (e.g. ``task-progress``) carrying this task's ``uuid``."""
        await self._worker.dispatcher.send(type, uuid=self.uuid, **fields)

    # -- outcomes -------------------------------------------------------------------

    def _end(self, state: str, *, needs_start: bool) -> bool:
        """Move to *state*; ``False`` when the task was abandoned (the outcome is ignored)."""
        if self._state in FINAL_STATES:
            if self.abandoned:
                return False
            raise TaskStateError(f"{self!r}: the outcome was already reported")
        if needs_start and self._state != "STARTED":
            raise TaskStateError(f"{self!r}: call started() before reporting {state}")
        self._state = state
        self._worker._task_done(self)
        if self._started is not None:
            self.runtime = time.monotonic() - self._started
        return True

    async def succeeded(self, result: Any = None, *, runtime: float | None = None) -> None:
        """Send ``task-succeeded`` with ``saferepr(result)`` and the runtime.

        :param runtime: seconds to report instead of the time since ``started()``.
        :raises TaskStateError: not started, or already ended.
        """
        if not self._end("SUCCESS", needs_start=True):
            return
        if runtime is not None:
            self.runtime = runtime
        self.result = result
        await self._worker._send_shielded(
            "task-succeeded",
            uuid=self.uuid,
            result=saferepr(result, REPR_MAXSIZE),
            runtime=self.runtime,
        )

    async def failed(self, exc: BaseException, *, traceback: str | None = None) -> None:
        """Send ``task-failed`` with ``repr(exc)`` and its traceback (or *traceback*).

        :raises TaskStateError: not started, or already ended.
        """
        if not self._end("FAILURE", needs_start=True):
            return
        self.exception = exc
        await self._worker._send_shielded(
            "task-failed",
            uuid=self.uuid,
            exception=exception_repr(exc),
            traceback=traceback if traceback is not None else format_traceback(exc),
        )

    async def retried(
        self, exc: BaseException | None = None, *, traceback: str | None = None
    ) -> None:
        """Send ``task-retried``: this execution failed with *exc*, the task will run again.

        Running it again is up to the framework (a new :class:`TaskHandle` with
        ``retries`` one higher).

        :raises TaskStateError: not started, or already ended.
        """
        if not self._end("RETRY", needs_start=True):
            return
        self.exception = exc
        shown = exc if exc is not None else RuntimeError("retried")
        await self._worker._send_shielded(
            "task-retried",
            uuid=self.uuid,
            exception=exception_repr(shown),
            traceback=traceback if traceback is not None else format_traceback(shown),
        )

    async def revoked(
        self,
        *,
        terminated: bool | None = None,
        signum: int | str | None = None,
        expired: bool = False,
    ) -> None:
        """Send ``task-revoked``: the task was cancelled, or dropped before it ran.

        :param terminated: whether it was stopped while running (default: whether
            it had started).
        :param signum: the signal (default: the one given to :meth:`terminate`,
            when remote control cancelled the task).
        :param expired: it was dropped because it expired.
        :raises TaskStateError: already ended.
        """
        was_running = self._state == "STARTED"
        if not self._end("REVOKED", needs_start=False):
            return
        if terminated is None:
            terminated = was_running
        number = signal_number(signum) if signum is not None else None
        if number is None and self.terminated:
            number = self.signum
        await self._worker._send_shielded(
            "task-revoked", uuid=self.uuid, terminated=terminated, signum=number, expired=expired
        )

    async def rejected(self, *, requeue: bool = False) -> None:
        """Send ``task-rejected``: the job's message was rejected (and requeued, if *requeue*).

        :raises TaskStateError: already ended.
        """
        if not self._end("REJECTED", needs_start=False):
            return
        await self._worker._send_shielded("task-rejected", uuid=self.uuid, requeue=requeue)

    def abandon(self) -> bool:
        """End a task whose outcome will never be reported; no ``await`` needed.

        For a framework's done-callback or a ``finally`` that cannot await.  An
        open task is taken off ``active`` and reported ``task-revoked``
        (``terminated=True`` if it had started) in the worker's background (one
        not even received sends nothing); an ended one is left as it is.  Later
        outcomes are ignored.

        :returns: whether the task was open (and is now ended).
        """
        if self._state in FINAL_STATES:
            return False
        was_sent, was_running = self._state != "PENDING", self._state == "STARTED"
        self._end("REVOKED", needs_start=False)
        self.abandoned = True
        if was_sent:
            self._worker._report_abandoned(self, terminated=was_running)
        return True


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
    * ``task-revoked`` when the block is cancelled: by remote control
      (``revoke --terminate``, or :meth:`terminate`), then ``terminated=True`` with
      the signal number and the scope swallows its own cancellation; or from
      outside, then the cancellation propagates;
    * ``task-failed`` (``exception``, ``traceback``) when any other exception
      escapes (it propagates).

    Every event sent while leaving is shielded from cancellation and bounded in
    time, so cancelling the enclosing task never loses the final event.  The
    scope drives a :class:`TaskHandle` (:attr:`handle`); ``revoke --terminate``
    cancels the block through it.
    """

    def __init__(self, handle: TaskHandle) -> None:
        self._handle = handle
        handle._scoped = True
        handle._cancel = self._cancel_block
        self.uuid = handle.uuid
        """The task id."""
        self.name = handle.name
        """The task name."""
        self._result: Any = None
        self._entered = False
        self._cancel_scope: anyio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<TaskScope {self.name!r} {self.uuid!r} {self.state}>"

    @property
    def handle(self) -> TaskHandle:
        """The :class:`TaskHandle` this scope drives (what ``worker.running_tasks`` lists)."""
        return self._handle

    @property
    def state(self) -> str:
        """``PENDING``, then ``STARTED``, then ``SUCCESS``, ``FAILURE``, ``RETRY`` or ``REVOKED``."""
        return self._handle.state

    @property
    def runtime(self) -> float | None:
        """Seconds between entering and leaving (monotonic clock), once left."""
        return self._handle.runtime

    def info(self) -> dict[str, Any]:
        """What ``celery inspect active`` shows for this task."""
        return self._handle.info()

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

    def terminate(self, signum: int | str | None = _signal.SIGTERM) -> bool:
        """Cancel the running block, reported as ``task-revoked`` with ``terminated=True``.

        What ``celery control revoke --terminate`` does to a Celery task.  The
        block sees a cancellation at its next checkpoint; the scope swallows it.

        :returns: whether the task was running (and is now being cancelled).
        """
        return self._handle.terminate(signum)

    async def send_event(self, type: str, /, **fields: Any) -> None:  # noqa: A002
        """Send a custom task event (e.g. ``task-progress``) carrying this task's ``uuid``."""
        await self._handle.send_event(type, **fields)

    def _cancel_block(self) -> bool:
        scope = self._cancel_scope
        if scope is None:
            return False
        scope.cancel()
        return True

    async def __aenter__(self) -> TaskScope:
        if self._entered:
            raise ClosedError(f"{self!r} can be entered only once")
        self._entered = True
        await self._handle.started()
        self._cancel_scope = anyio.CancelScope()
        self._cancel_scope.__enter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        handle = self._handle
        scope, self._cancel_scope = self._cancel_scope, None
        assert scope is not None
        swallowed = scope.__exit__(exc_type, exc, tb)
        if exc is None:
            await handle.succeeded(self._result)
            return None
        if isinstance(exc, TaskRetry) and exc.scope is self:
            cause = exc.exc
            shown = cause if cause is not None and cause.__traceback__ is not None else exc
            await handle.retried(
                cause if cause is not None else exc, traceback=format_traceback(shown)
            )
            return True
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            await handle.revoked(terminated=True)
            return True if swallowed else None
        await handle.failed(exc)
        return None
