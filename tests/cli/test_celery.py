"""``aiocelev events`` and ``aiocelev control`` against real Celery workers.

Each worker gets its own node name and queue; events are filtered by node
name, so concurrent runs on the same broker do not interfere.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from .._helpers import read_output
from ..interop._common import Worker
from ._helpers import (
    ROOT,
    Background,
    assert_no_traceback,
    broker_url_fixture,  # noqa: F401
    json_lines,
    run_cli,
    run_demo,
    wait_for_events,
)

pytestmark = pytest.mark.celery

CELERY = str(Path(sys.executable).with_name("celery"))


@contextmanager
def celery_worker(
    broker_url: str, *, events: bool, pool: str = "solo"
) -> Iterator[tuple[str, str]]:
    """A real ``celery worker`` subprocess; yields (node name, queue)."""
    tag = uuid.uuid4().hex[:10]
    worker = Worker(
        broker_url,
        events=events,
        nodename=f"cli-{tag}@interop",
        queue=f"aiocelev-cli-{tag}",
        pool=pool,
    )
    worker.start()
    try:
        yield worker.nodename, worker.queue
    finally:
        worker.stop(20)
        worker.log.close()


def send(broker_url: str, queue: str, name: str, *args: Any) -> str:
    from celery import Celery

    app = Celery("aiocelev_cli_client", broker=broker_url)
    try:
        return str(app.send_task(name, args=args, queue=queue).id)
    finally:
        app.close()


def wait_online(events: Background, nodename: str) -> None:
    wait_for_events(
        events,
        lambda evs: any(e["hostname"] == nodename and e["type"] == "worker-online" for e in evs),
        timeout=30,
        what=f"worker-online from {nodename}",
    )


def test_events_json_sees_a_real_worker(broker_url: str) -> None:
    with Background("events", "--json", "--broker", broker_url) as events:
        events.wait_for_stderr("listening on")
        with celery_worker(broker_url, events=True) as (nodename, queue):
            wait_online(events, nodename)
            ok = send(broker_url, queue, "interop.add", 2, 3)
            bad = send(broker_url, queue, "interop.boom", 7)
            got = wait_for_events(
                events,
                lambda evs: (
                    {(e.get("uuid"), e["type"]) for e in evs}
                    >= {(ok, "task-succeeded"), (bad, "task-failed")}
                ),
                what="task-succeeded and task-failed",
            )
        # The warm shutdown's worker-offline arrives too.
        got = wait_for_events(
            events,
            lambda evs: any(
                e["hostname"] == nodename and e["type"] == "worker-offline" for e in evs
            ),
            what="worker-offline",
        )
        events.signal(signal.SIGINT)
        assert events.wait(20) == 130
        assert_no_traceback(events.stderr())
    mine = [e for e in got if e["hostname"] == nodename]
    by_task = {(e.get("uuid"), e["type"]): e for e in mine}
    assert by_task[(ok, "task-received")]["name"] == "interop.add"
    assert by_task[(ok, "task-succeeded")]["result"] == "5"
    failed = by_task[(bad, "task-failed")]
    assert "ValueError" in failed["exception"]
    assert "Traceback" in failed["traceback"]
    assert all(isinstance(e["local_received"], float) for e in mine)
    heartbeat_types = {e["type"] for e in mine}
    assert {"worker-online", "worker-offline"} <= heartbeat_types


def test_events_text_lines_for_a_real_worker(broker_url: str) -> None:
    with Background("events", "--broker", broker_url, "--filter", "task.#") as events:
        events.wait_for_stderr("listening on")
        with celery_worker(broker_url, events=True) as (nodename, queue):
            task = send(broker_url, queue, "interop.add", 20, 22)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if f"task succeeded: interop.add({task})" in events.stdout():
                    break
                time.sleep(0.1)
        events.signal(signal.SIGTERM)
        assert events.wait(20) == 143
        out = events.stdout()
    assert f"{nodename} [" in out
    assert f"task received: interop.add({task}) args=(20, 22) kwargs={{}}" in out
    assert f"task succeeded: interop.add({task})" in out and "result=42" in out
    assert "heartbeat" not in out  # filtered


def test_control_enable_and_disable_events(broker_url: str) -> None:
    with Background("events", "--json", "--broker", broker_url) as events:
        events.wait_for_stderr("listening on")
        with celery_worker(broker_url, events=False) as (nodename, queue):
            wait_online(events, nodename)
            # Without -E the worker sends no task events...
            before = send(broker_url, queue, "interop.add", 1, 1)
            enable = run_cli(
                "control",
                "enable-events",
                "--destination",
                nodename,
                "--broker",
                broker_url,
                "--timeout",
                "5",
            )
            assert enable.returncode == 0, enable.stderr
            assert enable.stdout.splitlines() == [f"-> {nodename}: OK", "    task events enabled"]
            # ... and after enable-events it does.
            after = send(broker_url, queue, "interop.add", 2, 2)
            got = wait_for_events(
                events,
                lambda evs: any(
                    e.get("uuid") == after and e["type"] == "task-succeeded" for e in evs
                ),
                what="task-succeeded after enable-events",
            )
            assert not any(e.get("uuid") == before for e in got)

            again = run_cli(
                "control", "enable-events", "-d", nodename, "-b", broker_url, "--timeout", "5"
            )
            assert again.stdout.splitlines()[1] == "    task events already enabled"

            beat = run_cli(
                "control", "heartbeat", "-d", nodename, "-b", broker_url, "--timeout", "5"
            )
            assert beat.returncode == 0, beat.stderr
            assert beat.stdout.splitlines()[0] == f"-> {nodename}: OK"

            disable = run_cli(
                "control", "disable-events", "-d", nodename, "-b", broker_url, "--timeout", "5"
            )
            assert disable.returncode == 0, disable.stderr
            assert disable.stdout.splitlines() == [f"-> {nodename}: OK", "    task events disabled"]
        events.signal(signal.SIGINT)
        events.wait(20)


def test_control_without_replies_is_an_error(broker_url: str) -> None:
    result = run_cli(
        "control",
        "enable-events",
        "--destination",
        f"nobody-{uuid.uuid4().hex[:6]}@nowhere",
        "--broker",
        broker_url,
        "--timeout",
        "0.5",
    )
    assert result.returncode == 1
    assert "no workers replied within 0.5s" in result.stderr
    assert result.stdout == ""
    assert_no_traceback(result.stderr)


def test_celery_events_dump_sees_the_demo_workers(broker_url: str) -> None:
    """``celery events --dump`` (Celery's own receiver) shows the simulated workers."""
    name = f"dump{uuid.uuid4().hex[:8]}"
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [CELERY, "-b", broker_url, "events", "--dump"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def output() -> str:
        return read_output(log)

    try:
        # Ready once a probe published with `aiocelev replay` shows up in the dump.
        probe_file = Path(tempfile.mkdtemp()) / "probe.jsonl"
        probe = f"{name}-probe@cli-test"
        probe_file.write_text(
            json.dumps({"type": "worker-heartbeat", "hostname": probe, "timestamp": time.time()})
            + "\n"
        )
        deadline = time.monotonic() + 30
        while probe not in output():
            assert time.monotonic() < deadline, output()[-3000:]
            run_cli("replay", str(probe_file), "--broker", broker_url, "--speed", "0")
            time.sleep(0.5)
        demo = run_demo(broker_url, name)
        assert demo.returncode == 0, demo.stderr
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = output()
            if f"{name}-1@" in text and f"{name}-2@" in text and text.count("shutdown") >= 2:
                break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        text = output()
        log.close()
    lines = [line for line in text.splitlines() if line.startswith(f"{name}-")]
    assert any("] started:" in line for line in lines), text[-3000:]
    assert any("task succeeded: demo." in line for line in lines)
    assert sum("] shutdown:" in line for line in lines) == 2


def wait_answering(broker_url: str, nodename: str) -> None:
    """Wait until the worker answers ``inspect ping`` (its pidbox is consumed)."""
    deadline = time.monotonic() + 30
    while True:
        ping = run_cli("inspect", "ping", "-d", nodename, "-b", broker_url, "--timeout", "1")
        if ping.returncode == 0:
            return
        assert time.monotonic() < deadline, ping.stderr


def test_inspect_prints_each_reply_as_it_arrives_and_ctrl_c_keeps_them(broker_url: str) -> None:
    with celery_worker(broker_url, events=False) as (nodename, _queue):
        wait_answering(broker_url, nodename)
        with Background("inspect", "ping", "--timeout", "120", "--broker", broker_url) as proc:
            deadline = time.monotonic() + 30
            while f"-> {nodename}: OK" not in proc.stdout():
                assert proc.proc.poll() is None, proc.stderr()
                assert time.monotonic() < deadline, proc.stdout() + proc.stderr()
                time.sleep(0.05)
            # The reply is on screen while the command still waits for others.
            assert proc.proc.poll() is None
            proc.signal(signal.SIGINT)
            assert proc.wait(20) == 130
            assert "interrupted: " in proc.stderr()
            assert "pong" in proc.stdout()
            assert_no_traceback(proc.stderr())


def test_inspect_and_control_a_real_worker(broker_url: str) -> None:
    # A prefork pool (one process): the node answers while a task runs, and can kill it.
    with celery_worker(broker_url, events=False, pool="prefork") as (nodename, queue):
        wait_answering(broker_url, nodename)
        common = ["-d", nodename, "-b", broker_url, "--timeout", "10"]
        # With a destination the command ends as soon as that node answered.
        stats = run_cli("inspect", "stats", "--json", *common)
        assert stats.returncode == 0, stats.stderr
        [reply] = json_lines(stats.stdout)
        assert reply[nodename]["pool"]["max-concurrency"] == 1
        registered = run_cli("inspect", "registered", *common)
        assert registered.returncode == 0, registered.stderr
        assert f"-> {nodename}: OK" in registered.stdout and "interop.add" in registered.stdout
        limited = run_cli("control", "rate_limit", "interop.add", "10/m", *common)
        assert limited.stdout.splitlines() == [
            f"-> {nodename}: OK",
            "    new rate limit set successfully",
        ]
        unknown = run_cli("control", "rate_limit", "no.such.task", "1/s", *common)
        assert unknown.returncode == 0
        assert unknown.stdout.splitlines()[0] == f"-> {nodename}: ERROR"
        # revoke --terminate stops a running task.
        task = send(broker_url, queue, "interop.slow", 60)
        deadline = time.monotonic() + 30
        while True:
            active = run_cli("inspect", "active", "--json", *common)
            if task in active.stdout:
                break
            assert time.monotonic() < deadline, active.stdout + active.stderr
            time.sleep(0.2)
        revoked = run_cli("control", "revoke", task, "--terminate", "--signal", "KILL", *common)
        assert revoked.returncode == 0, revoked.stderr
        assert f"terminate: {task}" in revoked.stdout
        deadline = time.monotonic() + 30
        while True:
            active = run_cli("inspect", "active", "--json", *common)
            if active.returncode == 0 and task not in active.stdout:
                break
            assert time.monotonic() < deadline, active.stdout
            time.sleep(0.2)
        listed = run_cli("inspect", "revoked", "--json", *common)
        assert task in json_lines(listed.stdout)[0][nodename]
