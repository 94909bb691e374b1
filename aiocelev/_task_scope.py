"""One task execution, reported with Celery's task events: :class:`TaskScope`."""

from __future__ import annotations

import logging
import signal as _signal
import time
import traceback
from datetime import date, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from ._exceptions import ClosedError
from ._saferepr import saferepr

if TYPE_CHECKING:
    from ._worker import WorkerInstrument

__all__ = ["REPR_MAXSIZE", "TaskRetry", "TaskScope", "signal_number"]

logger = logging.getLogger("aiocelev.worker")

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
    time, so cancelling the enclosing task never loses the final event.
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
            "eta": iso(eta),
            "expires": iso(expires),
        }
        self._result: Any = None
        self._started: float | None = None
        self._time_start: float | None = None
        self._entered = False
        self._cancel_scope: anyio.CancelScope | None = None
        self._signum: int | None = None
        self.state = "PENDING"
        """``PENDING``, then ``STARTED``, then ``SUCCESS``, ``FAILURE``, ``RETRY`` or ``REVOKED``."""
        self.runtime: float | None = None
        """Seconds between entering and leaving (monotonic clock), once left."""

    def __repr__(self) -> str:
        return f"<TaskScope {self.name!r} {self.uuid!r} {self.state}>"

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
        scope = self._cancel_scope
        if scope is None or self.state != "STARTED":
            return False
        self._signum = signal_number(signum)
        scope.cancel()
        return True

    async def send_event(self, type: str, /, **fields: Any) -> None:  # noqa: A002
        """Send a custom task event (e.g. ``task-progress``) carrying this task's ``uuid``."""
        await self._worker.dispatcher.send(type, uuid=self.uuid, **fields)

    async def __aenter__(self) -> TaskScope:
        if self._entered:
            raise ClosedError(f"{self!r} can be entered only once")
        self._entered = True
        worker = self._worker
        dispatcher = worker.dispatcher
        worker._check_open()
        await dispatcher.send("task-received", **self._received)
        worker._task_received(self)
        await dispatcher.send("task-started", uuid=self.uuid)
        worker._task_started(self)
        self.state = "STARTED"
        self._started = time.monotonic()
        self._time_start = time.time()
        self._cancel_scope = anyio.CancelScope()
        self._cancel_scope.__enter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        worker = self._worker
        scope, self._cancel_scope = self._cancel_scope, None
        assert scope is not None and self._started is not None
        terminated = scope.cancel_called
        swallowed = scope.__exit__(exc_type, exc, tb)
        worker._task_done(self)
        self.runtime = time.monotonic() - self._started
        if exc is None:
            self.state = "SUCCESS"
            await worker._send_shielded(
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
                exception=exception_repr(cause if cause is not None else exc),
                traceback=format_traceback(shown),
            )
            return True
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            self.state = "REVOKED"
            await worker._send_shielded(
                "task-revoked",
                uuid=self.uuid,
                terminated=True,
                signum=self._signum if terminated else None,
                expired=False,
            )
            return True if swallowed else None
        self.state = "FAILURE"
        await worker._send_shielded(
            "task-failed",
            uuid=self.uuid,
            exception=exception_repr(exc),
            traceback=format_traceback(exc),
        )
        return None
