"""SAQ workers and jobs in Flower, ``celery events`` and ``celery inspect``: one line.

::

    from saq import Queue
    from aiocelev.integrations.saq import CeleryEvents

    settings = CeleryEvents("redis://localhost:6379/0").install({
        "queue": Queue.from_url("redis://localhost:6379/0"),
        "functions": [download, resize],
    })

:meth:`CeleryEvents.install` adds the node to SAQ's ``startup``/``shutdown``
hooks and reports every job from ``before_process``/``after_process``
(keeping the user's own hooks): ``task-received`` and ``task-started``, then
``task-succeeded``, ``task-failed``, ``task-retried`` (a failed job with
attempts left) or ``task-revoked`` (``job.abort()``, ``revoke --terminate``, or
the worker stopping).  The task id is the job's ``key``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, MutableMapping
from typing import Any, TypeVar

from .. import MissingDependencyError
from ..brokers import Broker
from ._node import JobReport, WorkerNode

try:
    from saq import __version__ as _saq_version
    from saq.job import Job, Status
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError(
        "aiocelev.integrations.saq needs saq: pip install 'aiocelev[saq]'"
    ) from exc

__all__ = ["CONTEXT_KEY", "CeleryEvents"]

logger = logging.getLogger("aiocelev.integrations.saq")

_Settings = TypeVar("_Settings", bound=MutableMapping[str, Any])

#: Where the job's report lives in SAQ's per-job context.
CONTEXT_KEY = "aiocelev_report"


class JobError(Exception):
    """Stands for a SAQ job's failure when only its text is known."""


class CeleryEvents:
    """Report a SAQ worker and its jobs as Celery events.

    :param broker_or_url: the event broker (``redis://...``, ``amqp://...``, or a
        :class:`~aiocelev.brokers.Broker`) that Flower and ``celery events`` watch.
    :param options: the worker node's options (``hostname``, ``freq``,
        ``control``, ``overflow``, ``buffer_size``, ``broker_options``...), see
        :class:`~aiocelev.integrations.WorkerNode`; ``hostname`` may contain
        ``{pid}`` and ``{host}`` (default ``saq-{pid}@{host}``).
    """

    def __init__(self, broker_or_url: Broker | str, **options: Any) -> None:
        self._broker = broker_or_url
        self._options = options
        self._node: WorkerNode | None = None

    @property
    def node(self) -> WorkerNode | None:
        """The monitoring node of this worker process, once started."""
        return self._node

    # -- hooks ----------------------------------------------------------------------

    async def startup(self, ctx: MutableMapping[str, Any]) -> None:
        """SAQ ``startup``: go online (``worker-online``, heartbeats, remote control)."""
        if self._node is not None:
            return
        worker = ctx.get("worker")
        names = sorted(getattr(worker, "functions", {}) or {})
        self._node = WorkerNode(
            self._broker, framework="saq", sw_ver=_saq_version, task_names=names, **self._options
        )
        await self._node.start()

    async def shutdown(self, ctx: MutableMapping[str, Any]) -> None:
        """SAQ ``shutdown``: go offline (``worker-offline``)."""
        node, self._node = self._node, None
        if node is not None:
            await node.stop()

    async def before_process(self, ctx: MutableMapping[str, Any]) -> None:
        """SAQ ``before_process``: ``task-received`` and ``task-started``."""
        node = self._node
        job = ctx.get("job")
        if node is None or node.worker is None or not isinstance(job, Job):
            return
        try:
            report = node.job(
                job.key,
                job.function,
                (),
                job.kwargs or {},
                retries=max(job.attempts - 1, 0),
                cancel=lambda: _abort(node, job),
            )
            if report is not None and await report.begin():
                ctx[CONTEXT_KEY] = report
        except Exception:
            logger.exception("job %s: not reported", getattr(job, "key", "?"))

    async def after_process(self, ctx: MutableMapping[str, Any]) -> None:
        """SAQ ``after_process``: the job's outcome, from its status."""
        report = ctx.pop(CONTEXT_KEY, None)
        job = ctx.get("job")
        if not isinstance(report, JobReport) or not isinstance(job, Job):
            return
        try:
            await _report_outcome(report, job, ctx.get("exception"))
        except Exception:
            logger.exception("job %s: outcome not reported", job.key)

    def install(self, settings: _Settings) -> _Settings:
        """Add the hooks to SAQ worker *settings* (the dict given to ``saq``), keeping the user's.

        The node goes online before the user's ``startup`` hooks and offline
        after their ``shutdown`` hooks.  Returns *settings*, changed in place.
        """
        settings["startup"] = [self.startup, *_hooks(settings.get("startup"))]
        settings["shutdown"] = [*_hooks(settings.get("shutdown")), self.shutdown]
        settings["before_process"] = [self.before_process, *_hooks(settings.get("before_process"))]
        settings["after_process"] = [*_hooks(settings.get("after_process")), self.after_process]
        return settings


def _hooks(value: Callable[..., Any] | Collection[Callable[..., Any]] | None) -> list[Any]:
    if value is None:
        return []
    if callable(value):
        return [value]
    return list(value)


def _abort(node: WorkerNode, job: Job) -> bool:
    """``revoke --terminate``: SAQ's own abort (the worker cancels the job at its next check)."""

    async def request() -> None:
        await job.abort("revoked by remote control")

    return node.spawn(request)


async def _report_outcome(report: JobReport, job: Job, exc: Any) -> None:
    status = job.status
    error = exc if isinstance(exc, BaseException) else None
    if status == Status.COMPLETE:
        await report.succeeded(job.result)
    elif status in (Status.ABORTED, Status.ABORTING):
        await report.revoked(terminated=True)
    elif status == Status.QUEUED:
        if error is None:  # cancelled (the worker stopping): SAQ runs it again later
            await report.revoked(terminated=True)
        else:
            await report.retried(error, traceback=job.error)
    elif status == Status.FAILED:
        if error is None:
            error = JobError(job.error or "failed")
        await report.failed(error, traceback=job.error)
    else:  # ended without a final status (e.g. the worker was torn down)
        await report.revoked(terminated=True)
