"""A simulated cluster: asyncio workers running realistic tasks, reported as Celery reports them.

Each simulated worker is a node of its own (``<name>-N@<host>``, with its own
:class:`~aiocelev.EventDispatcher`) instrumented with
:func:`aiocelev._worker.worker_events`: ``worker-online``, heartbeats,
``task-received``/``task-started`` then ``task-succeeded``, ``task-failed``
(with a real traceback), ``task-retried`` or ``task-revoked``, and
``worker-offline`` at the end.  The ``aiocelev demo`` command, examples, tests
and dashboards use it as a source of lifelike traffic::

    async with simulate_cluster("memory://", workers=3, rate=30, seed=1) as sim:
        await anyio.sleep(10)
    print(sim.statistics())

No terminal or CLI code here: only the core and the instrumentation.
"""

from __future__ import annotations

import math
import random
import socket
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import anyio.abc

from ._dispatcher import EventDispatcher
from ._exceptions import ClosedError, ConfigurationError
from ._worker import worker_events
from .brokers import Broker

if TYPE_CHECKING:
    from ._worker import WorkerInstrument

__all__ = [
    "ImageTooLarge",
    "SimulatedError",
    "Simulation",
    "SimulationStatistics",
    "SmtpUnavailable",
    "UpstreamTimeout",
    "simulate_cluster",
]

#: Tasks one simulated worker runs at once, at least (more at a high rate).
CONCURRENCY = 4
#: A little more than twice the mean task duration (seconds): slots per task/s.
SLOT_SECONDS = 1.0
#: Events a task execution sends on average (received, started, outcome).
EVENTS_PER_TASK = 3.0


# -- the simulated tasks -------------------------------------------------------


class SimulatedError(Exception):
    """Base of the errors the simulated tasks raise (never an aiocelev error)."""


class ImageTooLarge(SimulatedError, ValueError):
    """``demo.resize_image``: the source image is too large."""


class SmtpUnavailable(SimulatedError, ConnectionError):
    """``demo.send_email``: the mail server refused the connection."""


class UpstreamTimeout(SimulatedError, TimeoutError):
    """``demo.fetch_url``: the remote server did not answer in time."""


@dataclass
class _Job:
    """One task to run: name, arguments and what will happen to it."""

    uuid: str
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    body: Callable[[random.Random, int], Awaitable[Any]]
    retries_planned: int = 0
    cancel_after: float | None = None
    expired: bool = False


async def _add(rng: random.Random, attempt: int, x: int = 0, y: int = 0) -> int:
    await anyio.sleep(rng.uniform(0.01, 0.15))
    return x + y


def _open_image(path: str, size_mb: float) -> None:
    if size_mb > 40:
        raise ImageTooLarge(f"{path}: {size_mb:.1f} MB exceeds the 40 MB limit")


async def _resize(rng: random.Random, attempt: int, path: str = "", width: int = 0) -> Any:
    await anyio.sleep(rng.uniform(0.1, 0.8))
    size_mb = rng.uniform(1, 48)
    _open_image(path, size_mb)
    return {"path": path.replace(".jpg", f"_{width}.jpg"), "width": width}


def _smtp_connect(host: str) -> None:
    raise SmtpUnavailable(f"[Errno 111] Connection refused: {host}:25")


async def _send_email(rng: random.Random, attempt: int, to: str = "", subject: str = "") -> Any:
    await anyio.sleep(rng.uniform(0.05, 0.4))
    if rng.random() < 0.25:
        _smtp_connect("smtp.example.com")
    return f"queued as {rng.randrange(16**8):08X}"


async def _fetch(rng: random.Random, attempt: int, url: str = "") -> Any:
    await anyio.sleep(rng.uniform(0.05, 0.5))
    if attempt < 2 and rng.random() < 0.6:
        raise UpstreamTimeout(f"GET {url}: no response within 10.0s")
    return {"status": 200, "bytes": rng.randrange(1_000, 500_000)}


async def _report(rng: random.Random, attempt: int, month: str = "") -> Any:
    await anyio.sleep(rng.uniform(1.0, 3.0))
    return f"report-{month}.pdf"


_USERS = ("ada", "grace", "linus", "guido", "barbara", "ken", "margaret")


def _new_job(rng: random.Random) -> _Job:
    task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    kind = rng.choices(
        ("add", "resize", "email", "fetch", "report", "expired"),
        weights=(30, 20, 20, 15, 10, 5),
    )[0]
    if kind == "add":
        x, y = rng.randrange(100), rng.randrange(100)
        return _Job(task_id, "demo.add", (x, y), {}, lambda r, a: _add(r, a, x, y))
    if kind == "resize":
        path, width = f"/uploads/img_{rng.randrange(10_000)}.jpg", rng.choice((320, 640, 1280))
        return _Job(
            task_id,
            "demo.resize_image",
            (path,),
            {"width": width},
            lambda r, a: _resize(r, a, path, width),
        )
    if kind == "email":
        to, subject = f"{rng.choice(_USERS)}@example.com", "Your weekly digest"
        return _Job(
            task_id,
            "demo.send_email",
            (to,),
            {"subject": subject},
            lambda r, a: _send_email(r, a, to, subject),
        )
    if kind == "fetch":
        url = f"https://api.example.com/items/{rng.randrange(1000)}"
        return _Job(
            task_id, "demo.fetch_url", (url,), {}, lambda r, a: _fetch(r, a, url), retries_planned=2
        )
    month = f"2026-{rng.randrange(1, 13):02d}"
    job = _Job(task_id, "demo.monthly_report", (month,), {}, lambda r, a: _report(r, a, month))
    if kind == "expired":
        job.expired = True
    elif rng.random() < 0.3:
        job.cancel_after = rng.uniform(0.3, 1.0)  # revoked (terminated) while running
    return job


# -- the simulation ------------------------------------------------------------


class SimulationStatistics(NamedTuple):
    """What a :class:`Simulation` did so far."""

    workers: int
    """Simulated worker nodes."""
    tasks: int
    """Tasks accepted (each runs once, or more with retries)."""
    executions: Mapping[str, int]
    """Finished executions by outcome: ``SUCCESS``, ``FAILURE``, ``RETRY``, ``REVOKED``."""
    sent: int
    """Events the workers' dispatchers handed to the broker."""


class Simulation:
    """Simulated workers sending Celery events; create it with :func:`simulate_cluster`.

    An async context manager: entering starts every worker and returns once
    each one sent ``worker-online``; leaving stops accepting tasks, gives the
    running ones ``grace`` seconds to finish, revokes (terminates) the rest,
    and sends ``worker-offline``.  Enter and exit it in the same task.
    """

    def __init__(
        self,
        broker: Broker | str,
        *,
        workers: int = 3,
        rate: float = 30.0,
        seed: int | None = None,
        name: str = "demo",
        heartbeat: float = 2.0,
        grace: float = 1.0,
        broker_options: Mapping[str, Any] | None = None,
    ) -> None:
        if workers < 1:
            raise ConfigurationError("workers must be at least 1")
        if not rate > 0 or math.isinf(rate):
            raise ConfigurationError("rate must be a finite number of events per second above 0")
        if not name or "@" in name or any(ch.isspace() for ch in name):
            raise ConfigurationError(f"not a node name prefix: {name!r}")
        if not heartbeat > 0:
            raise ConfigurationError("heartbeat must be above 0 seconds")
        if grace < 0:
            raise ConfigurationError("grace must not be negative")
        self._broker = broker
        self._broker_options = broker_options
        self._rate = rate
        self._heartbeat = heartbeat
        self._grace = grace
        host = socket.gethostname()
        self.hostnames: tuple[str, ...] = tuple(
            f"{name}-{index}@{host}" for index in range(1, workers + 1)
        )
        """The node names of the simulated workers, ``<name>-N@<host>``."""
        self._master = random.Random(seed)
        self._stop = anyio.Event()
        self._tasks = 0
        self._executions: Counter[str] = Counter()
        self._dispatchers: list[EventDispatcher] = []
        self._task_group: anyio.abc.TaskGroup | None = None
        self._entered = False

    def statistics(self) -> SimulationStatistics:
        """A snapshot of the counters."""
        return SimulationStatistics(
            workers=len(self.hostnames),
            tasks=self._tasks,
            executions=dict(self._executions),
            sent=sum(d.statistics().sent for d in self._dispatchers),
        )

    def stop(self) -> None:
        """Stop accepting new tasks (leaving the context then takes at most ``grace`` seconds)."""
        self._stop.set()

    async def __aenter__(self) -> Simulation:
        if self._entered:
            raise ClosedError("a Simulation can be entered only once")
        self._entered = True
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        try:
            per_worker = self._rate / EVENTS_PER_TASK / len(self.hostnames)
            for hostname in self.hostnames:
                rng = random.Random(self._master.getrandbits(64))
                await task_group.start(self._run_worker, hostname, per_worker, rng)
        except BaseException:
            self._stop.set()
            task_group.cancel_scope.cancel()
            self._task_group = None
            await task_group.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        task_group, self._task_group = self._task_group, None
        self._stop.set()
        if task_group is None:
            return None
        if exc is not None:
            task_group.cancel_scope.cancel()
        return await task_group.__aexit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"<Simulation workers={len(self.hostnames)} rate={self._rate:g}/s>"

    # -- internals ------------------------------------------------------------

    async def _execute(
        self, worker: WorkerInstrument, dispatcher: EventDispatcher, job: _Job, rng: random.Random
    ) -> None:
        """Run *job* on *worker* (with its retries), counting every execution's outcome."""
        if job.expired:
            await dispatcher.send(
                "task-received",
                uuid=job.uuid,
                name=job.name,
                args=repr(job.args),
                kwargs=repr(job.kwargs),
                root_id=job.uuid,
                parent_id=None,
                retries=0,
                eta=None,
                expires="2026-01-01T00:00:00+00:00",
            )
            await worker.revoked(job.uuid, expired=True)
            self._executions["REVOKED"] += 1
            return
        for attempt in range(job.retries_planned + 1):
            outcome = "REVOKED"  # unless the block below gets further
            try:
                with anyio.move_on_after(job.cancel_after):
                    async with worker.task(
                        job.uuid, job.name, job.args, job.kwargs, retries=attempt
                    ) as task:
                        try:
                            task.set_result(await job.body(rng, attempt))
                        except UpstreamTimeout as exc:
                            if attempt < job.retries_planned:
                                outcome = "RETRY"
                                raise task.retry(exc) from exc
                            raise
                        outcome = "SUCCESS"
            except SimulatedError:
                outcome = "FAILURE"
            self._executions[outcome] += 1
            if outcome != "RETRY":
                return
            await anyio.sleep(rng.uniform(0.1, 0.5))  # the retry's countdown

    async def _run_worker(
        self,
        hostname: str,
        tasks_per_second: float,
        rng: random.Random,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """One simulated worker: accept tasks at *tasks_per_second* until stopped."""
        dispatcher = EventDispatcher(
            self._broker,
            hostname=hostname,
            close_timeout=5.0,
            broker_options=self._broker_options,
        )
        self._dispatchers.append(dispatcher)
        async with dispatcher, worker_events(dispatcher, freq=self._heartbeat) as worker:
            task_status.started()
            concurrency = max(CONCURRENCY, math.ceil(tasks_per_second * SLOT_SECONDS))
            slots = anyio.Semaphore(concurrency)
            async with anyio.create_task_group() as running:

                async def one(job: _Job) -> None:
                    try:
                        await self._execute(worker, dispatcher, job, rng)
                    finally:
                        slots.release()

                with anyio.CancelScope() as producing:

                    async def stop_producing() -> None:
                        await self._stop.wait()
                        producing.cancel()

                    running.start_soon(stop_producing)
                    while True:
                        await anyio.sleep(rng.expovariate(tasks_per_second))
                        await slots.acquire()
                        self._tasks += 1
                        running.start_soon(one, _new_job(rng))
                # Let running tasks finish for a moment; the rest are revoked (terminated).
                with anyio.move_on_after(self._grace):
                    for _ in range(concurrency):
                        await slots.acquire()
                running.cancel_scope.cancel()


def simulate_cluster(
    broker: Broker | str,
    *,
    workers: int = 3,
    rate: float = 30.0,
    seed: int | None = None,
    name: str = "demo",
    heartbeat: float = 2.0,
    grace: float = 1.0,
    broker_options: Mapping[str, Any] | None = None,
) -> Simulation:
    """Simulated workers on *broker*; use the result as ``async with``.

    The tasks (``demo.add``, ``demo.resize_image``, ``demo.send_email``,
    ``demo.fetch_url``, ``demo.monthly_report``) succeed, fail with real
    tracebacks, are retried, revoked while running, or expire.

    :param broker: a :class:`~aiocelev.brokers.Broker` (shared by the workers,
        not closed), or a URL (each worker opens its own connection).
    :param workers: how many worker nodes.
    :param rate: about how many events per second all workers send together.
    :param seed: seed of the random choices (task kinds, arguments, ids, timing),
        for repeatable runs; wall-clock timing still varies.
    :param name: node names are ``<name>-1@<host>``, ``<name>-2@<host>``...
    :param heartbeat: seconds between ``worker-heartbeat`` events.
    :param grace: seconds running tasks get to finish when the simulation ends.
    :param broker_options: options for :func:`~aiocelev.brokers.open_broker` when *broker* is a URL.
    :raises ConfigurationError: a bad argument.
    """
    return Simulation(
        broker,
        workers=workers,
        rate=rate,
        seed=seed,
        name=name,
        heartbeat=heartbeat,
        grace=grace,
        broker_options=broker_options,
    )
