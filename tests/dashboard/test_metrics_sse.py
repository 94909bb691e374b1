"""``/metrics`` with Flower's series (parsed with prometheus-client), and the SSE stream."""

from __future__ import annotations

import json
from typing import Any

import anyio
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Dashboard, running_dashboard, wait_until, with_dash


def _samples(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        out.setdefault(family.name, []).extend(family.samples)
        out.setdefault(f"{family.name}:type", []).append(family.type)
    return out


@with_dash(runtime_buckets=(0.5, 5.0))
async def test_metrics_have_flowers_names_types_and_labels(dash: Dashboard) -> None:
    async with dash.worker("w1@host") as w:
        await dash.run_task(w, "t-1", "app.add")
        await dash.run_task(w, "t-2", "app.add", fail=ValueError("x"))
    await wait_until(lambda: dash.hub.state.worker("w1@host").offline, "worker-offline")
    r = await dash.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = _samples(r.text)
    assert m["flower_events:type"] == ["counter"]
    assert m["flower_task_runtime_seconds:type"] == ["histogram"]
    for gauge in (
        "flower_task_prefetch_time_seconds",
        "flower_worker_prefetched_tasks",
        "flower_worker_online",
        "flower_worker_number_of_currently_executing_tasks",
    ):
        assert m[f"{gauge}:type"] == ["gauge"], gauge
    events = {
        (s.labels["worker"], s.labels["type"], s.labels["task"]): s.value
        for s in m["flower_events"]
        if s.name == "flower_events_total"
    }
    assert events[("w1@host", "task-succeeded", "app.add")] == 1
    assert events[("w1@host", "task-failed", "app.add")] == 1
    assert events[("w1@host", "task-received", "app.add")] == 2
    buckets = {
        s.labels["le"] for s in m["flower_task_runtime_seconds"] if s.name.endswith("_bucket")
    }
    assert buckets == {"0.5", "5.0", "+Inf"}
    online = {s.labels["worker"]: s.value for s in m["flower_worker_online"]}
    assert online["w1@host"] == 0  # worker-offline when the worker stopped
    prefetched = {s.labels["task"]: s.value for s in m["flower_worker_prefetched_tasks"]}
    assert prefetched["app.add"] == 0


async def test_offline_workers_are_purged_from_metrics() -> None:
    async with running_dashboard(purge_offline_workers=0.001) as dash:
        async with dash.worker("gone@host", freq=0.05) as w:
            await dash.run_task(w, "t-1", "app.add")
        await wait_until(lambda: not dash.hub.state.worker("gone@host").alive, "offline")
        text = (await dash.client.get("/metrics")).text
        assert "gone@host" not in text


async def _sse_frames(app: Any, path: str, frames: list[dict[str, Any]], stop: anyio.Event) -> None:
    """Call the ASGI app directly (httpx's transport buffers whole responses)."""
    disconnect = anyio.Event()

    async def receive() -> dict[str, Any]:
        await disconnect.wait()
        return {"type": "http.disconnect"}

    buffer = ""

    async def send(message: dict[str, Any]) -> None:
        nonlocal buffer
        if message["type"] == "http.response.start":
            assert message["status"] == 200
        elif message["type"] == "http.response.body":
            buffer += message.get("body", b"").decode()
            while "\n\n" in buffer:
                frame, buffer = buffer.split("\n\n", 1)
                lines = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line)
                if lines.get("event") == "update":
                    frames.append(json.loads(lines["data"]))

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"host", b"dash.test")], "client": ("127.0.0.1", 1),
        "server": ("dash.test", 80), "app": app,
    }  # fmt: skip
    async with anyio.create_task_group() as tg:
        tg.start_soon(app, scope, receive, send)
        await stop.wait()
        disconnect.set()
        tg.cancel_scope.cancel()


@with_dash(push_interval=0.05)
async def test_sse_stream_delivers_a_change_coalesced(dash: Dashboard) -> None:
    frames: list[dict[str, Any]] = []
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_sse_frames, dash.app, "/events/stream", frames, stop)
        await wait_until(lambda: frames, "the first frame (catch-up)")
        first = frames[0]["version"]
        assert frames[0]["connected"] is True
        async with dash.worker("w1@host") as w:
            for i in range(20):
                await dash.run_task(w, f"t-{i}", "app.add")
            await wait_until(lambda: frames[-1]["tasks"] == 20, "an update with the 20 tasks")
        assert frames[-1]["version"] > first
        # coalesced: far fewer frames than the ~70 events applied
        assert len(frames) < dash.hub.state.event_count
        assert len(dash.hub.subscribers) == 1
        stop.set()
    await wait_until(lambda: not dash.hub.subscribers, "the subscriber to go")
