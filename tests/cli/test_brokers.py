"""Across processes over real brokers: events / record / replay / demo / top / control.

memory:// lives in one process, so here every command is its own
``python -m aiocelev`` process talking through RabbitMQ or Redis.  Other test
runs may share the broker: every check filters on node names unique to the test.
"""

from __future__ import annotations

import json
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from ._helpers import (
    Background,
    assert_no_traceback,
    broker_url_fixture,  # noqa: F401
    run_cli,
    run_demo,
    wait_for_events,
)


def recording(hostname: str) -> list[dict[str, Any]]:
    base = 1_767_225_600.0
    common = {"hostname": hostname, "utcoffset": 0, "pid": 4242}
    task = str(uuid.uuid4())
    return [
        {
            "type": "worker-online",
            "freq": 2.0,
            "sw_ident": "py-celery",
            **common,
            "clock": 1,
            "timestamp": base,
        },
        {
            "type": "task-received",
            "uuid": task,
            "name": "proj.add",
            "args": "(2, 2)",
            "kwargs": "{}",
            **common,
            "clock": 2,
            "timestamp": base + 0.01,
        },
        {"type": "task-started", "uuid": task, **common, "clock": 3, "timestamp": base + 0.02},
        {
            "type": "task-succeeded",
            "uuid": task,
            "result": "4",
            "runtime": 0.01,
            **common,
            "clock": 4,
            "timestamp": base + 0.03,
        },
        {
            "type": "task-progress",
            "uuid": task,
            "done": 1,
            **common,
            "clock": 5,
            "timestamp": base + 0.04,
        },
        {"type": "worker-offline", "freq": 2.0, **common, "clock": 6, "timestamp": base + 0.05},
    ]


def test_replay_to_events_json_across_processes(broker_url: str, tmp_path: Path) -> None:
    hostname = f"replay-{uuid.uuid4().hex[:8]}@cli-test"
    sent = recording(hostname)
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in sent))
    with Background("events", "--json", "--broker", broker_url) as events:
        events.wait_for_stderr("listening on")
        replay = run_cli("replay", str(path), "--broker", broker_url, "--speed", "0")
        assert replay.returncode == 0, replay.stderr
        assert "replayed 6 events" in replay.stderr
        got = wait_for_events(
            events, lambda evs: sum(e.get("hostname") == hostname for e in evs) >= 6
        )
        events.signal(signal.SIGINT)
        assert events.wait(20) == 130
        assert_no_traceback(events.stderr())
    ours = [e for e in got if e.get("hostname") == hostname]
    for before, after in zip(sent, ours, strict=True):
        assert isinstance(after.pop("local_received"), float)
        assert after == before  # unchanged, clock and timestamp included


def test_record_from_a_demo_then_replay(broker_url: str, tmp_path: Path) -> None:
    out = tmp_path / "demo.jsonl"
    with Background(
        "record", str(out), "--broker", broker_url, "--filter", "worker.#", "task.#"
    ) as rec:
        rec.wait_for_stderr("recording")
        name = f"rec{uuid.uuid4().hex[:8]}"
        demo = run_demo(broker_url, name)
        assert demo.returncode == 0, demo.stderr
        host = socket.gethostname()
        ours = {f"{name}-1@{host}", f"{name}-2@{host}"}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            lines = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
            offline = {e["hostname"] for e in lines if e["type"] == "worker-offline"}
            if ours <= offline:
                break
            time.sleep(0.1)
        rec.signal(signal.SIGTERM)
        assert rec.wait(20) == 143
        assert_no_traceback(rec.stderr())
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    mine = [e for e in lines if e["hostname"] in ours]
    types = {e["type"] for e in mine}
    assert {"worker-online", "task-received", "task-started", "worker-offline"} <= types
    assert types & {"task-succeeded", "task-failed"}
    assert all("local_received" in e for e in lines)
    sent = int(demo.stdout.split("events: ")[1].split(" sent")[0])
    assert len(mine) == sent


def test_demo_seen_by_events_and_top(broker_url: str) -> None:
    host = socket.gethostname()
    name = f"top{uuid.uuid4().hex[:8]}"
    ours = {f"{name}-{n}@{host}" for n in (1, 2, 3)}
    with Background("events", "--json", "--broker", broker_url) as events:
        events.wait_for_stderr("listening on")
        demo_args = ("demo", "--no-ui", "--duration", "60", "--name", name, "--broker", broker_url)
        with Background(*demo_args) as demo:
            demo.wait_for_stderr("running 3 simulated workers")
            top = run_cli("top", "--once", "--wait", "3.5", "--broker", broker_url)
            assert top.returncode == 0, top.stderr
            assert_no_traceback(top.stderr)
            for hostname in ours:
                line = next(x for x in top.stdout.splitlines() if hostname in x)
                assert "online" in line
            assert "demo." in top.stdout  # task names
            demo.signal(signal.SIGINT)  # stops the workers: worker-offline, then a summary
            assert demo.wait(60) == 130
            assert "tasks by state:" in demo.stdout()
        got = wait_for_events(
            events,
            lambda evs: ours <= {e["hostname"] for e in evs if e["type"] == "worker-offline"},
            what="worker-offline of the 3 demo workers",
        )
        events.signal(signal.SIGTERM)
        assert events.wait(20) == 143
    mine = [e for e in got if e["hostname"] in ours]
    types = {e["type"] for e in mine}
    assert {
        "worker-online",
        "worker-heartbeat",
        "task-received",
        "task-started",
        "task-succeeded",
    } <= types
    for failure in (e for e in mine if e["type"] == "task-failed"):
        assert failure["traceback"].startswith("Traceback (most recent call last):")


def test_control_reaches_the_demo_workers(broker_url: str) -> None:
    host = socket.gethostname()
    name = f"ctl{uuid.uuid4().hex[:8]}"
    nodes = [f"{name}-1@{host}", f"{name}-2@{host}"]
    demo_args = ("demo", "--no-ui", "--duration", "30", "--workers", "2", "--name", name)
    with Background(*demo_args, "--broker", broker_url) as demo:
        demo.wait_for_stderr("running 2 simulated workers")
        result = run_cli(
            "control", "enable-events", "-d", *nodes, "-b", broker_url, "--timeout", "10"
        )
        assert result.returncode == 0, result.stderr
        lines = sorted(result.stdout.splitlines())
        assert [line for line in lines if line.startswith("->")] == [
            f"-> {node}: OK" for node in sorted(nodes)
        ]
        assert lines.count("    task events already enabled") == 2
        demo.signal(signal.SIGINT)
        assert demo.wait(30) == 130


def test_example_worker_says_offline_on_sigterm_and_answers_control(broker_url: str) -> None:
    """docker/systemd/k8s stop with SIGTERM: the example worker leaves with worker-offline."""
    import subprocess
    import sys

    from ._helpers import ROOT, cli_env, json_lines

    node = f"sigterm-{uuid.uuid4().hex[:8]}@cli-test"
    with Background("events", "--json", "--filter", "worker.#", "--broker", broker_url) as events:
        events.wait_for_stderr("listening on")
        worker = subprocess.Popen(
            [sys.executable, "examples/asyncio_queue_worker.py", "--broker", broker_url,
             "--name", node, "--freq", "0.5", "--rate", "20"],
            cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            wait_for_events(
                events,
                lambda evs: any(
                    e["hostname"] == node and e["type"] == "worker-online" for e in evs
                ),
                what="worker-online",
            )
            deadline = time.monotonic() + 30
            while True:
                ping = run_cli("inspect", "ping", "-d", node, "-b", broker_url, "--json")
                if ping.returncode == 0:
                    break
                assert time.monotonic() < deadline, ping.stderr
            assert json_lines(ping.stdout) == [{node: {"ok": "pong"}}]
            worker.send_signal(signal.SIGTERM)
            out, _ = worker.communicate(timeout=30)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        assert worker.returncode == 0, out
        assert "got SIGTERM, shutting down" in out
        wait_for_events(
            events,
            lambda evs: any(e["hostname"] == node and e["type"] == "worker-offline" for e in evs),
            what="worker-offline after SIGTERM",
        )
