"""What the framework integrations cost per task: ``python -m benchmarks.integrations [--n N]``.

For each framework, a no-op task is run *n* times with and without the
integration, in one process, and the median of several rounds is kept:

* taskiq: the whole worker path of taskiq's ``InMemoryBroker`` with
  ``await_inplace=True`` (message parsing, middlewares, the task, the result
  backend), kicked *n* times in a row;
* arq: the job function as arq's worker calls it, plain and wrapped by
  :meth:`CeleryEvents.wrap <aiocelev.integrations.arq.CeleryEvents.wrap>`;
* SAQ: ``before_process`` + the job + ``after_process``, as SAQ's worker calls
  them, with no hooks and with :class:`aiocelev.integrations.saq.CeleryEvents`.

Events go to the in-memory broker (``memory://``): the numbers are the
integration's own CPU cost per task (building, stamping, batching and handing
over four events), not a broker's network time.  ``--receive`` also decodes
every event in the same process, as a monitor would elsewhere.  The overhead is ``(t_with - t_without) / n`` in microseconds and the
relative throughput is ``t_without / t_with`` (1.0 = no cost).  Without any
framework in the real worker (Redis round trips, polling) the share of this
cost is smaller still.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiocelev import EventReceiver

URL = "memory://aiocelev-bench-integrations"


async def _drain(receiver: EventReceiver) -> None:
    async for _ in receiver:
        pass


async def _timed(run: Callable[[int], Awaitable[None]], n: int) -> float:
    start = time.perf_counter()
    await run(n)
    return time.perf_counter() - start


async def bench_taskiq(n: int) -> tuple[float, float]:
    from taskiq import InMemoryBroker

    from aiocelev.integrations.taskiq import CeleryEventsMiddleware

    async def measure(with_events: bool) -> float:
        broker = InMemoryBroker(await_inplace=True)
        if with_events:
            broker = broker.with_middlewares(CeleryEventsMiddleware(URL, hostname="bench-tq@b"))
            broker.is_worker_process = True

        @broker.task(task_name="bench.noop")
        async def noop() -> None:
            return None

        await broker.startup()
        try:

            async def run(count: int) -> None:
                for i in range(count):
                    await noop.kiq()
                    if i % 100 == 99:
                        await asyncio.sleep(0)  # a worker yields: the publisher drains

            await run(min(n, 200))  # warm-up
            return await _timed(run, n)
        finally:
            await broker.shutdown()

    return await measure(False), await measure(True)


async def bench_arq(n: int) -> tuple[float, float]:
    from aiocelev.integrations.arq import CeleryEvents

    async def noop(ctx: dict[str, Any]) -> None:
        return None

    events = CeleryEvents(URL, hostname="bench-arq@b")
    wrapped = events.wrap(noop, "noop")

    async def measure(function: Callable[..., Awaitable[Any]]) -> float:
        async def run(count: int) -> None:
            for i in range(count):
                ctx = {"job_id": f"job-{i}", "job_try": 1, "redis": None}
                await function(ctx)
                if i % 100 == 99:
                    await asyncio.sleep(0)

        await run(min(n, 200))
        return await _timed(run, n)

    plain = await measure(noop)
    await events.on_startup({})
    try:
        with_events = await measure(wrapped)
    finally:
        await events.on_shutdown({})
    return plain, with_events


async def bench_saq(n: int) -> tuple[float, float]:
    from saq import Queue
    from saq.job import Job, Status

    from aiocelev.integrations.saq import CeleryEvents

    queue = Queue.from_url("redis://127.0.0.1:6379/0", name="bench")  # never connected

    async def noop(ctx: Any) -> None:
        return None

    events = CeleryEvents(URL, hostname="bench-saq@b")

    async def measure(hooks: bool) -> float:
        async def run(count: int) -> None:
            for i in range(count):
                job = Job(function="noop", queue=queue, key=f"job-{i}", attempts=1)
                ctx: dict[str, Any] = {"job": job}
                if hooks:
                    await events.before_process(ctx)
                job.result = await noop(ctx)
                job.status = Status.COMPLETE
                if hooks:
                    await events.after_process(ctx)
                if i % 100 == 99:
                    await asyncio.sleep(0)

        await run(min(n, 200))
        return await _timed(run, n)

    plain = await measure(False)
    await events.startup({})
    try:
        with_events = await measure(True)
    finally:
        await events.shutdown({})
    return plain, with_events


BENCHES: dict[str, Callable[[int], Awaitable[tuple[float, float]]]] = {
    "taskiq": bench_taskiq,
    "arq": bench_arq,
    "saq": bench_saq,
}


async def run_all(
    n: int, rounds: int, only: list[str], receive: bool = False
) -> dict[str, dict[str, float]]:
    report: dict[str, dict[str, float]] = {}
    async with EventReceiver(URL) as receiver:
        drain = asyncio.ensure_future(_drain(receiver)) if receive else None
        try:
            for name in only:
                pairs = [await BENCHES[name](n) for _ in range(rounds)]
                without = statistics.median(p[0] for p in pairs)
                with_ = statistics.median(p[1] for p in pairs)
                report[name] = {
                    "n": n,
                    "without_us": without / n * 1e6,
                    "with_us": with_ / n * 1e6,
                    "overhead_us": (with_ - without) / n * 1e6,
                    "relative_throughput": without / with_,
                }
        finally:
            if drain is not None:
                drain.cancel()
                try:
                    await drain
                except asyncio.CancelledError:
                    pass
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "frameworks", nargs="*", help=f"some of {', '.join(BENCHES)} (default: all)"
    )
    parser.add_argument("--n", type=int, default=20_000, help="tasks per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="measurements (the median is kept)")
    parser.add_argument(
        "--receive", action="store_true", help="also decode every event in this process"
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    unknown = set(args.frameworks) - set(BENCHES)
    if unknown:
        parser.error(f"unknown framework(s): {', '.join(sorted(unknown))}")
    report = asyncio.run(
        run_all(args.n, args.rounds, args.frameworks or list(BENCHES), args.receive)
    )
    print(
        f"{'framework':<10}{'without µs':>12}{'with µs':>10}{'overhead µs':>13}{'throughput':>12}"
    )
    for name, row in report.items():
        print(
            f"{name:<10}{row['without_us']:>12.1f}{row['with_us']:>10.1f}"
            f"{row['overhead_us']:>13.1f}{row['relative_throughput']:>12.2f}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)


if __name__ == "__main__":
    main()
