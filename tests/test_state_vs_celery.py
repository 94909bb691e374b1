"""ClusterState agrees with ``celery.events.state.State`` on the same events.

Task states (and the fields Flower shows) must match after any delivery
order; worker liveness must match at any moment.  The one documented
difference is not exercised here: for *task* events Celery counts the
sender's ``timestamp`` as the worker's sign of life while ClusterState uses
``local_received``, so the streams below give task events
``local_received == timestamp``.
"""

from __future__ import annotations

import base64
import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from aiocelev._codec import decode_message
from aiocelev._events import Event
from aiocelev._message import IncomingMessage
from aiocelev._state import ClusterState

celery_state = pytest.importorskip("celery.events.state")

pytestmark = pytest.mark.celery

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "celery-5.7.0"
T0 = 1_795_500_000.0

TASK_FIELDS = (
    "name",
    "args",
    "kwargs",
    "result",
    "exception",
    "traceback",
    "runtime",
    "retries",
    "eta",
    "expires",
    "parent_id",
    "root_id",
    "client",
    "sent",
    "received",
    "started",
    "succeeded",
    "failed",
    "retried",
    "revoked",
    "rejected",
)


class Probe:
    """The injected time source of the ClusterStates under test."""

    now = T0

    def __call__(self) -> float:
        return self.now


PROBE = Probe()


def feed_both(events: list[dict[str, Any]], **options: Any) -> tuple[Any, ClusterState]:
    """Apply the same events, in order, to a Celery State and a ClusterState."""
    theirs = celery_state.State(max_tasks_in_memory=1_000_000, max_workers_in_memory=100_000)
    ours = ClusterState(max_tasks=1_000_000, max_workers=100_000, time_source=PROBE, **options)
    for ev in events:
        theirs.event(copy.deepcopy(ev))  # Celery writes into the dict it is given
        ours.apply(Event.from_dict(ev))
    return theirs, ours


def feed_checking_liveness(
    events: list[dict[str, Any]], every: int, offsets: tuple[float, ...]
) -> tuple[Any, ClusterState, set[bool]]:
    """Like :func:`feed_both`, comparing every worker's alive flag as the stream goes.

    After every *every* events the flags are compared at ``local_received`` of
    the last event plus each of *offsets*.  Returns the flags seen.
    """
    theirs = celery_state.State(max_tasks_in_memory=1_000_000, max_workers_in_memory=100_000)
    ours = ClusterState(max_tasks=1_000_000, max_workers=100_000, time_source=PROBE)
    flags: set[bool] = set()
    for i, ev in enumerate(events):
        theirs.event(copy.deepcopy(ev))
        ours.apply(Event.from_dict(ev))
        if i % every == 0:
            moments = [ev["local_received"] + off for off in offsets]
            flags |= assert_same_workers(theirs, ours, moments)
    return theirs, ours, flags


def assert_same_tasks(theirs: Any, ours: ClusterState) -> None:
    """Every task: same state, same worker, same fields."""
    assert set(theirs.tasks.keys()) == set(ours.tasks)
    for uuid, ct in theirs.tasks.items():
        t = ours.task(uuid)
        assert t is not None
        assert t.state == ct.state, uuid
        assert t.ready == ct.ready, uuid
        assert t.worker == (ct.worker.hostname if ct.worker is not None else None), uuid
        for field in TASK_FIELDS:
            assert getattr(t, field) == getattr(ct, field), (uuid, field)
        assert sorted(t.children) == sorted(c.uuid for c in ct.children), uuid


def celery_alive(worker: Any, now: float) -> bool:
    """``Worker.alive`` of Celery evaluated at *now* (it reads ``time.time`` itself)."""
    return bool(worker.heartbeats) and now < worker.heartbeat_expires


def assert_same_workers(theirs: Any, ours: ClusterState, moments: list[float]) -> set[bool]:
    """Same workers; same alive flag at every moment in *moments*; returns the flags seen."""
    assert set(theirs.workers.keys()) == set(ours.workers)
    flags: set[bool] = set()
    for now in moments:
        PROBE.now = now
        for host, cw in theirs.workers.items():
            w = ours.worker(host)
            assert w is not None
            assert w.alive == celery_alive(cw, now), (host, now)
            flags.add(w.alive)
            assert w.freq == cw.freq
            assert (w.active, w.processed, w.pid, w.loadavg) == (
                cw.active,
                cw.processed,
                cw.pid,
                cw.loadavg,
            )
    return flags


# --------------------------------------------------------------------- fixtures


def _fixture_events(kind: str) -> list[dict[str, Any]]:
    """The events of a capture, as a receiver hands them out (with ``local_received``)."""
    entries = json.loads((FIXTURES / f"{kind}-capture.json").read_text())
    events: list[dict[str, Any]] = []
    for entry in entries:
        if kind == "amqp":
            msg = IncomingMessage(
                routing_key=entry["routing_key"],
                body=entry["body"].encode(),
                content_type=entry["content_type"],
                content_encoding=entry["content_encoding"],
                headers=entry["headers"],
            )
        else:
            if "celeryev" not in entry["channel"]:
                continue  # the pidbox broadcast
            # kombu's Redis envelope: the body, base64-encoded, and its labels.
            envelope = json.loads(entry["data"])
            assert envelope["properties"]["body_encoding"] == "base64"
            msg = IncomingMessage(
                routing_key="",
                body=base64.b64decode(envelope["body"]),
                content_type=envelope["content-type"],
                content_encoding=envelope["content-encoding"],
                headers=envelope["headers"],
            )
        dicts, errors = decode_message(msg)
        assert not errors
        for d in dicts:
            if d["type"].startswith("task-"):
                d["local_received"] = d["timestamp"]
            else:
                d["local_received"] = d["timestamp"] + 0.003
            events.append(d)
    return events


@pytest.mark.parametrize("kind", ["amqp", "redis"])
def test_fixture_capture_matches_celery(kind: str) -> None:
    events = _fixture_events(kind)
    types = {e["type"] for e in events}
    assert {"task-sent", "task-received", "task-succeeded", "task-failed", "task-retried"} <= types
    assert {"task-revoked", "worker-online", "worker-heartbeat", "worker-offline"} <= types
    theirs, ours, flags = feed_checking_liveness(events, 1, (0.1, 1.0, 3.0, 5.0, 130.0))
    assert flags == {True, False}
    assert_same_tasks(theirs, ours)
    states = sorted(t.state for t in ours.tasks.values())
    assert states.count("SUCCESS") == 3
    assert {"FAILURE", "REVOKED"} <= set(states)
    first, last = events[0]["timestamp"], events[-1]["timestamp"]
    moments = [first + i * 0.5 for i in range(int((last - first) * 2) + 20)]
    assert assert_same_workers(theirs, ours, moments) == {False}
    # The capture ends with a warm shutdown.
    w = ours.worker("capture@host")
    assert w is not None and w.offline and not w.alive


@pytest.mark.parametrize("kind", ["amqp", "redis"])
def test_fixture_capture_shuffled_matches_celery(kind: str) -> None:
    events = _fixture_events(kind)
    rng = random.Random(5)
    for _ in range(20):
        shuffled = events[:]
        rng.shuffle(shuffled)
        theirs, ours = feed_both(shuffled)
        assert_same_tasks(theirs, ours)


# --------------------------------------------------------------------- a large generated stream


def generate_stream(n_tasks: int, seed: int) -> list[dict[str, Any]]:
    """Several workers running tasks with every outcome, heartbeats, restarts, disorder."""
    rng = random.Random(seed)
    hosts = [f"celery@w{i}" for i in range(6)]
    events: list[tuple[float, dict[str, Any]]] = []
    clock = 0

    def add(ts: float, type_: str, host: str, lag: float = 0.0, **fields: Any) -> None:
        nonlocal clock
        clock += 1
        ev = {"hostname": host, "utcoffset": 0, "pid": 100, "clock": clock, **fields}
        ev["timestamp"] = ts
        ev["type"] = type_
        ev["local_received"] = ts + lag
        events.append((ts + lag, ev))

    end = T0 + n_tasks * 0.05
    for host in hosts:
        add(T0, "worker-online", host, 0.002, freq=2.0, active=0, processed=0)
        t = T0 + 2
        stop = end - rng.uniform(0, 30) if host != hosts[0] else end
        while t < stop:
            if rng.random() < 0.02:
                t += rng.uniform(3, 10)  # missed heartbeats: the worker looks dead meanwhile
            add(t, "worker-heartbeat", host, rng.uniform(0, 0.05), freq=2.0, active=1, processed=0)
            t += 2.0
        if host == hosts[1]:
            add(stop, "worker-offline", host, 0.001, freq=2.0, active=0, processed=0)
            add(stop + 5, "worker-online", host, 0.001, freq=2.0, active=0, processed=0)
    outcomes = ["succeeded"] * 12 + [
        "failed",
        "retry",
        "revoked",
        "revoked-early",
        "rejected",
        "progress",
        "progress-running",
        "cancelled",
    ]
    for i in range(n_tasks):
        uuid = f"task-{i}"
        ts = T0 + i * 0.05
        host = rng.choice(hosts)
        parent = f"task-{rng.randrange(i)}" if i and rng.random() < 0.3 else None
        base = {
            "name": f"proj.t{i % 9}",
            "args": f"({i},)",
            "kwargs": "{}",
            "root_id": uuid,
            "parent_id": parent,
            "retries": 0,
            "eta": None,
            "expires": None,
        }
        if rng.random() < 0.3:
            add(ts - 0.01, "task-sent", "gen9@client", uuid=uuid, **base, queue="celery")
        outcome = rng.choice(outcomes)
        if outcome == "revoked-early":
            add(ts, "task-revoked", host, uuid=uuid, terminated=False, signum=None, expired=True)
            continue
        add(ts, "task-received", host, uuid=uuid, **base)
        if outcome == "rejected":
            add(ts + 0.01, "task-rejected", host, uuid=uuid, requeue=False)
            continue
        add(ts + 0.01, "task-started", host, uuid=uuid)
        if outcome == "retry":
            add(ts + 0.02, "task-retried", host, uuid=uuid, exception="E()", traceback="tb")
            host2 = rng.choice(hosts)
            add(ts + 0.03, "task-received", host2, uuid=uuid, **{**base, "retries": 1})
            add(ts + 0.04, "task-started", host2, uuid=uuid)
            add(ts + 0.05, "task-succeeded", host2, uuid=uuid, result="1", runtime=0.01)
        elif outcome == "failed":
            add(ts + 0.02, "task-failed", host, uuid=uuid, exception="E()", traceback="tb")
        elif outcome == "revoked":
            add(
                ts + 0.02,
                "task-revoked",
                host,
                uuid=uuid,
                terminated=True,
                signum=15,
                expired=False,
            )
        elif outcome == "progress":
            add(ts + 0.015, "task-progress", host, uuid=uuid, done=1)
            add(ts + 0.02, "task-succeeded", host, uuid=uuid, result="2", runtime=0.01)
        elif outcome == "progress-running":
            add(ts + 0.015, "task-progress", host, uuid=uuid, done=1)
        elif outcome == "cancelled":
            add(ts + 0.02, "task-cancelled", host, uuid=uuid)
        else:
            add(ts + 0.02, "task-succeeded", host, uuid=uuid, result="3", runtime=0.01)
    events.sort(key=lambda pair: pair[0])
    ordered = [ev for _, ev in events]
    # Delivery disorder: swap neighbours (as batching and buffering do).
    for _ in range(len(ordered) // 10):
        j = rng.randrange(len(ordered) - 1)
        ordered[j], ordered[j + 1] = ordered[j + 1], ordered[j]
    return ordered


def test_large_generated_stream_matches_celery() -> None:
    events = generate_stream(6_000, seed=1)
    assert len(events) >= 20_000
    theirs, ours, flags = feed_checking_liveness(events, 97, (0.0, 2.5, 3.9, 4.1, 8.0))
    assert flags == {True, False}
    assert_same_tasks(theirs, ours)
    last = max(e["local_received"] for e in events)
    moments = [T0 + i * 0.37 for i in range(int((last - T0) / 0.37) + 300)]
    assert assert_same_workers(theirs, ours, moments) == {True, False}
    # Both saw every state at least once.
    assert {"SUCCESS", "FAILURE", "REVOKED", "RECEIVED", "PROGRESS", "CANCELLED"} <= set(
        ours.state_counts()
    )


# --------------------------------------------------------------------- any delivery order

TYPES = [
    "task-sent",
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-retried",
    "task-revoked",
    "task-rejected",
    "task-progress",
    "task-cancelled",
]


def make_event(type_: str, index: int, host: str) -> dict[str, Any]:
    """One event of the task ``t``; *index* makes its timestamp and fields distinct."""
    ev: dict[str, Any] = {
        "hostname": "gen1@client" if type_ == "task-sent" else host,
        "utcoffset": 0,
        "pid": 7,
        "clock": index + 1,
        "uuid": "t",
        "timestamp": T0 + index,
        "type": type_,
        "local_received": T0 + index,
    }
    if type_ in ("task-sent", "task-received"):
        ev.update(
            name=f"proj.n{index}",
            args=f"({index},)",
            kwargs="{}",
            root_id="r",
            parent_id=None,
            retries=index,
            eta=None,
            expires=None,
        )
    elif type_ == "task-succeeded":
        ev.update(result=str(index), runtime=0.5)
    elif type_ in ("task-failed", "task-retried"):
        ev.update(exception=f"E({index})", traceback="tb")
    elif type_ == "task-progress":
        ev.update(step=index)
    return ev


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A plausible history of one task (retries included), delivered in any order."""
    types: list[str] = []
    if draw(st.booleans()):
        types.append("task-sent")
    for _ in range(draw(st.integers(0, 2))):
        types += ["task-received", "task-started", "task-retried"]
    end = draw(
        st.sampled_from(
            [
                ["task-received", "task-started", "task-succeeded"],
                ["task-received", "task-started", "task-failed"],
                ["task-received", "task-started", "task-progress", "task-succeeded"],
                ["task-received", "task-started", "task-revoked"],
                ["task-received", "task-started", "task-rejected"],
                ["task-received", "task-rejected"],
                ["task-received", "task-started", "task-cancelled"],
                ["task-revoked"],
                ["task-received", "task-started"],
            ]
        )
    )
    types += end
    hosts = ["celery@a", "celery@b"]
    events = [make_event(t, i, hosts[i % 2]) for i, t in enumerate(types)]
    return draw(st.permutations(events))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_any_delivery_order_matches_celery(events: list[dict[str, Any]]) -> None:
    theirs, ours = feed_both(events)
    assert_same_tasks(theirs, ours)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TYPES), min_size=1, max_size=12))
def test_any_sequence_of_task_events_matches_celery(types: list[str]) -> None:
    events = [make_event(t, i, "celery@a" if i % 3 else "celery@b") for i, t in enumerate(types)]
    theirs, ours = feed_both(events)
    assert_same_tasks(theirs, ours)
