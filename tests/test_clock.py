"""The Lamport clock, and the receiver's clock rules (compared with Celery's own receiver)."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import anyio
import pytest
from celery import Celery
from celery.events.receiver import EventReceiver as CeleryReceiver
from kombu import Connection
from kombu.clocks import LamportClock as KombuClock

from aiocelev import Event, EventReceiver, LamportClock, OutgoingMessage
from aiocelev._clock import MAX_CLOCK, utcoffset, valid_clock
from aiocelev.brokers.memory import MemoryBroker


def test_forward_and_adjust() -> None:
    clock = LamportClock()
    assert clock.value == 0
    assert clock.forward() == 1
    assert clock.forward() == 2
    assert clock.adjust(10) == 11
    assert clock.value == 11
    assert clock.adjust(3) == 12  # max(value, other) + 1
    assert clock.adjust(12) == 13
    assert LamportClock(41).forward() == 42
    assert "13" in repr(clock)


def test_same_semantics_as_kombu() -> None:
    ours, theirs = LamportClock(), KombuClock()
    for op, arg in [
        ("forward", None),
        ("adjust", 7),
        ("adjust", 2),
        ("forward", None),
        ("adjust", 100),
    ]:
        if op == "forward":
            assert ours.forward() == theirs.forward()
        else:
            assert ours.adjust(arg) == theirs.adjust(arg)  # type: ignore[arg-type]
        assert ours.value == theirs.value


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (0, True),
        (1, True),
        (MAX_CLOCK - 1, True),
        (MAX_CLOCK, False),
        (10**30, False),
        (-1, False),
        (None, False),
        ("5", False),
        (1.0, False),
        (True, False),
        (False, False),
    ],
)
def test_valid_clock(value: Any, valid: bool) -> None:
    assert valid_clock(value) is valid


def _event(type_: str, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"hostname": "w@h", "utcoffset": 0, "pid": 1}
    data.update(extra)
    data.setdefault("timestamp", 1000.0)
    data["type"] = type_
    return data


async def _receive(name: str, events: list[dict[str, Any]], **kw: Any) -> tuple[list[Event], Any]:
    """Publish *events* one message each over memory:// and receive them all."""
    broker = MemoryBroker(f"memory://{re.sub(r'[^A-Za-z0-9_-]', '_', name)}")
    async with EventReceiver(broker, **kw) as receiver:
        await broker.publish([OutgoingMessage("task.x", json.dumps(e).encode()) for e in events])
        with anyio.fail_after(5):
            got = [await receiver.receive() for _ in events]
        stats = receiver.statistics()
    await broker.aclose()
    return got, stats


def _celery_clocks(events: list[dict[str, Any]]) -> tuple[list[Any], int]:
    """The clocks Celery's own receiver gives these events, and its final clock."""
    app = Celery(broker="memory://", set_as_current=False)
    conn = Connection("memory://")
    try:
        receiver = CeleryReceiver(conn, app=app)
        clocks = [receiver.event_from_message(dict(e))[1]["clock"] for e in events]
        return clocks, app.clock.value
    finally:
        conn.release()


SEQUENCES = [
    [_event("task-sent", clock=50)],
    [
        _event("worker-online", clock=10),
        _event("task-sent", clock=99),
        _event("task-started", clock=3),
    ],
    [_event("task-started"), _event("task-started"), _event("worker-heartbeat", clock=40)],
    [_event("task-sent", clock=5), _event("task-sent", clock=5), _event("task-received", clock=5)],
    [_event("worker-heartbeat", clock=0), _event("task-sent"), _event("task-succeeded", clock=7)],
]


@pytest.mark.parametrize("events", SEQUENCES)
async def test_receiver_clock_rules_match_celery(
    events: list[dict[str, Any]], request: pytest.FixtureRequest
) -> None:
    expected, final = _celery_clocks(events)
    clock = LamportClock()
    got, stats = await _receive(request.node.name, events, clock=clock)
    assert [e.clock for e in got] == expected
    assert clock.value == final
    assert stats.invalid_clocks == 0


async def test_task_sent_clock_is_replaced(request: pytest.FixtureRequest) -> None:
    clock = LamportClock(20)
    got, _ = await _receive(request.node.name, [_event("task-sent", clock=1000)], clock=clock)
    assert got[0].clock == 19  # (value or 1) - 1
    assert clock.value == 21  # adjusted with 19: max(20, 19) + 1
    clock = LamportClock(0)
    got, _ = await _receive(request.node.name + "2", [_event("task-sent", clock=1000)], clock=clock)
    assert got[0].clock == 0
    assert clock.value == 1


async def test_adjust_to_max_plus_one_and_keep_sender_clock(request: pytest.FixtureRequest) -> None:
    clock = LamportClock(5)
    got, _ = await _receive(
        request.node.name,
        [_event("task-started", clock=100), _event("task-started", clock=50)],
        clock=clock,
    )
    assert [e.clock for e in got] == [100, 50]
    assert clock.value == 102


async def test_missing_clock_gets_a_forwarded_one(request: pytest.FixtureRequest) -> None:
    clock = LamportClock(7)
    got, stats = await _receive(request.node.name, [_event("worker-heartbeat")], clock=clock)
    assert got[0].clock == 8
    assert clock.value == 8
    assert stats.invalid_clocks == 0


INVALID_CLOCKS: list[Any] = [
    None,
    "12",
    1.5,
    2.0,
    True,
    False,
    -1,
    10**30,
    MAX_CLOCK,
    [1],
    {"a": 1},
]


async def test_invalid_clocks_do_not_crash_and_are_counted(request: pytest.FixtureRequest) -> None:
    clock = LamportClock(3)
    events = [_event("task-started", uuid=str(i), clock=c) for i, c in enumerate(INVALID_CLOCKS)]
    events.append(_event("task-started", uuid="last", clock=1))
    got, stats = await _receive(request.node.name, events, clock=clock)
    assert [e["uuid"] for e in got] == [e["uuid"] for e in events]
    # each invalid clock was replaced by a forwarded local one
    assert [e.clock for e in got[:-1]] == list(range(4, 4 + len(INVALID_CLOCKS)))
    assert got[-1].clock == 1
    assert stats.invalid_clocks == len(INVALID_CLOCKS)
    assert clock.value == 4 + len(INVALID_CLOCKS)  # adjust(1) -> max(value, 1) + 1


async def test_huge_clock_in_a_batch_does_not_sink_the_batch(
    request: pytest.FixtureRequest,
) -> None:
    broker = MemoryBroker(f"memory://{request.node.name}")
    batch = [
        _event("task-started", uuid="a", clock=10**30),
        _event("task-started", uuid="b", clock=2),
    ]
    async with EventReceiver(broker) as receiver:
        await broker.publish([OutgoingMessage("task.multi", json.dumps(batch).encode())])
        with anyio.fail_after(5):
            got = [await receiver.receive() for _ in batch]
        assert [e["uuid"] for e in got] == ["a", "b"]
        assert receiver.statistics().invalid_clocks == 1
        assert receiver.clock.value < MAX_CLOCK


@pytest.mark.skipif(not hasattr(time, "tzset"), reason="needs time.tzset (POSIX)")
@pytest.mark.parametrize(
    ("zone", "expected"),
    [("UTC0", 0.0), ("EST5", 5.0), ("IST-5:30", -5.5), ("XXX-1YYY-2,J1/0,J365/25", -2.0)],
)
def test_utcoffset_is_hours_west(
    monkeypatch: pytest.MonkeyPatch, zone: str, expected: float
) -> None:
    # The last zone is on summer time all year: the DST offset applies.
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        assert utcoffset() == expected
    finally:
        monkeypatch.undo()
        time.tzset()
