"""Receiver harnesses: subscribe, start the publisher process, consume, count.

Both harnesses follow the same script so that only the implementation differs:

1. subscribe (the subscription is live);
2. start :mod:`benchmarks._stream` as a separate process;
3. when the first probe event arrives, create the "go" file (the publisher
   then starts the real stream); the clock runs from the moment the
   publisher reports it started the stream (it polls for the file), CPU time
   from the "go".  With ``backlog`` (the throughput cases) the receiver
   instead stops right there, without reading, until the publisher has sent
   the whole stream and the broker has had a moment to route it: both
   clocks then start and the window is the receiver draining the backlog;
4. hand every task event to ``handle``; stop after ``n`` events, or when the
   publisher has sent everything and nothing arrived for ``idle`` seconds;
5. stop the clocks, then release the publisher (the ``hold`` file): until
   then it idles instead of tearing down, so that its exit does not take CPU
   from a receiver still measuring (see ``_stream._hold``).
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from collections.abc import Callable
from typing import Any

from ._common import PROBE_TYPE, URLS, broker_options as base_options, spawn, wait_side

Handler = Callable[[Any], Any]


def _usage() -> tuple[int, int, int]:
    """This process's voluntary and involuntary context switches, and minor page faults, so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw, usage.ru_nivcsw, usage.ru_minflt


def _published(proc: Any, hold: str) -> bool:
    """Whether the publisher has sent its whole stream (it then idles until released)."""
    return proc.poll() is not None or os.path.exists(hold + ".sent")


def _release(hold: str) -> None:
    """Let the publisher finish: the receiver's clocks are stopped (see ``_stream._hold``)."""
    open(hold, "w").close()


#: ``backlog``: how long the broker is given, once the publisher has sent
#: everything, to route the last messages before the clocks start.
BACKLOG_SETTLE = 0.1


class _Run:
    """Counters shared by a harness and its handler."""

    def __init__(self, n: int) -> None:
        self.n = n
        #: With ``backlog``: the publisher's "everything sent" file to wait for.
        self.backlog: str | None = None
        self.backlog_wait: float | None = None
        self.count = 0
        self.t_go: float | None = None
        self.t_last: float | None = None
        self.t_first: float | None = None
        self.cpu_go = 0.0
        self.cpu_last = 0.0
        self.counted = 0
        self.usage_go = (0, 0, 0)
        self.usage_last = (0, 0, 0)

    def go(self, path: str) -> None:
        """A probe arrived: on the first, create the "go" file *path* and start the clocks."""
        if self.t_go is None:
            open(path, "w").close()
            if self.backlog is not None:
                self._wait_backlog(self.backlog)
            self.t_go = time.perf_counter()
            self.cpu_go = time.process_time()
            self.usage_go = _usage()

    def _wait_backlog(self, sent: str, limit: float = 60.0) -> None:
        """Block (reading nothing) until the publisher has sent the whole stream.

        Both harnesses call this from their event handler, so neither
        receiver reads while it waits (asyncio's loop and kombu's
        ``drain_events`` alike are blocked): the stream piles up in the broker
        and the sockets, and the window that follows holds only the receiver
        and the broker, not the publisher's burst (three busy processes on a
        small machine's cores).
        """
        began = time.perf_counter()
        deadline = began + limit
        while not os.path.exists(sent):
            if time.perf_counter() > deadline:
                raise RuntimeError("the publisher never reported the stream sent")
            time.sleep(0.002)
        time.sleep(BACKLOG_SETTLE)
        self.backlog_wait = time.perf_counter() - began

    def progress(self, count: int) -> bool:
        """Store *count* with the time of the latest event; whether it reached ``n``.

        The consuming loops keep their count in a local and call this every
        64 events and at the last.
        """
        self.count = count
        self.mark()
        return count >= self.n

    def stop(self) -> None:
        """Stop the CPU clock (the consuming loop has ended)."""
        self.cpu_last = time.process_time()
        self.usage_last = _usage()

    def mark(self) -> None:
        """Note the time of the latest event (CPU time is read once, at the end)."""
        self.t_last = time.perf_counter()
        if self.t_first is None:
            self.t_first = self.t_last
        self.counted = self.count

    def result(self, publisher: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        # The clock runs from the moment the publisher starts the stream: between
        # the "go" file and that moment it notices the file (it polls every
        # 20 ms) and sets up its channel, which neither receiver can shorten.
        # perf_counter is the system-wide monotonic clock on Linux; a start
        # outside [go, last] (another clock) leaves the "go" time.
        t_go = self.t_go or 0.0
        start = publisher.get("start")
        start_delay = None
        if isinstance(start, float) and self.t_last is not None and t_go <= start <= self.t_last:
            start_delay = start - t_go
            t_go = start
        elapsed = (self.t_last or 0.0) - t_go
        out: dict[str, Any] = {
            "received": self.count,
            "published": publisher.get("sent"),
            "publish_rate": publisher.get("rate"),
            "elapsed": elapsed,
            "rate": self.counted / elapsed if self.counted and elapsed > 0 else 0.0,
            "start_delay": start_delay,
            "backlog_wait": self.backlog_wait,
            # from the start of the stream to the first events handled (at most 64)
            "first_delay": self.t_first - t_go if self.t_first is not None else None,
            "cpu": self.cpu_last - self.cpu_go,
            # Context switches between "go" and the end: voluntary ones are
            # waits (for the socket...), involuntary ones preemptions (the
            # publisher and the broker share the machine's cores).
            "voluntary_switches": self.usage_last[0] - self.usage_go[0],
            "involuntary_switches": self.usage_last[1] - self.usage_go[1],
            # Minor page faults in the window: memory the process touches for
            # the first time (or again, after the allocator gave it back).
            "page_faults": self.usage_last[2] - self.usage_go[2],
            "cpu_rate": self.counted / (self.cpu_last - self.cpu_go)
            if self.counted and self.cpu_last > self.cpu_go
            else 0.0,
        }
        if "error" in publisher:
            out["publisher_error"] = publisher["error"] + " " + publisher.get("stderr", "")
        out.update(extra)
        return out


def run_aiocelev(
    spec: dict[str, Any],
    stream: dict[str, Any],
    handle: Handler,
    *,
    receiver_options: dict[str, Any] | None = None,
    broker_options: dict[str, Any] | None = None,
    idle: float = 3.0,
    stats: Callable[[Any], dict[str, Any]] | None = None,
    hard_stop: bool = False,
    batches: bool = False,
    dicts: bool = False,
    backlog: bool = False,
) -> dict[str, Any]:
    """Receive with :class:`aiocelev.EventReceiver`; ``handle(event)`` may be sync or async.

    With *batches*, consume ``receiver.batches(dicts=dicts)`` and call
    ``handle(list)`` (synchronous) with the task events of each list.

    With *hard_stop*, stop *idle* seconds after the publisher exits even if
    events are still arriving (the overload case).

    With *backlog*, measure the drain of the whole stream (see the module doc).
    """
    import inspect

    import anyio

    from aiocelev import EventReceiver

    run = _Run(spec["n"])
    is_async = inspect.iscoroutinefunction(handle)

    async def main() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            go = os.path.join(tmp, "go")
            async with EventReceiver(
                URLS[spec["broker"]],
                broker_options=base_options(spec["broker"], **(broker_options or {})),
                **(receiver_options or {}),
            ) as receiver:
                hold = os.path.join(tmp, "hold")
                if backlog:
                    run.backlog = hold + ".sent"
                proc = spawn("_stream", dict(stream, go=go, hold=hold, broker=spec["broker"]))
                try:
                    async with anyio.create_task_group() as tg:

                        async def watchdog() -> None:
                            exited: float | None = None
                            while True:
                                await anyio.sleep(0.1)
                                now = time.perf_counter()
                                if exited is None and _published(proc, hold):
                                    exited = now
                                last = run.t_last or run.t_go or now
                                if hard_stop and exited is not None:
                                    last = exited
                                if exited is not None and now - last > idle:
                                    tg.cancel_scope.cancel()
                                    return

                        tg.start_soon(watchdog)
                        if batches:
                            await _consume_batches(receiver, run, handle, go, dicts)
                        else:
                            await _consume_events(receiver, run, handle, is_async, go)
                        tg.cancel_scope.cancel()
                    run.stop()
                    extra = stats(receiver) if stats else {}
                finally:
                    _release(hold)
                    publisher = await anyio.to_thread.run_sync(wait_side, proc, 60.0)
        return run.result(publisher, extra)

    return anyio.run(main)


async def _consume_events(
    receiver: Any, run: _Run, handle: Handler, is_async: bool, go: str
) -> None:
    """The per-event consuming loop: probes filtered out, ``handle(event)`` per event.

    Every probe comes before the first event of the stream (the publisher
    stops probing once it starts the stream, on the same connection), so the
    type is read only until then, on both sides alike: reading it is the
    harness's work, not the receiver's.

    The count is kept in a local and stored in *run* every 64 events (with
    the time, for the watchdog) and at the end: the harness's own work per
    event stays small beside the receiver's (Celery's loop does the same).
    """
    count = run.count
    n = run.n
    streaming = False
    try:
        async for event in receiver:
            if not streaming:
                if event.type == PROBE_TYPE:
                    run.go(go)
                    continue
                streaming = True
            if is_async:
                await handle(event)
            else:
                handle(event)
            count += 1
            if (count >= n or not count & 63) and run.progress(count):
                break
    finally:
        run.count = count


async def _consume_batches(
    receiver: Any, run: _Run, handle: Handler, go: str, dicts: bool = False
) -> None:
    """The batch form of the consuming loop: probes filtered out, ``handle(list)`` per list.

    As in :func:`_consume_events`, lists are filtered only until the stream starts.
    """
    streaming = False
    async for batch in receiver.batches(dicts=dicts):
        events = batch
        if not streaming:
            events = [e for e in batch if e["type"] != PROBE_TYPE]
            if len(events) < len(batch):
                run.go(go)
            if not events:
                continue
            streaming = True
        room = run.n - run.count
        if len(events) > room:
            events = events[:room]
        handle(events)
        run.count += len(events)
        run.mark()
        if run.count >= run.n:
            break


def run_celery(
    spec: dict[str, Any],
    stream: dict[str, Any],
    handle: Handler,
    *,
    queue_ttl: float | None = None,
    idle: float = 3.0,
    backlog: bool = False,
) -> dict[str, Any]:
    """Receive with Celery's ``EventReceiver`` (``capture`` with a ``"*"`` handler).

    *backlog* as for :func:`run_aiocelev`.
    """
    from ._common import celery_app

    run = _Run(spec["n"])
    app = celery_app(URLS[spec["broker"]])
    with tempfile.TemporaryDirectory() as tmp:
        go = os.path.join(tmp, "go")
        hold = os.path.join(tmp, "hold")
        if backlog:
            run.backlog = hold + ".sent"
        procs: list[Any] = []
        receiver: Any = None

        count = 0
        n = run.n
        streaming = False

        def on_event(event: dict[str, Any]) -> None:
            # As _consume_events: the count in a (closure) local, stored every
            # 64 events; the type read only until the stream starts.
            nonlocal count, streaming
            if not streaming:
                if event["type"] == PROBE_TYPE:
                    run.go(go)
                    return
                streaming = True
            handle(event)
            count += 1
            if (count >= n or not count & 63) and run.progress(count):
                receiver.should_stop = True

        def on_ready(*_args: Any, **_kwargs: Any) -> None:
            if not procs:
                procs.append(
                    spawn("_stream", dict(stream, go=go, hold=hold, broker=spec["broker"]))
                )

        try:
            with app.connection_for_read() as conn:
                receiver = app.events.Receiver(conn, handlers={"*": on_event}, queue_ttl=queue_ttl)
                receiver.on_consume_ready = on_ready
                try:
                    receiver.capture(limit=None, timeout=idle, wakeup=False)
                except TimeoutError:
                    pass
                run.count = count
                run.stop()
        finally:
            _release(hold)
        publisher = wait_side(procs[0], 60.0) if procs else {"error": "never subscribed"}
    return run.result(publisher, {})
