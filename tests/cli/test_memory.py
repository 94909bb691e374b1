"""events, record, replay, top and demo over memory:// (in this process, on the test's loop).

memory:// shares one hub per process, so these tests run the commands'
coroutines next to a dispatcher or receiver on the same event loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from aiocelev import EventDispatcher, EventReceiver, OutgoingMessage
from aiocelev.brokers.memory import MemoryHub, from_url, memory_hub
from aiocelev.cli import _common, _demo, _events, _record, _top, build_parser, main
from aiocelev.cli._common import Context

Command = Callable[[Any, Context], Awaitable[int]]


@asynccontextmanager
async def bounded_group(seconds: float = 10) -> AsyncIterator[anyio.abc.TaskGroup]:
    """A task group that fails the test instead of hanging."""
    with anyio.fail_after(seconds):
        async with anyio.create_task_group() as tg:
            yield tg


def parse(*argv: str) -> Any:
    return build_parser().parse_args(list(argv))


async def start_listening(
    tg: anyio.abc.TaskGroup, command: Command, args: Any, url: str, results: list[int]
) -> MemoryHub:
    """Start *command* and return once it subscribed to *url*'s hub."""
    hub = memory_hub(url)
    before = len(hub._subscriptions)

    async def runner() -> None:
        results.append(await command(args, Context()))

    tg.start_soon(runner)
    with anyio.fail_after(5):
        while len(hub._subscriptions) <= before:
            await anyio.sleep(0.01)
    return hub


async def send_sample(url: str, hostname: str = "w1@example") -> None:
    async with EventDispatcher(url, hostname=hostname) as d:
        await d.send("worker-online", freq=2.0, sw_ident="py-celery", sw_ver="5.7.0")
        await d.send(
            "task-received", uuid="t-1", name="proj.add", args="(2, 2)", kwargs="{}", retries=0
        )
        await d.send("task-started", uuid="t-1")
        await d.send("task-succeeded", uuid="t-1", result="4", runtime=0.25)
        await d.send(
            "task-failed",
            uuid="t-2",
            exception="ValueError('bad')",
            traceback='Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad\n',
        )
        await d.send("task-progress", uuid="t-1", done=3, total=10)
        await d.flush()


async def test_events_prints_one_readable_line_per_event(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = "memory://cli-events-text"
    results: list[int] = []
    async with bounded_group() as tg:
        await start_listening(
            tg, _events.run, parse("events", "-b", url, "--limit", "6"), url, results
        )
        await send_sample(url)
    assert results == [0]
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 9, out
    assert " UTC] started: " in lines[0] and "sw_ident=py-celery" in lines[0]
    assert "task received: proj.add(t-1) args=(2, 2) kwargs={}" in lines[1]
    # As in Celery's dump, later events of a task repeat its name and arguments.
    assert "task started: proj.add(t-1) args=(2, 2) kwargs={} clock=" in lines[2]
    assert "task succeeded: proj.add(t-1) args=(2, 2)" in lines[3] and "result=4" in lines[3]
    assert "runtime=0.25" in lines[3]
    # A multi-line traceback follows its event as indented lines.
    assert "task failed: t-2" in lines[4] and "exception=ValueError('bad')" in lines[4]
    assert "traceback=" not in lines[4]
    assert lines[5:8] == [
        "    Traceback (most recent call last):",
        '      File "x.py", line 1',
        "    ValueError: bad",
    ]
    assert "task progress: proj.add(t-1)" in lines[8] and "done=3" in lines[8]
    events = [line for line in lines if not line.startswith(" ")]
    assert all(line.startswith("w1@example [") for line in events)
    assert "pid=" not in out and "=None" not in out  # envelope noise left to --json
    assert "\x1b[" not in out  # no colour when stdout is not a terminal


async def test_events_json_prints_the_full_wire_dict(capsys: pytest.CaptureFixture[str]) -> None:
    url = "memory://cli-events-json"
    results: list[int] = []
    async with bounded_group() as tg:
        await start_listening(
            tg, _events.run, parse("events", "-b", url, "--json", "--limit", "6"), url, results
        )
        await send_sample(url)
    assert results == [0]
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert [e["type"] for e in events] == [
        "worker-online",
        "task-received",
        "task-started",
        "task-succeeded",
        "task-failed",
        "task-progress",
    ]
    for event in events:
        assert event["hostname"] == "w1@example"
        assert isinstance(event["local_received"], float)
        assert isinstance(event["timestamp"], float)
        assert isinstance(event["clock"], int)
    assert events[1]["args"] == "(2, 2)"
    assert events[4]["traceback"].endswith("ValueError: bad\n")
    assert events[5]["done"] == 3 and events[5]["total"] == 10
    assert "listening on memory://cli-events-json" in captured.err
    assert "{" not in captured.err  # diagnostics only, no events on stderr


async def test_events_filter_by_routing_key(capsys: pytest.CaptureFixture[str]) -> None:
    url = "memory://cli-events-filter"
    results: list[int] = []
    args = parse(
        "events", "-b", url, "--json", "--filter", "task.succeeded", "task.failed", "-n", "2"
    )
    async with bounded_group() as tg:
        await start_listening(tg, _events.run, args, url, results)
        await send_sample(url)
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["type"] for e in events] == ["task-succeeded", "task-failed"]


def test_filters_also_bind_batches() -> None:
    keys, check = _common.binding_keys(["task.succeeded", "worker.#"])
    assert keys == ("task.succeeded", "worker.#", "task.multi", "worker.multi")
    assert check is not None
    assert check("task.succeeded") and check("worker.heartbeat")
    assert not check("task.failed") and not check("task.multi")
    assert _common.binding_keys(None) == (("#",), None)
    assert _common.binding_keys(["#", "task.#"]) == (("#",), None)
    assert _common.binding_keys(["*.failed"])[0] == ("*.failed", "*.multi")
    # For text lines, the events naming tasks are received too (and then hidden).
    keys, check = _common.binding_keys(["task.failed"], names=True)
    assert keys == ("task.failed", "task.multi", "task.received", "task.sent")
    assert check is not None and not check("task.received")
    assert _common.binding_keys(["task.#"], names=True)[0] == ("task.#", "task.multi")


async def test_filtered_text_lines_still_name_their_tasks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = "memory://cli-events-filtered-names"
    results: list[int] = []
    args = parse("events", "-b", url, "--filter", "task.failed", "task.succeeded", "-n", "2")
    async with bounded_group() as tg:
        await start_listening(tg, _events.run, args, url, results)
        async with EventDispatcher(url, hostname="w1@example") as d:
            await d.send("task-received", uuid="t-9", name="proj.mul", args="(3,)", kwargs="{}")
            await d.send("task-started", uuid="t-9")
            await d.send("task-succeeded", uuid="t-9", result="9", runtime=0.1)
            await d.send("task-sent", uuid="t-8", name="proj.div", args="(1, 0)", kwargs="{}")
            await d.send("task-failed", uuid="t-8", exception="ZeroDivisionError()")
            await d.flush()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    assert "task succeeded: proj.mul(t-9) args=(3,) kwargs={}" in lines[0]
    assert "task failed: proj.div(t-8) args=(1, 0) kwargs={}" in lines[1]


async def test_events_timeout_without_events(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("events", "-b", "memory://cli-events-quiet", "--timeout", "0.2")
    assert await _events.run(args, Context()) == 0
    assert capsys.readouterr().out == ""


async def test_events_reports_malformed_messages_and_goes_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = "memory://cli-events-malformed"
    results: list[int] = []
    async with bounded_group() as tg:
        await start_listening(
            tg, _events.run, parse("events", "-b", url, "--json", "-n", "1"), url, results
        )
        broker = from_url(url)
        await broker.connect()
        await broker.publish(
            [
                OutgoingMessage("task.succeeded", b"{not json"),
                OutgoingMessage("task.succeeded", b'"a string"'),
                OutgoingMessage(
                    "worker.heartbeat",
                    b'{"type": "worker-heartbeat", "hostname": "ok@x", "timestamp": 1.5}',
                ),
            ]
        )
        await broker.aclose()
    assert results == [0]
    captured = capsys.readouterr()
    assert [json.loads(line)["hostname"] for line in captured.out.splitlines()] == ["ok@x"]
    diagnostics = [
        line for line in captured.err.splitlines() if "skipped a malformed message" in line
    ]
    assert len(diagnostics) == 2, captured.err
    assert all("routing key 'task.succeeded'" in line for line in diagnostics)
    assert "Traceback" not in captured.err


async def test_record_then_replay_reproduces_the_stream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "memory://cli-record"
    recording = tmp_path / "stream.jsonl"
    results: list[int] = []
    async with bounded_group() as tg:
        await start_listening(
            tg,
            _record.run_record,
            parse("record", str(recording), "-b", url, "-n", "6"),
            url,
            results,
        )
        await send_sample(url)
    assert results == [0]
    recorded = [json.loads(line) for line in recording.read_text().splitlines()]
    assert len(recorded) == 6
    assert all("local_received" in e for e in recorded)
    assert "recorded 6 events to" in capsys.readouterr().err

    # Replay as fast as possible to a fresh hub, watched by a receiver.
    target = "memory://cli-replay"
    async with EventReceiver(target) as receiver:
        assert (
            await _record.run_replay(
                parse("replay", str(recording), "-b", target, "--speed", "0"), Context()
            )
            == 0
        )
        got = []
        with anyio.fail_after(5):
            async for event in receiver:
                got.append(event.to_dict())
                if len(got) == 6:
                    break
    for before, after in zip(recorded, got, strict=True):
        before = dict(before)
        before.pop("local_received")
        after.pop("local_received")
        assert after == before  # every field, clock and timestamp included
    assert "replayed 6 events" in capsys.readouterr().err


async def test_replay_keeps_original_order_with_timing(tmp_path: Path) -> None:
    recording = tmp_path / "timed.jsonl"
    lines = [
        {
            "type": "worker-heartbeat",
            "hostname": "a@x",
            "timestamp": 100.0 + i * 0.05,
            "clock": i + 1,
            "local_received": 200.0 + i * 0.05,
        }
        for i in range(4)
    ]
    recording.write_text("".join(json.dumps(e) + "\n" for e in lines))
    target = "memory://cli-replay-timed"
    async with EventReceiver(target) as receiver:
        assert (
            await _record.run_replay(
                parse("replay", str(recording), "-b", target, "--speed", "2"), Context()
            )
            == 0
        )
        with anyio.fail_after(5):
            got = [await receiver.receive() for _ in range(4)]
    assert [e.clock for e in got] == [1, 2, 3, 4]
    assert [e.timestamp for e in got] == [e["timestamp"] for e in lines]


async def test_replay_retime_stamps_events_with_the_time_they_are_sent(tmp_path: Path) -> None:
    recording = tmp_path / "old.jsonl"
    lines = [
        {"type": "worker-heartbeat", "hostname": "a@x", "timestamp": 100.0 + i, "clock": i + 1}
        for i in range(3)
    ]
    recording.write_text("".join(json.dumps(e) + "\n" for e in lines))
    target = "memory://cli-replay-retime"
    async with EventReceiver(target) as receiver:
        before = time.time()
        args = parse("replay", str(recording), "-b", target, "--speed", "0", "--retime")
        assert await _record.run_replay(args, Context()) == 0
        after = time.time()
        with anyio.fail_after(5):
            got = [await receiver.receive() for _ in range(3)]
    assert [e.clock for e in got] == [1, 2, 3]
    assert all(before <= e.timestamp <= after for e in got)
    assert [e.timestamp for e in got] == sorted(e.timestamp for e in got)


async def test_replay_skips_bad_lines_with_their_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recording = tmp_path / "mixed.jsonl"
    recording.write_text(
        '{"type": "worker-online", "hostname": "a@x", "timestamp": 1.0}\n'
        "not json\n"
        "\n"
        '{"hostname": "no-type@x"}\n'
        '{"type": "worker-offline", "hostname": "a@x", "timestamp": 2.0}\n'
    )
    target = "memory://cli-replay-bad"
    async with EventReceiver(target) as receiver:
        assert (
            await _record.run_replay(
                parse("replay", str(recording), "-b", target, "-s", "0"), Context()
            )
            == 0
        )
        with anyio.fail_after(5):
            got = [await receiver.receive() for _ in range(2)]
    assert [e.type for e in got] == ["worker-online", "worker-offline"]
    err = capsys.readouterr().err
    assert "mixed.jsonl:2: skipped: not JSON" in err
    assert "mixed.jsonl:4: skipped: not an event" in err
    assert "replayed 2 events" in err


async def test_top_once_shows_workers_and_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("rich")
    url = "memory://cli-top-once"
    results: list[int] = []
    async with bounded_group() as tg:
        await start_listening(
            tg, _top.run, parse("top", "-b", url, "--once", "--wait", "0.5"), url, results
        )
        await send_sample(url)
    assert results == [0]
    out = capsys.readouterr().out
    assert "w1@example" in out
    assert "online" in out
    assert "SUCCESS" in out and "FAILURE" in out
    assert "proj.add" in out
    assert "\x1b[" not in out
    assert [line for line in out.splitlines() if line != line.rstrip()] == []


async def test_demo_no_ui_summary_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(
        "demo",
        "-b",
        "memory://cli-demo",
        "--no-ui",
        "--duration",
        "1.5",
        "--seed",
        "7",
        "--rate",
        "60",
    )
    assert await _demo.run(args, Context()) == 0
    out = capsys.readouterr().out
    assert "tasks by state:" in out
    sent = int(out.split("events: ")[1].split(" sent")[0])
    received = int(out.split("sent, ")[1].split(" received")[0])
    assert sent > 0 and sent == received
    assert "workers seen by the receiver: 3/3" in out


@pytest.mark.parametrize("order", ["file-first", "file-last"])
def test_record_file_may_follow_the_filter_keys(order: str, tmp_path: Path) -> None:
    out = tmp_path / "filtered.jsonl"
    keys = ["--filter", "task.#", "worker.online"]
    tail = ["--broker", "memory://", "--timeout", "0.2"]
    argv = (
        ["record", str(out), *keys, *tail]
        if order == "file-first"
        else ["record", *keys, str(out), *tail]
    )
    assert main(argv) == 0
    assert out.exists()


def test_record_without_file_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["record", "--broker", "memory://", "--timeout", "0.1"]) == 2
    assert "record needs FILE" in capsys.readouterr().err
