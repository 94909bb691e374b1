"""The ``dashboard`` case: ``aiocelev dashboard`` vs a real Flower 2.2 process.

``spec["impl"]`` is ``aiocelev`` (``python -m aiocelev dashboard --broker URL
--port P --max-tasks M --read-only``) or ``flower`` (``celery --broker URL
--config benchmarks._flower_config flower --port P --max_tasks M
--enable_events=False``).  This child starts that server, waits until its
event subscription is live, publishes one generated worker-like stream and
measures (the ingest stream is encoded beforehand by four
:class:`~aiocelev.EventDispatcher` objects, one per worker, and the recorded
messages are replayed byte for byte, so that the publisher's own CPU does not
set the pace; the latency phases publish through ``send()`` as a worker does):

* ``rate``: task events per second ingested, from the server's own
  ``/metrics`` (sum of ``flower_events_total`` over the ``task-*`` types,
  polled every 0.1 s) from the start of the stream until it reaches the
  number published (or stops moving for ``stall`` seconds);
* ``cpu_rate``: the same events per CPU-second of the server process
  (``/proc/PID/stat`` user + system time over the same span);
* ``server_peak_rss_mib`` (``VmHWM``) and ``server_rss_mib`` (``VmRSS``) of the
  server once the whole stream is in, and ``server_base_rss_mib`` before it;
* dashboard only: publish -> browser delay (``p50_ms_R`` / ``p99_ms_R``) at
  each paced rate R of ``spec["latency_rates"]``.  An SSE client on
  ``/events/stream`` records each ``update`` frame's arrival time and the
  feed's event count in it; an event's delay is the arrival of the first
  frame that counts it minus the moment it was handed to ``send()``.
  Flower pushes nothing (its pages poll), so it has no such number.

The stream: four workers (``celery@worker1..4``), each task
``task-received`` / ``task-started`` / ``task-succeeded`` with a worker's
fields, interleaved as a busy worker sends them (receive *i*, start *i-2*,
succeed *i-4*), ``worker-online`` first and a ``worker-heartbeat`` per worker
every 1,000 tasks.  While it publishes, the publisher stays at most
``window`` task events ahead of what the server has ingested: Redis pub/sub
keeps a slow subscriber's backlog in the server's output buffer and
disconnects it beyond 32 MiB (8 MiB for 60 s), which would lose events and
turn the measurement into a measurement of that limit.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from ._common import EXCHANGE, URLS, WORKERS, _child_env, summarize, task_id

#: The hostname of the liveness probe (a worker heartbeat, seen in ``flower_worker_online``).
PROBE_HOST = "celery@benchprobe"

_TICKS = os.sysconf("SC_CLK_TCK")

_RECEIVED = {
    "name": "proj.tasks.process_order",
    "args": "(4242, 'priority')",
    "kwargs": "{'retry': True, 'source': 'api'}",
    "parent_id": None,
    "retries": 0,
    "eta": None,
    "expires": None,
}

_WORKER_INFO = {
    "freq": 2.0,
    "sw_ident": "py-celery",
    "sw_ver": "5.7.0",
    "sw_sys": "Linux",
    "loadavg": [0.5, 0.4, 0.3],
}


# -- the stream ---------------------------------------------------------------


def stream(tasks: int, start: int = 0) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """``(worker index, event type, fields)`` of *tasks* tasks, as busy workers send them."""
    lag_started, lag_succeeded = 2, 4
    nworkers = len(WORKERS)
    processed = [0] * nworkers
    for step in range(tasks + lag_succeeded):
        i = step
        if i < tasks:
            n = start + i
            uuid = task_id(n)
            yield n % nworkers, "task-received", dict(_RECEIVED, uuid=uuid, root_id=uuid)
        i = step - lag_started
        if 0 <= i < tasks:
            n = start + i
            yield n % nworkers, "task-started", {"uuid": task_id(n)}
        i = step - lag_succeeded
        if 0 <= i < tasks:
            n = start + i
            w = n % nworkers
            yield (
                w,
                "task-succeeded",
                {
                    "uuid": task_id(n),
                    "result": f"{{'status': 'ok', 'rows': {n % 1000}}}",
                    "runtime": 0.0123 + (n % 97) * 1e-4,
                },
            )
            processed[w] += 1
            if processed[w] % 1000 == 0:
                yield (
                    w,
                    "worker-heartbeat",
                    dict(_WORKER_INFO, active=2, processed=processed[w]),
                )


# -- the server process -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_query(url: str, **params: Any) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(f"{k}={v}" for k, v in params.items())


def start_server(spec: dict[str, Any], port: int, workdir: str) -> subprocess.Popen[bytes]:
    """Start the dashboard or Flower on 127.0.0.1:*port* (output to files in *workdir*)."""
    broker = spec["broker"]
    url = URLS[broker]
    max_tasks = spec["max_tasks"]
    if spec["impl"] == "aiocelev":
        options: dict[str, Any] = {"exchange": EXCHANGE}
        if broker == "amqp":
            options["message_ttl"] = 120
        cmd = [
            sys.executable,
            "-m",
            "aiocelev",
            "dashboard",
            "--broker",
            _with_query(url, **options),
            "--address",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-tasks",
            str(max_tasks),
            "--read-only",
        ]
    else:
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "--broker",
            url,
            "--config",
            "benchmarks._flower_config",
            "flower",
            "--address=127.0.0.1",
            f"--port={port}",
            f"--max_tasks={max_tasks}",
            # No periodic enable_events broadcast to whatever workers share the broker.
            "--enable_events=False",
            "--inspect_timeout=200",
            "--logging=warning",
        ]
    out = open(os.path.join(workdir, "server.log"), "wb")  # noqa: SIM115 - closed by the caller
    return subprocess.Popen(
        cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=_child_env()
    )


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of *pid*."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def proc_mem(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` (peak) of *pid*, in MiB."""
    found: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) / 1024.0
    return found


def parse_metrics(text: str) -> tuple[float, bool]:
    """The sum of ``flower_events_total`` over task events; whether the probe worker shows."""
    total = 0.0
    probe = False
    for line in text.splitlines():
        if line.startswith("flower_events_total{"):
            labels, _, value = line.rpartition(" ")
            if 'type="task-' in labels:
                total += float(value)
        elif line.startswith("flower_worker_online{") and PROBE_HOST in line:
            probe = True
    return total, probe


# -- profiling the server --------------------------------------------------------

#: ``DIR``: sample the server with py-spy during the ingest phase, collapsed stacks
#: into ``DIR/<impl>-<broker>-<pid>.txt`` (``python -m benchmarks.dashboard FILE`` sums them).
PROFILE_ENV = "AIOCELEV_BENCH_SERVER_PROFILE"


def _start_py_spy(spec: dict[str, Any], pid: int) -> subprocess.Popen[bytes] | None:
    where = os.environ.get(PROFILE_ENV)
    if not where:
        return None
    exe = os.environ.get("AIOCELEV_BENCH_PY_SPY") or shutil.which("py-spy")
    if exe is None:
        raise RuntimeError(f"{PROFILE_ENV} is set but py-spy is not installed")
    out = os.path.join(where, f"{spec['impl']}-{spec['broker']}-{pid}.txt")
    spy = subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "250", "--output", out],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # attached
    return spy


def summarize_profile(path: str, top: int = 25) -> str:
    """Own and cumulative shares of the functions in a py-spy raw (collapsed) profile."""
    own: dict[str, int] = {}
    cum: dict[str, int] = {}
    total = 0
    with open(path) as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            # "function (path/file.py:line)" -> "function file.py" (lines merged)
            frames = [
                f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")").rsplit(":", 1)[0]
                for f in stack.split(";")
            ]
            # idle: the event loop blocked in select
            if "select " in frames[-1] or "poll " in frames[-1]:
                continue
            total += n
            own[frames[-1]] = own.get(frames[-1], 0) + n
            for f in set(frames):
                cum[f] = cum.get(f, 0) + n
    lines = [f"{total} busy samples", f"{'own %':>6} {'cum %':>6}  function"]
    for name, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * n / total:6.1f} {100 * cum[name] / total:6.1f}  {name}")
    lines.append("")
    lines.append(f"{'cum %':>6}  function (by cumulative)")
    for name, n in sorted(cum.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * n / total:6.1f}  {name}")
    return "\n".join(lines)


# -- the measurement ----------------------------------------------------------------


class _Recorder:
    """A broker that keeps what is published: the ingest stream is encoded before the clock
    starts, then replayed byte for byte.  Publishing through ``EventDispatcher.send`` costs
    the publisher more CPU per event than a fast server spends ingesting it, so on a 2-core
    machine the publisher, not the server, would set the pace."""

    url = "memory://recorder"

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def connect(self) -> None:
        return None

    async def publish(self, messages: Any) -> None:
        self.messages.extend(messages)

    async def subscribe(self, binding_keys: Any) -> Any:
        raise NotImplementedError

    def control(self) -> Any:
        from aiocelev import NotSupportedError

        raise NotSupportedError("no remote control on the recorder")

    async def aclose(self) -> None:
        return None


async def _encode_stream(tasks: int) -> list[tuple[Any, int]]:
    """The ingest stream as the four workers' dispatchers encode it: ``(message, task events)``."""
    import json

    from aiocelev import EventDispatcher

    recorder = _Recorder()
    async with AsyncExitStack() as stack:
        dispatchers = [
            await stack.enter_async_context(EventDispatcher(recorder, hostname=h))  # type: ignore[arg-type]
            for h in WORKERS
        ]
        for w, kind, fields in stream(tasks):
            await dispatchers[w].send(kind, **fields)
    out = []
    for message in recorder.messages:
        body = json.loads(message.body)
        events = body if isinstance(body, list) else [body]
        out.append((message, sum(1 for e in events if e["type"].startswith("task-"))))
    return out


async def _measure(
    spec: dict[str, Any], proc: subprocess.Popen[bytes], port: int
) -> dict[str, Any]:
    import anyio
    import httpx

    from aiocelev import EventDispatcher, open_broker

    base = f"http://127.0.0.1:{port}"
    tasks = spec["tasks"]
    window = spec.get("window", 15_000)
    stall = spec.get("stall", 10.0)
    broker = open_broker(URLS[spec["broker"]], exchange=EXCHANGE)
    await broker.connect()
    result: dict[str, Any] = {"impl": spec["impl"], "tasks": tasks}
    try:
        async with AsyncExitStack() as stack:
            dispatchers = [
                await stack.enter_async_context(EventDispatcher(broker, hostname=h))
                for h in WORKERS
            ]
            probe = await stack.enter_async_context(EventDispatcher(broker, hostname=PROBE_HOST))
            client = await stack.enter_async_context(httpx.AsyncClient(base_url=base, timeout=30.0))

            async def scrape() -> tuple[float, bool]:
                response = await client.get("/metrics")
                response.raise_for_status()
                return parse_metrics(response.text)

            # Up, and subscribed: a probe heartbeat shows in its metrics.
            deadline = time.monotonic() + 60.0
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError("server never showed the probe worker")
                try:
                    await probe.send("worker-heartbeat", **_WORKER_INFO, active=0, processed=0)
                    await probe.flush()
                    seen, live = await scrape()
                    if live:
                        break
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.2)
            for d in dispatchers:
                await d.send("worker-online", **_WORKER_INFO)
                await d.flush()
            await anyio.sleep(0.5)
            seen, _ = await scrape()
            start_count = seen
            result["server_base_rss_mib"] = round(proc_mem(proc.pid)["VmRSS"], 1)

            # Ingest: publish flat out (within the window), poll /metrics.
            encoded = await _encode_stream(tasks)
            target = 3 * tasks
            ingested = 0.0
            done = anyio.Event()
            progress: list[tuple[float, float]] = []

            async def poll() -> None:
                nonlocal ingested
                last_change = time.monotonic()
                while True:
                    count, _ = await scrape()
                    now = time.monotonic()
                    if count - start_count != ingested:
                        ingested = count - start_count
                        last_change = now
                        progress.append((now, ingested))
                    if ingested >= target or now - last_change > stall:
                        done.set()
                        return
                    await anyio.sleep(0.1)

            spy = _start_py_spy(spec, proc.pid)
            cpu0 = proc_cpu(proc.pid)
            t0 = time.monotonic()
            published = 0
            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                chunk = 20
                for i in range(0, len(encoded), chunk):
                    part = encoded[i : i + chunk]
                    await broker.publish([message for message, _ in part])
                    published += sum(n for _, n in part)
                    while published - ingested > window and not done.is_set():
                        await anyio.sleep(0.02)
                publish_s = time.monotonic() - t0
                await done.wait()
            end_t = progress[-1][0] if progress else time.monotonic()
            cpu1 = proc_cpu(proc.pid)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            elapsed = end_t - t0
            mem = proc_mem(proc.pid)
            result.update(
                published=published,
                ingested=int(ingested),
                complete=ingested >= target,
                elapsed=round(elapsed, 3),
                rate=ingested / elapsed if elapsed > 0 else None,
                cpu_s=round(cpu1 - cpu0, 3),
                cpu_rate=ingested / (cpu1 - cpu0) if cpu1 > cpu0 else None,
                publish_rate=round(published / publish_s),
                server_rss_mib=round(mem["VmRSS"], 1),
                server_peak_rss_mib=round(mem["VmHWM"], 1),
            )

            if spec["impl"] == "aiocelev":
                first = tasks
                for rate in spec.get("latency_rates", ()):
                    seconds = spec.get("latency_seconds", 5.0)
                    lat = await _latency(client, dispatchers, rate, seconds, first)
                    first += int(rate * seconds / 3) + 1
                    for key, value in lat.items():
                        result[f"{key}_{rate}"] = value
                result["server_end_peak_rss_mib"] = round(proc_mem(proc.pid)["VmHWM"], 1)
    finally:
        await broker.aclose()
    return result


async def _latency(
    client: Any, dispatchers: list[Any], rate: float, seconds: float, first: int
) -> dict[str, Any]:
    """Publish at *rate* events/s for *seconds*; delays to the dashboard's SSE clients."""
    import json

    import anyio

    frames: list[tuple[float, int]] = []
    opened = anyio.Event()

    async def listen() -> None:
        async with client.stream("GET", "/events/stream", timeout=None) as response:
            data = None
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    data = line[6:]
                elif line == "" and data is not None:
                    payload = json.loads(data)
                    frames.append((time.time(), sum(b["events"] for b in payload["brokers"])))
                    data = None
                    opened.set()

    n_tasks = int(rate * seconds / 3) + 1
    events = list(stream(n_tasks, start=first))
    sent_at: list[float] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(listen)
        await opened.wait()  # the first frame: the current count
        await anyio.sleep(0.6)
        base_count = frames[-1][1]
        start = time.perf_counter()
        total = len(events)
        i = 0
        while i < total:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            while i < due:
                w, kind, fields = events[i]
                sent_at.append(time.time())
                await dispatchers[w].send(kind, **fields)
                i += 1
            delay = start + i / rate - time.perf_counter()
            await anyio.sleep(max(delay, 0.0))
        for d in dispatchers:
            await d.flush()
        achieved = total / (time.perf_counter() - start)
        deadline = time.monotonic() + 10.0
        while frames[-1][1] - base_count < total and time.monotonic() < deadline:
            await anyio.sleep(0.1)
        await anyio.sleep(0.6)
        tg.cancel_scope.cancel()
    delays: list[float] = []
    j = 0
    for k, at in enumerate(sent_at, start=1):
        while j < len(frames) and frames[j][1] - base_count < k:
            j += 1
        if j == len(frames):
            break
        delays.append(frames[j][0] - at)
    stats = summarize(delays)
    return {
        "p50_ms": round(stats["p50"] * 1000, 1),
        "p99_ms": round(stats["p99"] * 1000, 1),
        "max_ms": round(stats["max"] * 1000, 1),
        "achieved_rate": round(achieved),
        "seen": len(delays),
        "sent": total,
        "frames": len(frames),
    }


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Start the server, measure it, stop it."""
    import anyio

    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as workdir:
        proc = start_server(spec, port, workdir)
        try:
            return anyio.run(_measure, spec, proc, port)
        except Exception as exc:
            log = Path(workdir, "server.log").read_text(errors="replace")[-600:]
            return {"error": f"{type(exc).__name__}: {exc} | server log: {log}"}
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(name)
        print(summarize_profile(name))
