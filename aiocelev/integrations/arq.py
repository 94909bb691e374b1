"""arq workers and jobs in Flower, ``celery events`` and ``celery inspect``: one line.

::

    from arq.connections import RedisSettings
    from aiocelev.integrations.arq import CeleryEvents

    @CeleryEvents("redis://localhost:6379/0").install
    class WorkerSettings:
        functions = [download, resize]
        redis_settings = RedisSettings()
        allow_abort_jobs = True          # lets ``revoke --terminate`` cancel a running job

:meth:`CeleryEvents.install` chains the node's start-up and shutdown into
``on_startup``/``on_shutdown`` (keeping the user's own hooks) and wraps every
function and cron job, because arq's job hooks see neither the function's
name nor its outcome.  Each job then sends ``task-received``, ``task-started``
and ``task-succeeded``, ``task-failed`` (an exception, or the job timeout: a
``TimeoutError``, as arq records it), ``task-retried`` (``raise Retry(...)``)
or ``task-revoked`` (cancelled: ``Job.abort()``, ``revoke --terminate`` or the
worker stopping).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .. import MissingDependencyError
from ..brokers import Broker
from ._node import JobReport, WorkerNode

try:
    from arq.constants import abort_jobs_ss
    from arq.cron import CronJob
    from arq.utils import timestamp_ms, to_seconds
    from arq.version import VERSION as _arq_version
    from arq.worker import Function, Retry, func
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError(
        "aiocelev.integrations.arq needs arq: pip install 'aiocelev[arq]'"
    ) from exc

__all__ = ["START_KEY", "CeleryEvents"]

logger = logging.getLogger("aiocelev.integrations.arq")

_Settings = TypeVar("_Settings")

#: Where ``on_job_start`` notes when arq started the job (its ``time.monotonic()``).
START_KEY = "aiocelev_job_start"

#: arq's default ``job_timeout`` (seconds).
ARQ_JOB_TIMEOUT = 300.0

#: The finest difference the monotonic clock (asyncio's) can tell.
_RESOLUTION = time.get_clock_info("monotonic").resolution

#: How early a cancellation may come and still be the job timeout, when the start
#: was not noted by ``on_job_start`` (the wrapper starts a little after arq's timer).
_UNNOTED_TOLERANCE = 0.05

#: arq's job coroutine: ``async def job(ctx, *args, **kwargs)``.
JobFunction = Callable[..., Any]


class CeleryEvents:
    """Report an arq worker and its jobs as Celery events.

    :param broker_or_url: the event broker (``redis://...``, ``amqp://...``, or a
        :class:`~aiocelev.brokers.Broker`) that Flower and ``celery events`` watch.
    :param allow_abort: cancel a running job on ``revoke --terminate`` through
        arq's own abort (the worker needs ``allow_abort_jobs = True``; default:
        the setting's value, with :meth:`install`).
    :param options: the worker node's options (``hostname``, ``freq``,
        ``control``, ``overflow``, ``buffer_size``, ``broker_options``...), see
        :class:`~aiocelev.integrations.WorkerNode`; ``hostname`` may contain
        ``{pid}`` and ``{host}`` (default ``arq-{pid}@{host}``).
    """

    def __init__(
        self, broker_or_url: Broker | str, *, allow_abort: bool | None = None, **options: Any
    ) -> None:
        self._broker = broker_or_url
        self._allow_abort = allow_abort
        self._options = options
        self._names: list[str] = []
        self._node: WorkerNode | None = None
        self._job_timeout: float | None = ARQ_JOB_TIMEOUT

    @property
    def node(self) -> WorkerNode | None:
        """The monitoring node of this worker process, once started."""
        return self._node

    # -- hooks --------------------------------------------------------------------

    async def on_startup(self, ctx: dict[Any, Any]) -> None:
        """arq ``on_startup``: go online (``worker-online``, heartbeats, remote control)."""
        if self._node is not None:
            return
        self._node = WorkerNode(
            self._broker,
            framework="arq",
            sw_ver=_arq_version,
            task_names=list(self._names),
            **self._options,
        )
        await self._node.start()

    async def on_shutdown(self, ctx: dict[Any, Any]) -> None:
        """arq ``on_shutdown``: go offline (``worker-offline``)."""
        node, self._node = self._node, None
        if node is not None:
            await node.stop()

    async def on_job_start(self, ctx: dict[Any, Any]) -> None:
        """arq ``on_job_start``: note when arq starts the job's clock (to tell its timeout)."""
        ctx[START_KEY] = time.monotonic()

    def wrap(
        self, coroutine: JobFunction, name: str | None = None, *, timeout: float | None = None
    ) -> JobFunction:
        """*coroutine* (an arq job function) reporting each run as a Celery task named *name*.

        :param timeout: the job timeout arq applies to it (seconds; the function's
            ``timeout`` or the worker's ``job_timeout``): a cancellation once it has
            passed is reported as ``task-failed`` with a ``TimeoutError``, as arq
            records it.  :meth:`install` passes it.
        """
        task_name = name or coroutine.__qualname__
        if task_name not in self._names:
            self._names.append(task_name)

        @functools.wraps(coroutine)
        async def reported(ctx: dict[Any, Any], *args: Any, **kwargs: Any) -> Any:
            begun = time.monotonic()
            report = await self._begin(ctx, task_name, args, kwargs)
            if report is None:
                return await coroutine(ctx, *args, **kwargs)
            try:
                result = await coroutine(ctx, *args, **kwargs)
            except Retry as exc:
                await report.retried(exc)
                raise
            except asyncio.CancelledError as exc:
                if not report.terminated and _timed_out(ctx, begun, timeout):
                    assert timeout is not None
                    error = TimeoutError(f"job {task_name} timed out after {timeout:g}s")
                    error.__cause__ = exc  # where the job was when arq cancelled it
                    await report.failed(error)
                else:
                    await report.revoked(terminated=True)
                raise
            except Exception as exc:
                await report.failed(exc)
                raise
            await report.succeeded(result)
            return result

        return reported

    def install(self, settings: _Settings) -> _Settings:
        """Install the hooks and wrap the functions of arq *settings* (a class or a dict).

        The user's own ``on_startup`` runs after the node is online and
        ``on_shutdown`` before it goes offline; ``on_job_start`` is chained too
        (ours first).  Returns *settings* (changed in place), so that it can be
        used as a class decorator.
        """
        get, put = _accessors(settings)
        if self._allow_abort is None:
            self._allow_abort = bool(get("allow_abort_jobs", False))
        self._job_timeout = to_seconds(get("job_timeout", ARQ_JOB_TIMEOUT))
        user_startup, user_shutdown = get("on_startup", None), get("on_shutdown", None)
        user_job_start = get("on_job_start", None)

        async def on_startup(ctx: dict[Any, Any]) -> None:
            await self.on_startup(ctx)
            if user_startup is not None:
                await user_startup(ctx)

        async def on_shutdown(ctx: dict[Any, Any]) -> None:
            try:
                if user_shutdown is not None:
                    await user_shutdown(ctx)
            finally:
                await self.on_shutdown(ctx)

        async def on_job_start(ctx: dict[Any, Any]) -> None:
            await self.on_job_start(ctx)
            if user_job_start is not None:
                await user_job_start(ctx)

        put("on_startup", on_startup)
        put("on_shutdown", on_shutdown)
        put("on_job_start", on_job_start)
        put("functions", [self._wrap_function(entry) for entry in get("functions", ())])
        cron_jobs: Sequence[CronJob] | None = get("cron_jobs", None)
        if cron_jobs:
            put(
                "cron_jobs",
                [
                    dataclasses.replace(
                        job,
                        coroutine=self.wrap(
                            job.coroutine, job.name, timeout=self._timeout_of(job.timeout_s)
                        ),
                    )
                    for job in cron_jobs
                ],
            )
        return settings

    # -- internals ----------------------------------------------------------------

    def _timeout_of(self, timeout_s: float | None) -> float | None:
        return timeout_s if timeout_s is not None else self._job_timeout

    def _wrap_function(self, entry: Any) -> Function:
        function = func(entry)
        wrapped = self.wrap(
            function.coroutine, function.name, timeout=self._timeout_of(function.timeout_s)
        )
        return dataclasses.replace(function, coroutine=wrapped)

    async def _begin(
        self, ctx: dict[Any, Any], name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> JobReport | None:
        node = self._node
        if node is None or node.worker is None:
            return None
        try:
            job_id = str(ctx.get("job_id"))
            redis = ctx.get("redis")
            cancel = None
            if self._allow_abort and redis is not None:
                cancel = functools.partial(self._abort, node, redis, job_id)
            report = node.job(
                job_id,
                name,
                args,
                kwargs,
                retries=max(int(ctx.get("job_try") or 1) - 1, 0),
                cancel=cancel,
            )
            if report is None or not await report.begin():
                return None
            return report
        except Exception:
            logger.exception("job %s: not reported", ctx.get("job_id"))
            return None

    @staticmethod
    def _abort(node: WorkerNode, redis: Any, job_id: str) -> bool:
        """Ask arq to abort *job_id* (what ``Job.abort()`` does); its worker cancels the job."""

        async def request() -> None:
            await redis.zadd(abort_jobs_ss, {job_id: timestamp_ms()})

        return node.spawn(request)


def _timed_out(ctx: dict[Any, Any], begun: float, timeout: float | None) -> bool:
    """Whether a cancellation now is arq's job timeout (not an abort or the worker stopping).

    arq cancels a job that outlives its timeout; it then records a ``TimeoutError``.
    Nothing tells that cancellation from the others but the time: arq's timer
    starts just after ``on_job_start`` (which notes :data:`START_KEY`) and fires
    once *timeout* has passed.
    """
    if timeout is None:
        return False
    noted = ctx.get(START_KEY)
    if isinstance(noted, float) and noted <= begun:
        return time.monotonic() - noted >= timeout - _RESOLUTION
    return time.monotonic() - begun >= timeout - _UNNOTED_TOLERANCE


def _accessors(
    settings: Any,
) -> tuple[Callable[[str, Any], Any], Callable[[str, Any], None]]:
    if isinstance(settings, dict):
        return settings.get, settings.__setitem__

    def get(name: str, default: Any) -> Any:
        return getattr(settings, name, default)

    def put(name: str, value: Any) -> None:
        setattr(settings, name, value)

    return get, put
