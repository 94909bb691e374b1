"""A plain asyncio.Queue worker pool, visible in Flower and ``celery events``.

Nothing here is Celery: a producer puts jobs on an ``asyncio.Queue`` and a few
consumer coroutines run them.  Wrapping the pool in ``worker_events`` and each
job in ``worker.task(...)`` is all it takes for monitors to show a live worker
node and every job's state::

    python examples/asyncio_queue_worker.py --broker amqp://guest:guest@localhost:5672//
    celery --broker=amqp://guest:guest@localhost:5672// flower      # http://localhost:5555
    celery --broker=amqp://guest:guest@localhost:5672// events      # curses monitor
    celery --broker=amqp://guest:guest@localhost:5672// inspect ping

Jobs end in every state a monitor knows: most succeed, some fail, some hit a
transient error and are retried (put back on the queue), some exceed their
time limit (cancelled: revoked), and some expire while queued (revoked
without running).  Stop with Ctrl+C or SIGTERM (what docker, systemd and
Kubernetes send): the node says ``worker-offline`` and exits cleanly; or give
``--duration``.  Remote control works too::

    aiocelev inspect active --broker amqp://guest:guest@localhost:5672//
    aiocelev control revoke <job id> --terminate --broker amqp://guest:guest@localhost:5672//
    aiocelev control shutdown --broker amqp://guest:guest@localhost:5672//
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio

from aiocelev import EventDispatcher, WorkerInstrument, worker_events


@dataclass
class Job:
    """A unit of work on the queue."""

    name: str
    args: tuple[Any, ...]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    retries: int = 0
    expires_at: float | None = None  # time.time() after which it must not run


class TransientError(Exception):
    """A failure worth retrying."""


async def run_job(job: Job) -> Any:
    """The "business logic": what each job name does."""
    await anyio.sleep(random.uniform(0.05, 0.5))
    if job.name == "demo.add":
        return sum(job.args)
    if job.name == "demo.fail":
        raise ValueError(f"cannot handle {job.args!r}")
    if job.name == "demo.flaky":
        if job.retries < 2 and random.random() < 0.7:
            raise TransientError("upstream busy")
        return {"ok": True, "attempts": job.retries + 1}
    if job.name == "demo.slow":
        await anyio.sleep(60)  # longer than the time limit
    return None


async def consumer(queue: asyncio.Queue[Job], worker: WorkerInstrument, time_limit: float) -> None:
    """Take jobs off the queue forever and run each inside a task scope."""
    while True:
        job = await queue.get()
        try:
            if job.expires_at is not None and time.time() > job.expires_at:
                await worker.revoked(job.id, expired=True)
                continue
            if worker.is_revoked(job.id):  # revoked by remote control while queued
                await worker.revoked(job.id)
                continue
            async with worker.task(job.id, job.name, args=job.args, retries=job.retries) as task:
                try:
                    with anyio.fail_after(time_limit):
                        task.set_result(await run_job(job))
                except TransientError as exc:
                    job.retries += 1
                    queue.put_nowait(job)  # same id, retried later
                    raise task.retry(exc) from exc
        except TimeoutError:
            pass  # reported as task-revoked (terminated): the scope saw the cancellation
        except Exception:
            logging.getLogger("example").debug("job %s failed", job.id, exc_info=True)
        finally:
            queue.task_done()


async def producer(queue: asyncio.Queue[Job], rate: float) -> None:
    """Put a random mix of jobs on the queue, *rate* per second."""
    names = ["demo.add"] * 6 + ["demo.fail", "demo.flaky", "demo.flaky", "demo.slow"]
    while True:
        name = random.choice(names)
        job = Job(name, (random.randint(0, 99), random.randint(0, 99)))
        if random.random() < 0.05:
            job.expires_at = time.time()  # already expired when a consumer gets it
        await queue.put(job)
        await anyio.sleep(1 / rate)


async def stop_on_signals(worker: WorkerInstrument) -> None:
    """SIGTERM or SIGINT: leave the worker block, so that ``worker-offline`` is sent."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            print(f"{worker.hostname}: got {signal.Signals(signum).name}, shutting down")
            worker.request_shutdown()
            return


async def main(args: argparse.Namespace) -> None:
    queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=100)
    async with EventDispatcher(args.broker, hostname=args.name) as dispatcher:
        async with worker_events(dispatcher, freq=args.freq) as worker:
            print(f"{worker.hostname}: {args.concurrency} consumers on {dispatcher.broker.url}")
            with anyio.move_on_after(args.duration or None):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(stop_on_signals, worker)
                    tg.start_soon(producer, queue, args.rate)
                    for _ in range(args.concurrency):
                        tg.start_soon(consumer, queue, worker, args.time_limit)
        # Here after --duration, a signal or `aiocelev control shutdown`.
        print(f"{worker.hostname}: stopped after {worker.processed} tasks")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--broker", default="amqp://guest:guest@localhost:5672//", help="broker URL"
    )
    parser.add_argument("--name", default=f"asyncw@{socket.gethostname()}", help="node name")
    parser.add_argument("--concurrency", type=int, default=4, help="consumer coroutines")
    parser.add_argument("--rate", type=float, default=5.0, help="jobs per second")
    parser.add_argument("--freq", type=float, default=2.0, help="heartbeat interval (s)")
    parser.add_argument("--time-limit", type=float, default=2.0, help="per-job time limit (s)")
    parser.add_argument("--duration", type=float, default=0, help="stop after N seconds (0: never)")
    return parser.parse_args()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(main(parse_args()))
