"""``aiocelev demo``: simulated async workers running realistic tasks.

Each simulated worker is a node of its own (``demo-N@<host>``, its own
:class:`~aiocelev.EventDispatcher`) instrumented with
:func:`aiocelev._worker.worker_events`: ``worker-online``, heartbeats every
2 s, ``task-received``/``task-started`` then ``task-succeeded``,
``task-failed`` (with a real traceback), ``task-retried`` or ``task-revoked``,
and ``worker-offline`` at the end.  A receiver feeds a
:class:`~aiocelev._state.ClusterState` that the terminal view (``top``) and the
final summary read.  On an external broker, Flower and ``celery events`` see
the simulated workers too.
"""

from __future__ import annotations

import argparse
import math
import random
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.abc

from .._dispatcher import EventDispatcher
from .._exceptions import AiocelevError
from .._receiver import EventReceiver
from .._state import ClusterState
from .._url import mask_url
from .._worker import TaskScope, WorkerInstrument, worker_events
from ._common import (
    EXIT_OK,
    Context,
    add_broker_options,
    diag,
    non_negative_float,
    positive_float,
    positive_int,
    resolve_broker_url,
)
from ._top import require_rich

__all__ = ["DemoStats", "register", "run", "simulate"]

DEMO_DEFAULT_BROKER = "memory://"
#: Seconds between heartbeats of the simulated workers (Celery's default).
HEARTBEAT_FREQ = 2.0
#: Tasks one simulated worker runs at once, at least (more at high ``--rate``).
CONCURRENCY = 4
#: A little more than twice the mean task duration (seconds): slots per task/s.
SLOT_SECONDS = 1.0
#: Events a task execution sends on average (received, started, outcome).
EVENTS_PER_TASK = 3.0
#: Seconds running tasks get to finish when the demo ends (then they are revoked).
GRACE = 1.0


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="simulated workers running realistic tasks (default broker: memory://)",
        description=(
            "Run simulated async workers (demo-N@<host>) that send Celery events: "
            "successes, failures with tracebacks, retries and revoked tasks, heartbeats "
            "every 2 s. By default everything runs in this process on memory:// and the "
            "live view (as 'aiocelev top') shows it; with --broker the workers publish "
            "to a real broker, where Flower and 'celery events' see them. "
            "--no-ui prints a summary at the end instead (no rich needed)."
        ),
    )
    parser.add_argument(
        "-w",
        "--workers",
        type=positive_int,
        default=3,
        metavar="N",
        help="how many simulated workers (default: 3)",
    )
    parser.add_argument(
        "-r",
        "--rate",
        type=positive_float,
        default=30.0,
        metavar="EVENTS_PER_S",
        help="about how many events per second all workers send together (default: 30)",
    )
    parser.add_argument(
        "-d",
        "--duration",
        type=non_negative_float,
        metavar="SECONDS",
        help="stop after this many seconds (default: until Ctrl-C or q; with --no-ui: 5)",
    )
    parser.add_argument(
        "--no-ui", action="store_true", help="no live view: print a summary at the end"
    )
    parser.add_argument(
        "--name",
        type=_node_prefix,
        default="demo",
        metavar="NAME",
        help="node names are NAME-1@<host>, NAME-2@<host>... (default: demo)",
    )
    parser.add_argument(
        "--seed", type=int, metavar="N", help="seed the random choices (repeatable runs)"
    )
    add_broker_options(parser, default_hint=DEMO_DEFAULT_BROKER)
    parser.set_defaults(func=run)


def _node_prefix(text: str) -> str:
    """An argparse type: a node name prefix (no ``@``, no spaces)."""
    if not text or "@" in text or any(ch.isspace() for ch in text):
        raise argparse.ArgumentTypeError(f"not a node name prefix: {text!r}")
    return text


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


@dataclass
class DemoStats:
    """What the demo did and saw."""

    hostnames: list[str] = field(default_factory=list)
    sent: int = 0
    received: int = 0
    malformed: int = 0
    executions: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None


async def _execute(
    worker: WorkerInstrument, job: _Job, rng: random.Random, stats: DemoStats
) -> None:
    """Run *job* on *worker* (with its retries), reporting every execution."""
    if job.expired:
        await worker.dispatcher.send(
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
        stats.executions["REVOKED"] += 1
        return
    for attempt in range(job.retries_planned + 1):
        scope: TaskScope = worker.task(job.uuid, job.name, job.args, job.kwargs, retries=attempt)
        try:
            with anyio.move_on_after(job.cancel_after):
                async with scope as task:
                    try:
                        task.set_result(await job.body(rng, attempt))
                    except UpstreamTimeout as exc:
                        if attempt < job.retries_planned:
                            raise task.retry(exc) from exc
                        raise
        except Exception as exc:
            if isinstance(exc, AiocelevError) or not isinstance(exc, SimulatedError):
                raise
        stats.executions[scope.state] += 1
        if scope.state != "RETRY":
            return
        await anyio.sleep(rng.uniform(0.1, 0.5))  # the retry's countdown


async def _run_worker(
    url: str,
    hostname: str,
    tasks_per_second: float,
    rng: random.Random,
    stats: DemoStats,
    stop: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """One simulated worker: accept tasks at *tasks_per_second* until *stop*."""
    dispatcher = EventDispatcher(url, hostname=hostname, close_timeout=5.0)
    async with dispatcher, worker_events(dispatcher, freq=HEARTBEAT_FREQ) as worker:
        task_status.started()
        concurrency = max(CONCURRENCY, math.ceil(tasks_per_second * SLOT_SECONDS))
        slots = anyio.Semaphore(concurrency)
        async with anyio.create_task_group() as running:

            async def one(job: _Job) -> None:
                try:
                    await _execute(worker, job, rng, stats)
                finally:
                    slots.release()

            with anyio.CancelScope() as producing:

                async def stop_producing() -> None:
                    await stop.wait()
                    producing.cancel()

                running.start_soon(stop_producing)
                while True:
                    await anyio.sleep(rng.expovariate(tasks_per_second))
                    await slots.acquire()
                    running.start_soon(one, _new_job(rng))
            # Let running tasks finish for a moment; the rest are revoked (terminated).
            with anyio.move_on_after(GRACE):
                for _ in range(concurrency):
                    await slots.acquire()
            running.cancel_scope.cancel()
    stats.sent += dispatcher.statistics().sent


async def simulate(
    url: str,
    *,
    workers: int,
    rate: float,
    stop: anyio.Event,
    stats: DemoStats,
    seed: int | None = None,
    name: str = "demo",
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run *workers* simulated workers (``<name>-N@<host>``) on *url* until *stop* is set.

    Returns (through *task_status*) once every worker sent ``worker-online``.
    """
    host = socket.gethostname()
    tasks_per_second = rate / EVENTS_PER_TASK / workers
    master = random.Random(seed)
    async with anyio.create_task_group() as tg:
        for index in range(1, workers + 1):
            hostname = f"{name}-{index}@{host}"
            stats.hostnames.append(hostname)
            rng = random.Random(master.getrandbits(64))
            await tg.start(_run_worker, url, hostname, tasks_per_second, rng, stats, stop)
        task_status.started()


# -- the command -----------------------------------------------------------------


async def _count(
    receiver: EventReceiver,
    state: ClusterState,
    stats: DemoStats,
    caught_up: Callable[[], None],
) -> None:
    ours = stats.hostnames
    async for event in receiver:
        state.apply(event)
        if event.get("hostname") in ours:
            stats.received += 1
            caught_up()


def _summary(stats: DemoStats, state: ClusterState, url: str) -> str:
    ours = set(stats.hostnames)
    by_state: Counter[str] = Counter(
        task.state for task in state.tasks.values() if task.worker in ours
    )
    elapsed = (stats.ended or time.monotonic()) - stats.started
    order = ("SUCCESS", "FAILURE", "RETRY", "REVOKED", "STARTED", "RECEIVED", "REJECTED")
    states = sorted(by_state, key=lambda s: (order.index(s) if s in order else len(order), s))
    listed = ", ".join(f"{s} {by_state[s]}" for s in states) or "none"
    seen = sum(1 for h in ours if state.worker(h) is not None)
    lines = [
        f"demo finished after {elapsed:.1f}s on {mask_url(url)}: "
        f"{len(ours)} workers, {sum(by_state.values())} tasks",
        f"  tasks by state: {listed}",
        f"  retries: {stats.executions['RETRY']}",
        f"  events: {stats.sent} sent, {stats.received} received",
        f"  workers seen by the receiver: {seen}/{len(ours)}",
    ]
    return "\n".join(lines) + "\n"


async def run(args: argparse.Namespace, ctx: Context) -> int:
    """Run ``aiocelev demo``."""
    url = resolve_broker_url(args.broker, DEMO_DEFAULT_BROKER)
    ui = not args.no_ui
    if ui:
        require_rich("demo", " (or run it with --no-ui)")
    duration = args.duration if args.duration is not None else (None if ui else 5.0)
    state = ClusterState()
    stats = DemoStats()
    stop = anyio.Event()
    done = anyio.Event()

    def caught_up() -> None:
        if stop.is_set() and stats.ended is not None and stats.received >= stats.sent:
            done.set()

    receiver = EventReceiver(url, connect_timeout=args.connect_timeout)
    async with receiver, anyio.create_task_group() as tg:
        tg.start_soon(_count, receiver, state, stats, caught_up)
        async with anyio.create_task_group() as sim:
            with ctx.interruptible():
                await sim.start(
                    partial(
                        simulate,
                        url,
                        workers=args.workers,
                        rate=args.rate,
                        stop=stop,
                        stats=stats,
                        seed=args.seed,
                        name=args.name,
                    )
                )
                with anyio.move_on_after(duration):
                    if ui:
                        from ._top import live_view
                        from ._topview import TopView

                        title = f"aiocelev demo · {args.workers} workers · {mask_url(url)}"
                        await live_view(TopView(state), ctx, title=title)
                    else:
                        until = f"for {duration:g}s" if duration is not None else "until Ctrl-C"
                        diag(f"running {args.workers} simulated workers on {mask_url(url)} {until}")
                        await anyio.sleep_forever()
            stop.set()
        stats.ended = time.monotonic()
        # Wait (briefly) until the receiver has seen everything the workers sent.
        caught_up()
        with anyio.move_on_after(3.0):
            await done.wait()
        tg.cancel_scope.cancel()
    stats.malformed = sum(receiver.statistics().malformed.values())
    sys.stdout.write(_summary(stats, state, url))
    sys.stdout.flush()
    return EXIT_OK
