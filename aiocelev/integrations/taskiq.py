"""taskiq workers and tasks in Flower, ``celery events`` and ``celery inspect``: one middleware.

::

    from taskiq_redis import ListQueueBroker
    from aiocelev.integrations.taskiq import CeleryEventsMiddleware

    broker = ListQueueBroker("redis://localhost:6379/0", socket_timeout=None).with_middlewares(
        CeleryEventsMiddleware("redis://localhost:6379/0"),
    )

In each worker process (``taskiq worker app:broker``) the middleware runs a
monitoring node: ``worker-online`` at the broker's start-up, heartbeats,
``worker-offline`` at its shutdown (also after SIGTERM), and per task
``task-received``, ``task-started`` and ``task-succeeded``, ``task-failed``,
``task-retried`` (when a retry middleware sends the task again) or
``task-revoked`` (``revoke --terminate``).  The node answers remote control
(``ping``, ``stats``, ``active``, ``registered``, ``revoke``...).  With
``send_sent_events=True`` every kick also sends ``task-sent`` (from the client's
own node ``gen<pid>@<host>``, or from the worker for tasks kicked by tasks).

Tasks kicked from inside a task carry their parent's id in the labels
``celery_parent_id`` and ``celery_root_id``, so that monitors show the tree.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

from .. import MissingDependencyError, saferepr
from ..brokers import Broker
from ._node import JobReport, WorkerNode

try:
    from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult, __version__ as _taskiq_version
    from taskiq.exceptions import NoResultError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError(
        "aiocelev.integrations.taskiq needs taskiq: pip install 'aiocelev[taskiq]'"
    ) from exc

__all__ = ["PARENT_LABEL", "ROOT_LABEL", "CeleryEventsMiddleware"]

logger = logging.getLogger("aiocelev.integrations.taskiq")

#: Celery's ``argsrepr_maxsize``: ``args``/``kwargs`` of ``task-sent`` are cut to it.
REPR_MAXSIZE = 1024

#: The label carrying the id of the task that kicked this one.
PARENT_LABEL = "celery_parent_id"
#: The label carrying the id of the first task of the workflow.
ROOT_LABEL = "celery_root_id"


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _label(labels: Mapping[str, Any], name: str) -> str | None:
    value = labels.get(name)
    return str(value) if value else None


class CeleryEventsMiddleware(TaskiqMiddleware):
    """A taskiq middleware that reports the worker and its tasks as Celery events.

    :param broker_or_url: the event broker: a URL (``redis://...``, ``amqp://...``)
        or a :class:`~aiocelev.brokers.Broker`.  Flower and ``celery events`` must
        watch the same broker.
    :param send_sent_events: send ``task-sent`` for every kicked task (Celery's
        ``task_send_sent_event``).
    :param client_hostname: the node name of ``task-sent`` events sent by a
        client (default ``gen<pid>@<host>``, as Celery).
    :param options: the worker node's options (``hostname``, ``freq``,
        ``control``, ``overflow``, ``buffer_size``, ``broker_options``...), see
        :class:`~aiocelev.integrations.WorkerNode`; ``hostname`` may contain
        ``{pid}`` and ``{host}`` (default ``taskiq-{pid}@{host}``).
    """

    def __init__(
        self,
        broker_or_url: Broker | str,
        *,
        send_sent_events: bool = False,
        client_hostname: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self._events_broker = broker_or_url
        self._send_sent = send_sent_events
        self._client_hostname = client_hostname
        self._options = options
        self._node: WorkerNode | None = None
        self._current: contextvars.ContextVar[JobReport | None] = contextvars.ContextVar(
            f"aiocelev_taskiq_job_{id(self)}", default=None
        )

    @property
    def node(self) -> WorkerNode | None:
        """The monitoring node of this process, once started (``None`` before)."""
        return self._node

    # -- life cycle ---------------------------------------------------------------

    async def startup(self) -> None:
        """Go online in a worker process; open the ``task-sent`` dispatcher in a client."""
        if self._node is not None:
            return
        if self.broker.is_worker_process:
            broker = self.broker
            self._node = WorkerNode(
                self._events_broker,
                framework="taskiq",
                sw_ver=_taskiq_version,
                task_names=lambda: list(broker.get_all_tasks()),
                **self._options,
            )
        elif self._send_sent:
            options = {
                k: v
                for k, v in self._options.items()
                if k in ("buffer_size", "overflow", "shield_timeout", "broker_options")
            }
            hostname = self._client_hostname or f"gen{os.getpid()}@{socket.gethostname()}"
            self._node = WorkerNode(
                self._events_broker,
                framework="taskiq",
                hostname=hostname,
                instrument=False,
                **options,
            )
        else:
            return
        await self._node.start()

    async def shutdown(self) -> None:
        """Go offline (``worker-offline``) and close the node."""
        node, self._node = self._node, None
        if node is not None:
            await node.stop()

    # -- client side --------------------------------------------------------------

    def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        """Label tasks kicked by a task with their parent; notice retries of a running task."""
        current = self._current.get()
        if current is not None:
            if message.task_id == current.uuid:
                current.retrying = True  # a retry middleware sends the task again
            else:
                message.labels.setdefault(PARENT_LABEL, current.uuid)
                message.labels.setdefault(ROOT_LABEL, current.root_id)
        return message

    async def post_send(self, message: TaskiqMessage) -> None:
        """``task-sent``, with ``send_sent_events=True``."""
        node = self._node
        if not self._send_sent or node is None:
            return
        labels = message.labels
        try:
            await node.send(
                "task-sent",
                uuid=message.task_id,
                root_id=_label(labels, ROOT_LABEL) or message.task_id,
                parent_id=_label(labels, PARENT_LABEL),
                name=message.task_name,
                args=_safe_repr(message.args),
                kwargs=_safe_repr(message.kwargs),
                retries=_int(labels.get("_retries", 0)),
                eta=None,
                expires=None,
                queue=None,
                exchange=None,
                routing_key=None,
            )
        except Exception:  # pragma: no cover - node.send never raises; repr might
            logger.exception("task-sent for %s not reported", message.task_id)

    # -- worker side --------------------------------------------------------------

    async def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        """``task-received`` and ``task-started``; the job shows in ``inspect active``."""
        node = self._node
        if node is None or node.worker is None:
            return message
        try:
            task = asyncio.current_task()
            labels = message.labels
            report = node.job(
                message.task_id,
                message.task_name,
                message.args,
                message.kwargs,
                retries=_int(labels.get("_retries", 0)),
                root_id=_label(labels, ROOT_LABEL),
                parent_id=_label(labels, PARENT_LABEL),
                cancel=(lambda: _cancel(task)) if task is not None else None,
            )
            if report is None or not await report.begin():
                return message
            self._current.set(report)
            if task is not None:
                task.add_done_callback(lambda _: report.abandon())
        except Exception:
            logger.exception("task %s: not reported", message.task_id)
        return message

    def on_error(
        self,
        message: TaskiqMessage,
        result: TaskiqResult[Any],
        exception: BaseException,
    ) -> None:
        """Keep the exception for :meth:`post_execute` (a retry middleware may replace it)."""
        current = self._current.get()
        if current is not None:
            current.exception = exception

    async def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        """``task-succeeded``, ``task-failed``, ``task-retried`` or ``task-revoked``."""
        report = self._current.get()
        if report is None:
            return
        self._current.set(None)
        try:
            exc = report.exception
            if exc is None and result.is_err and isinstance(result.error, BaseException):
                exc = result.error
            if report.terminated or isinstance(exc, asyncio.CancelledError):
                if report.terminated:
                    _uncancel(asyncio.current_task())
                await report.revoked(terminated=True)
            elif report.retrying:
                await report.retried(exc if exc is not None else RuntimeError("retried"))
            elif exc is None or isinstance(exc, NoResultError):
                await report.succeeded(result.return_value)
            else:
                await report.failed(exc)
        except Exception:
            logger.exception("task %s: outcome not reported", message.task_id)


def _cancel(task: asyncio.Task[Any]) -> bool:
    """Cancel the asyncio task running a job (``revoke --terminate``)."""
    if task.done():
        return False
    task.cancel()
    return True


def _uncancel(task: asyncio.Task[Any] | None) -> None:
    """Take back our cancellation request once taskiq has handled it (Python 3.11+)."""
    uncancel = getattr(task, "uncancel", None)
    cancelling = getattr(task, "cancelling", None)
    if uncancel is not None and cancelling is not None and cancelling():
        uncancel()


def _safe_repr(value: Any) -> str:
    return saferepr(value, REPR_MAXSIZE)
