"""ClusterState: task state machine, workers, indexes, bounds, statistics."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from aiocelev import ConfigurationError
from aiocelev._events import Event
from aiocelev._state import ClusterState
from aiocelev._state_index import TaskIndex, newest
from aiocelev._state_liveness import detect_restart
from aiocelev._state_models import CUSTOM_RANK, PRECEDENCE, READY_STATES, TaskState
from aiocelev._state_stats import RateCounter, Reservoir, percentile

T0 = 1_795_500_000.0


class FakeClock:
    """An injectable time source."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


_clock = itertools.count(1)


def task_ev(
    type_: str, uuid: str = "t1", ts: float = T0, host: str = "celery@a", **fields: Any
) -> Event:
    data = {
        "hostname": host,
        "utcoffset": 0,
        "pid": 10,
        "clock": next(_clock),
        "uuid": uuid,
        **fields,
        "timestamp": ts,
        "type": type_,
        "local_received": fields.pop("local_received", ts),
    }
    data.update(fields)
    return Event.from_dict(data)


def received(uuid: str = "t1", ts: float = T0, **kw: Any) -> Event:
    fields = {
        "name": "proj.add",
        "args": "(1, 2)",
        "kwargs": "{}",
        "root_id": uuid,
        "parent_id": None,
        "retries": 0,
        "eta": None,
        "expires": None,
    }
    fields.update(kw)
    return task_ev("task-received", uuid, ts, **fields)


def worker_ev(
    type_: str = "worker-heartbeat",
    host: str = "celery@a",
    ts: float = T0,
    lr: float | None = None,
    **fields: Any,
) -> Event:
    data = {
        "hostname": host,
        "utcoffset": 0,
        "pid": 10,
        "clock": next(_clock),
        "freq": 2.0,
        "active": 0,
        "processed": 0,
        "loadavg": [0.1, 0.2, 0.3],
        "sw_ident": "py-celery",
        "sw_ver": "5.7.0",
        "sw_sys": "Linux",
        "timestamp": ts,
        "type": type_,
        "local_received": ts if lr is None else lr,
    }
    data.update(fields)
    return Event.from_dict(data)


def lifecycle(uuid: str = "t1", ts: float = T0, host: str = "celery@a") -> list[Event]:
    return [
        received(uuid, ts, host=host),
        task_ev("task-started", uuid, ts + 0.5, host=host),
        task_ev("task-succeeded", uuid, ts + 1.5, host=host, result="3", runtime=1.0),
    ]


# --------------------------------------------------------------------- states


def test_normal_lifecycle_keeps_every_field() -> None:
    s = ClusterState()
    for ev in lifecycle():
        s.apply(ev)
    t = s.task("t1")
    assert t is not None
    assert t.state == "SUCCESS" and t.ready
    assert (t.name, t.args, t.kwargs, t.result, t.runtime) == ("proj.add", "(1, 2)", "{}", "3", 1.0)
    assert (t.received, t.started, t.succeeded) == (T0, T0 + 0.5, T0 + 1.5)
    assert t.worker == "celery@a"
    assert t.retries == 0 and t.root_id == "t1"
    d = t.to_dict()
    assert d["state"] == "SUCCESS" and d["ready"] is True and d["children"] == []


@pytest.mark.parametrize("missing", [(), ("eta",), ("name", "parent_id"), ("args", "expires")])
def test_message_fields_present_are_copied_and_absent_ones_kept(missing: tuple[str, ...]) -> None:
    """task-sent / task-received copy the message fields they carry, all of them
    or only some (an event from another client may leave some out): what a later
    event leaves out keeps the value an earlier one gave."""
    first = {
        "name": "proj.a",
        "args": "(1,)",
        "kwargs": "{'a': 1}",
        "root_id": "r1",
        "parent_id": "p1",
        "retries": 1,
        "eta": "2026-01-01T00:00:00",
        "expires": "2026-01-02T00:00:00",
    }
    second = {
        "name": "proj.b",
        "args": "(2,)",
        "kwargs": "{'b': 2}",
        "root_id": "r2",
        "parent_id": "p2",
        "retries": 2,
        "eta": None,
        "expires": None,
    }
    s = ClusterState()
    s.apply(task_ev("task-sent", "t1", T0, **first))
    d = received("t1", T0 + 1)._fields | second
    for key in missing:
        del d[key]
    s.apply(d)
    t = s.task("t1")
    assert t is not None
    for key in first:
        expected = first[key] if key in missing else second[key]
        assert getattr(t, key) == expected, key
    assert s.tasks_by_name(t.name or "") == [t]
    assert s.tasks_by_name("proj.b" if "name" in missing else "proj.a") == []
    s.apply(task_ev("task-sent", t.parent_id or "", T0 + 2))
    assert s.children(t.parent_id or "") == [t]


def test_rarely_set_fields_read_none_and_cost_nothing_until_set() -> None:
    s = ClusterState()
    s.apply_many(lifecycle("ok"))
    s.apply_many([received("bad"), task_ev("task-failed", "bad", T0 + 1, exception="E()")])
    ok, bad = s.task("ok"), s.task("bad")
    assert ok is not None and bad is not None
    rare = [
        *("client", "exception", "traceback", "queue", "exchange", "routing_key", "sent"),
        *("failed", "retried", "revoked", "rejected", "extra"),
    ]
    assert all(getattr(ok, name) is None for name in rare)
    assert {k: v for k, v in ok.to_dict().items() if k in rare} == dict(
        dict.fromkeys(rare), extra={}
    )
    # A task that ran and succeeded holds nothing beyond its slots; a failed
    # one holds only what its failure set.
    assert vars(ok) == {}
    assert vars(bad) == {"failed": T0 + 1, "exception": "E()"}
    assert bad.to_dict()["exception"] == "E()" and bad.traceback is None
    # A fresh record does not see another's values (they are per instance).
    assert TaskState("new").exception is None


def test_every_transition_time_is_recorded() -> None:
    s = ClusterState()
    s.apply(task_ev("task-sent", ts=T0, host="gen1@client", name="proj.add", queue="celery"))
    s.apply(received(ts=T0 + 1))
    s.apply(task_ev("task-started", ts=T0 + 2))
    s.apply(task_ev("task-failed", ts=T0 + 3, exception="ValueError()", traceback="tb"))
    s.apply(task_ev("task-retried", ts=T0 + 4, exception="E()", traceback="tb2"))
    s.apply(task_ev("task-rejected", ts=T0 + 5, requeue=False))
    s.apply(task_ev("task-revoked", ts=T0 + 6, terminated=False))
    t = s.task("t1")
    assert t is not None
    assert (t.sent, t.received, t.started, t.failed, t.retried, t.rejected, t.revoked) == (
        T0,
        T0 + 1,
        T0 + 2,
        T0 + 3,
        T0 + 4,
        T0 + 5,
        T0 + 6,
    )
    assert t.client == "gen1@client"
    assert t.queue == "celery"
    assert t.exception == "E()" and t.traceback == "tb2"
    assert t.state == "REVOKED"


def test_late_received_never_moves_success_back() -> None:
    s = ClusterState()
    s.apply(task_ev("task-started", ts=T0 + 1))
    s.apply(task_ev("task-succeeded", ts=T0 + 2, result="3", runtime=1.0))
    s.apply(received(ts=T0))
    t = s.task("t1")
    assert t is not None
    assert t.state == "SUCCESS"
    # ... but its name and arguments are taken.
    assert t.name == "proj.add" and t.args == "(1, 2)"
    assert t.received == T0
    assert s.tasks_by_name("proj.add") == [t]


def test_late_started_after_failure_keeps_failure() -> None:
    s = ClusterState()
    s.apply(received())
    s.apply(task_ev("task-failed", ts=T0 + 2, exception="E()"))
    s.apply(task_ev("task-started", ts=T0 + 1))
    t = s.task("t1")
    assert t is not None and t.state == "FAILURE" and t.started == T0 + 1


def test_rejected_after_started_stays_started() -> None:
    s = ClusterState()
    s.apply(received())
    s.apply(task_ev("task-started"))
    s.apply(task_ev("task-rejected", requeue=True))
    t = s.task("t1")
    assert t is not None and t.state == "STARTED"
    assert t.rejected is not None


def test_rejected_ranks_below_received() -> None:
    # As in Celery, REJECTED only replaces PENDING / RETRY.
    s = ClusterState()
    s.apply(received())
    s.apply(task_ev("task-rejected", requeue=False))
    assert s.task("t1").state == "RECEIVED"  # type: ignore[union-attr]
    s.apply(task_ev("task-rejected", "t2"))
    assert s.task("t2").state == "REJECTED"  # type: ignore[union-attr]


def test_retry_overrides_and_is_overridden() -> None:
    s = ClusterState()
    s.apply(received())
    s.apply(task_ev("task-started"))
    s.apply(task_ev("task-retried", exception="Retry()"))
    t = s.task("t1")
    assert t is not None and t.state == "RETRY"
    # The retried message arrives again: PENDING-ranked sent / RECEIVED override RETRY.
    s.apply(received(retries=1))
    assert t.state == "RECEIVED" and t.retries == 1
    s.apply(task_ev("task-started"))
    s.apply(task_ev("task-succeeded", result="ok"))
    assert t.state == "SUCCESS"
    # RETRY even overrides a final state (Celery does the same).
    s.apply(task_ev("task-retried"))
    assert t.state == "RETRY" and not t.ready
    # And anything, even PENDING, overrides RETRY.
    s.apply(task_ev("task-sent", host="gen@c"))
    assert t.state == "PENDING"


def test_revoked() -> None:
    s = ClusterState()
    s.apply(received())
    s.apply(task_ev("task-revoked", terminated=False, signum=None, expired=False))
    t = s.task("t1")
    assert t is not None and t.state == "REVOKED" and t.ready
    # A late started does not undo the revoke; success does override it.
    s.apply(task_ev("task-started"))
    assert t.state == "REVOKED"
    s.apply(task_ev("task-succeeded"))
    assert t.state == "SUCCESS"


def test_revoked_without_received() -> None:
    s = ClusterState()
    s.apply(task_ev("task-revoked", expired=True, terminated=False))
    t = s.task("t1")
    assert t is not None and t.state == "REVOKED" and t.name is None


def test_custom_state() -> None:
    s = ClusterState()
    s.apply(received())
    s.apply(task_ev("task-started"))
    s.apply(task_ev("task-progress", current=3, total=10))
    t = s.task("t1")
    assert t is not None
    assert t.state == "PROGRESS"
    assert t.extra == {"current": 3, "total": 10}
    s.apply(task_ev("task-progress", current=4, total=10))
    assert t.extra == {"current": 4, "total": 10}
    s.apply(task_ev("task-succeeded", result="done"))
    assert t.state == "SUCCESS"
    # A custom state cannot override SUCCESS (or FAILURE) ...
    s.apply(task_ev("task-progress", current=10, total=10))
    assert t.state == "SUCCESS"
    assert t.extra["current"] == 10  # fields are still merged
    s2 = ClusterState()
    s2.apply(task_ev("task-failed"))
    s2.apply(task_ev("task-cancelled"))
    assert s2.task("t1").state == "FAILURE"  # type: ignore[union-attr]
    # ... but does override REVOKED (rank 2 < 3, as in Celery).
    s3 = ClusterState()
    s3.apply(task_ev("task-revoked"))
    s3.apply(task_ev("task-cancelled"))
    assert s3.task("t1").state == "CANCELLED"  # type: ignore[union-attr]


def test_precedence_table() -> None:
    order = [
        "SUCCESS",
        "FAILURE",
        "PROGRESS",
        "REVOKED",
        "STARTED",
        "RECEIVED",
        "REJECTED",
        "RETRY",
        "PENDING",
    ]
    ranks = [PRECEDENCE.get(s, CUSTOM_RANK) for s in order]
    assert ranks == list(range(len(order)))
    assert {"SUCCESS", "FAILURE", "REVOKED"} == READY_STATES


def test_wire_dict_is_accepted_and_not_mutated() -> None:
    s = ClusterState()
    d = received().to_dict()
    before = dict(d)
    s.apply(d)
    assert d == before
    assert s.task("t1").state == "RECEIVED"  # type: ignore[union-attr]


def test_malformed_events_are_ignored() -> None:
    s = ClusterState()
    assert s.apply({"no": "type"}) is None
    assert s.apply({"type": "task-started", "hostname": "x"}) is None  # no uuid
    assert s.apply({"type": "worker-heartbeat"}) is None  # no hostname
    assert s.apply({"type": "other-thing"}) is None  # another group
    assert s.ignored_events == 3
    assert s.event_count == 4
    assert len(s) == 0


def test_task_worker_follows_latest_worker_side_event() -> None:
    s = ClusterState()
    s.apply(received(host="celery@a"))
    s.apply(task_ev("task-retried", host="celery@a"))
    s.apply(received(host="celery@b", retries=1))
    t = s.task("t1")
    assert t is not None and t.worker == "celery@b"
    assert s.tasks_by_worker("celery@b") == [t]
    assert s.tasks_by_worker("celery@a") == []
    # task-sent is from a client, not a worker.
    s.apply(task_ev("task-sent", host="gen@client"))
    assert t.worker == "celery@b" and t.client == "gen@client"


def test_parent_and_children_links_in_any_order() -> None:
    s = ClusterState()
    # The child is seen before its parent.
    s.apply(received("child1", parent_id="parent", root_id="parent"))
    s.apply(received("parent"))
    s.apply(received("child2", parent_id="parent", root_id="parent"))
    p = s.task("parent")
    assert p is not None
    assert p.children == ["child1", "child2"]
    assert [c.uuid for c in s.children("parent")] == ["child1", "child2"]
    assert s.task("child1").root_id == "parent"  # type: ignore[union-attr]


# --------------------------------------------------------------------- indexes and bounds


def test_indexes_by_state_name_worker() -> None:
    s = ClusterState()
    for i in range(3):
        s.apply(received(f"a{i}", host="celery@a"))
    s.apply(received("b0", host="celery@b", name="proj.mul"))
    s.apply(task_ev("task-started", "a1", host="celery@a"))
    s.apply(task_ev("task-succeeded", "a2", host="celery@a"))
    assert [t.uuid for t in s.tasks_by_state("RECEIVED")] == ["b0", "a0"]
    assert [t.uuid for t in s.tasks_by_state("STARTED")] == ["a1"]
    assert [t.uuid for t in s.tasks_by_state("SUCCESS")] == ["a2"]
    assert s.state_counts() == {"RECEIVED": 2, "STARTED": 1, "SUCCESS": 1}
    assert [t.uuid for t in s.tasks_by_name("proj.add")] == ["a2", "a1", "a0"]
    assert s.name_counts() == {"proj.add": 3, "proj.mul": 1}
    assert s.task_names() == ["proj.add", "proj.mul"]
    assert s.worker_task_counts() == {"celery@a": 3, "celery@b": 1}
    assert [t.uuid for t in s.tasks_by_worker("celery@a", limit=2)] == ["a2", "a1"]
    assert [t.uuid for t in s.ready_tasks()] == ["a2"]
    assert [t.uuid for t in s.unready_tasks()] == ["b0", "a1", "a0"]


def test_recent_tasks_by_latest_event() -> None:
    s = ClusterState()
    for i in range(5):
        s.apply(received(f"t{i}", ts=T0 + i))
    s.apply(task_ev("task-started", "t1", ts=T0 + 10))
    assert [t.uuid for t in s.recent_tasks(3)] == ["t1", "t4", "t3"]
    assert len(s.recent_tasks(None)) == 5


def _check_indexes(s: ClusterState) -> None:
    """Every index holds exactly the kept tasks, consistently."""
    tasks = dict(s.tasks)
    assert sum(s.state_counts().values()) == len(tasks)
    for state in s.state_counts():
        for t in s.tasks_by_state(state):
            assert tasks[t.uuid] is t and t.state == state
    named = [t for name in s.task_names() for t in s.tasks_by_name(name)]
    assert sorted(t.uuid for t in named) == sorted(
        u for u, t in tasks.items() if t.name is not None
    )
    for host in s.worker_task_counts():
        for t in s.tasks_by_worker(host):
            assert tasks[t.uuid] is t and t.worker == host
    by_worker = sum(s.worker_task_counts().values())
    assert by_worker == sum(1 for t in tasks.values() if t.worker is not None)
    assert len(s.ready_tasks()) + len(s.unready_tasks()) == len(tasks)
    assert all(t.ready for t in s.ready_tasks())
    assert not any(t.ready for t in s.unready_tasks())


def test_eviction_prefers_finished_tasks() -> None:
    s = ClusterState(max_tasks=5)
    # Two unfinished tasks first, then finished ones.
    s.apply(received("u0"))
    s.apply(received("u1"))
    for i in range(3):
        for ev in lifecycle(f"d{i}"):
            s.apply(ev)
    assert len(s) == 5
    s.apply(received("u2"))  # evicts the oldest finished: d0
    assert len(s) == 5
    assert s.task("d0") is None
    assert {"u0", "u1", "u2", "d1", "d2"} == set(s.tasks)
    s.apply(received("u3"))
    s.apply(received("u4"))  # d1 then d2 go
    assert set(s.tasks) == {"u0", "u1", "u2", "u3", "u4"}
    s.apply(received("u5"))  # nothing finished left: the oldest unfinished goes
    assert set(s.tasks) == {"u1", "u2", "u3", "u4", "u5"}
    assert s.evicted_tasks == 4
    _check_indexes(s)


def test_eviction_order_is_finish_order() -> None:
    s = ClusterState(max_tasks=3)
    for u in ("a", "b", "c"):
        s.apply(received(u))
    s.apply(task_ev("task-succeeded", "c"))
    s.apply(task_ev("task-failed", "a"))
    s.apply(received("d"))  # c finished first: it goes first
    assert set(s.tasks) == {"a", "b", "d"}


def test_indexes_consistent_after_heavy_eviction() -> None:
    s = ClusterState(max_tasks=50)
    hosts = ["celery@a", "celery@b", "celery@c"]
    for i in range(500):
        host = hosts[i % 3]
        u = f"t{i}"
        s.apply(received(u, host=host, name=f"proj.t{i % 7}", parent_id=f"t{i // 2}"))
        if i % 4:
            s.apply(task_ev("task-started", u, host=host))
        if i % 3 == 0:
            s.apply(task_ev("task-succeeded", u, host=host))
        if i % 10 == 0:
            # touch an old, maybe evicted task
            s.apply(task_ev("task-retried", f"t{i // 3}", host=hosts[(i + 1) % 3]))
    assert len(s) == 50
    _check_indexes(s)


def test_worker_bound() -> None:
    s = ClusterState(max_workers=2)
    s.apply(worker_ev(host="a"))
    s.apply(worker_ev(host="b"))
    s.apply(worker_ev(host="a"))  # a is now the most recently heard from
    s.apply(worker_ev(host="c"))
    assert set(s.workers) == {"a", "c"}
    assert s.evicted_workers == 1


@pytest.mark.parametrize(
    "options",
    [
        {"max_tasks": 0},
        {"max_tasks": 1.5},
        {"max_workers": 0},
        {"max_workers": True},
        {"expire_window": 0},
        {"expire_window": "200"},
        {"rate_window": 0},
        {"reservoir_size": 0},
        {"time_source": 1_700_000_000.0},
    ],
)
def test_invalid_arguments(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ClusterState(**options)


def test_time_source_is_the_only_name_for_the_time_source() -> None:
    # ``clock`` means the Lamport clock everywhere else in the library.
    with pytest.raises(TypeError):
        ClusterState(clock=FakeClock())  # type: ignore[call-arg]


# --------------------------------------------------------------------- index helper


def test_task_index_add_move_remove() -> None:
    idx: TaskIndex[str] = TaskIndex()
    idx.add("A", "u1", "r1")
    idx.add("A", "u2", "r2")
    idx.add("B", "u3", "r3")
    assert idx.newest("A") == ["r2", "r1"]
    assert idx.newest("A", limit=1) == ["r2"]
    assert idx.counts() == {"A": 2, "B": 1}
    # A move puts the record at the newest end of its new group.
    idx.move("A", "B", "u1", "r1")
    assert idx.newest("B") == ["r1", "r3"] and idx.newest("A") == ["r2"]
    # The last record leaving a group drops the group.
    idx.move("A", "C", "u2", "r2")
    assert "A" not in idx and idx.newest("A") == []
    assert idx.keys() == ["B", "C"] and len(idx) == 2 and sorted(idx) == ["B", "C"]
    idx.remove("C", "u2")
    assert idx.counts() == {"B": 2}
    assert "TaskIndex" in repr(idx)
    idx.clear()
    assert idx.counts() == {} and len(idx) == 0


def test_task_index_none_means_not_indexed() -> None:
    idx: TaskIndex[str] = TaskIndex()
    idx.move(None, "A", "u1", "r1")  # only adds
    assert idx.counts() == {"A": 1}
    idx.move("A", None, "u1", "r1")  # only removes
    assert idx.counts() == {}
    idx.remove(None, "u1")  # nothing to do
    assert idx.counts() == {}


def test_task_index_refuses_a_record_it_does_not_hold() -> None:
    idx: TaskIndex[str] = TaskIndex()
    idx.add("A", "u1", "r1")
    with pytest.raises(KeyError):
        idx.remove("A", "u2")
    with pytest.raises(KeyError):
        idx.move("B", "A", "u1", "r1")
    assert idx.counts() == {"A": 1}


def test_newest_of_a_plain_dict() -> None:
    assert newest(None, 3) == []
    assert newest({}, None) == []
    assert newest({"a": 1, "b": 2, "c": 3}, 2) == [3, 2]


# --------------------------------------------------------------------- workers


def test_worker_fields_and_alive_expiry() -> None:
    clock = FakeClock(T0)
    s = ClusterState(time_source=clock)
    s.apply(worker_ev("worker-online", ts=T0, active=1, processed=5, pid=42))
    w = s.worker("celery@a")
    assert w is not None
    assert (w.pid, w.freq, w.active, w.processed, w.sw_ident, w.sw_ver, w.sw_sys) == (
        42,
        2.0,
        1,
        5,
        "py-celery",
        "5.7.0",
        "Linux",
    )
    assert w.loadavg == [0.1, 0.2, 0.3]
    assert w.alive and w.status == "online"
    clock.now = T0 + 3.9
    assert w.alive
    clock.now = T0 + 4.0  # last seen + 2 x freq
    assert not w.alive and w.status == "lost"
    assert w.heartbeat_expires == T0 + 4.0
    s.apply(worker_ev(ts=T0 + 4.5))
    assert w.alive and w.heartbeat_count == 1 and w.last_heartbeat == T0 + 4.5
    assert s.alive_workers() == [w]
    s.apply(worker_ev("worker-offline", ts=T0 + 5))
    assert not w.alive and w.offline and w.status == "offline"
    assert s.alive_workers() == []
    d = w.to_dict()
    assert d["alive"] is False and d["status"] == "offline" and d["hostname"] == "celery@a"


def test_alive_uses_local_received_not_sender_timestamp() -> None:
    clock = FakeClock(T0 + 100)
    s = ClusterState(time_source=clock)
    # Sender clock 100 s behind: still alive, drift reported.
    s.apply(worker_ev(ts=T0, lr=T0 + 100))
    w = s.worker("celery@a")
    assert w is not None and w.alive
    assert w.drift == pytest.approx(100.0)


def test_expire_window_configurable() -> None:
    clock = FakeClock(T0)
    s = ClusterState(time_source=clock, expire_window=100)
    s.apply(worker_ev(ts=T0))
    clock.now = T0 + 2.5
    assert not s.worker("celery@a").alive  # type: ignore[union-attr]


def test_task_events_keep_a_worker_alive_with_default_freq() -> None:
    clock = FakeClock(T0)
    s = ClusterState(time_source=clock)
    s.apply(received(ts=T0, host="celery@z"))
    w = s.worker("celery@z")
    assert w is not None and w.freq == 60.0
    clock.now = T0 + 119
    assert w.alive
    clock.now = T0 + 120
    assert not w.alive


def test_offline_from_unknown_worker_creates_nothing() -> None:
    s = ClusterState()
    assert s.apply(worker_ev("worker-offline", host="ghost")) is None
    assert s.worker("ghost") is None


def test_missing_local_received_uses_injected_clock() -> None:
    clock = FakeClock(T0 + 50)
    s = ClusterState(time_source=clock)
    d = worker_ev(ts=T0).to_dict()
    del d["local_received"]
    s.apply(d)
    w = s.worker("celery@a")
    assert w is not None and w.last_seen == T0 + 50 and w.alive
    assert w.drift is None


def test_drift_with_fractional_utcoffset() -> None:
    s = ClusterState()
    s.apply(worker_ev(ts=T0, lr=T0 + 0.25, utcoffset=-5.5))
    w = s.worker("celery@a")
    assert w is not None and w.drift == pytest.approx(0.25) and w.utcoffset == -5.5


@pytest.mark.parametrize(
    "second",
    [
        {"pid": 11},  # new process id
        {"processed": 0, "clock": 500},  # counter went back to zero
        {"clock": 3},  # Lamport clock restarted near zero
    ],
)
def test_restart_detection(second: dict[str, Any]) -> None:
    s = ClusterState()
    s.apply(worker_ev(pid=10, processed=40, clock=400))
    s.apply(worker_ev(pid=10, processed=41, clock=410))
    w = s.worker("celery@a")
    assert w is not None and w.restarts == 0
    fields = {"pid": 10, "processed": 42, "clock": 420, **second}
    s.apply(worker_ev(**fields))
    assert w.restarts == 1


def test_detect_restart_compares_with_the_record_before_the_event() -> None:
    s = ClusterState()
    w = s.apply(worker_ev(pid=10, processed=40, clock=400))
    assert w is not None and not isinstance(w, TaskState)
    assert detect_restart(w, 10, 41, 401, online=False) == (False, False)
    assert detect_restart(w, 11, 41, 401, online=False) == (True, True)  # new pid
    assert detect_restart(w, 10, 39, 401, online=False) == (True, True)  # counter went down
    assert detect_restart(w, 10, 41, 5, online=False) == (True, True)  # clock restarted
    assert detect_restart(w, 10, 41, 395, online=False) == (False, False)  # small step back
    w.offline = True
    assert detect_restart(w, 10, 41, 401, online=True) == (True, False)  # back online


def test_restart_online_after_offline() -> None:
    s = ClusterState()
    s.apply(worker_ev("worker-online", clock=1))
    s.apply(worker_ev(clock=2))
    s.apply(worker_ev("worker-offline", clock=3))
    s.apply(worker_ev("worker-online", clock=4))
    w = s.worker("celery@a")
    assert w is not None and w.restarts == 1 and not w.offline


def test_no_restart_for_normal_stream() -> None:
    s = ClusterState()
    s.apply(received(host="celery@a"))  # worker first known from a task event
    for i in range(10):
        s.apply(
            worker_ev("worker-online" if i == 0 else "worker-heartbeat", processed=i, clock=100 + i)
        )
    assert s.worker("celery@a").restarts == 0  # type: ignore[union-attr]


# --------------------------------------------------------------------- loss estimate


def _run(
    s: ClusterState, uuid: str, host: str = "celery@a", final: str = "task-succeeded", **fields: Any
) -> None:
    s.apply(received(uuid, host=host))
    s.apply(task_ev("task-started", uuid, host=host))
    s.apply(task_ev(final, uuid, host=host, **fields))


def test_loss_estimate_none_lost() -> None:
    s = ClusterState()
    s.apply(worker_ev("worker-online", processed=0, active=0))
    _run(s, "t1")
    _run(s, "t2", final="task-failed")
    _run(s, "t3", final="task-retried")
    _run(s, "t4", final="task-revoked", terminated=True)
    s.apply(received("t5"))
    s.apply(task_ev("task-started", "t5"))  # still running
    s.apply(worker_ev(processed=5, active=1))
    w = s.worker("celery@a")
    assert w is not None
    assert w.missed_tasks_estimate == 0
    assert w.missed_started_estimate == 0


def test_loss_estimate_counts_lost_events() -> None:
    s = ClusterState()
    s.apply(worker_ev("worker-online", processed=10, active=2))  # baseline: 8 done
    _run(s, "t1")
    s.apply(received("t2"))  # started + succeeded of t2 lost
    s.apply(received("t3"))
    s.apply(task_ev("task-started", "t3"))  # succeeded of t3 lost
    # Meanwhile the two tasks active at the baseline finished, one event lost.
    s.apply(task_ev("task-succeeded", "old1"))
    s.apply(worker_ev(processed=13, active=0))
    w = s.worker("celery@a")
    assert w is not None
    # processed - active grew 13 - 8 = 5; completions seen: t1 + old1 = 2.
    assert w.missed_tasks_estimate == 3
    # processed grew 3; task-started seen: t1, t3.
    assert w.missed_started_estimate == 1
    assert w.to_dict()["missed_tasks_estimate"] == 3


def test_loss_estimate_ignores_revokes_of_tasks_that_never_ran() -> None:
    s = ClusterState()
    s.apply(worker_ev(processed=0, active=0))
    s.apply(task_ev("task-revoked", "x", terminated=False, expired=True))
    _run(s, "t1")
    s.apply(worker_ev(processed=1, active=0))
    w = s.worker("celery@a")
    assert w is not None and w.missed_tasks_estimate == 0


def test_loss_estimate_survives_restart() -> None:
    s = ClusterState()
    s.apply(worker_ev("worker-online", processed=0, active=0, pid=1))
    s.apply(worker_ev(processed=4, active=0, pid=1))  # 4 completions, none seen
    w = s.worker("celery@a")
    assert w is not None and w.missed_tasks_estimate == 4
    # The process restarts: its counter starts again.
    s.apply(worker_ev("worker-online", processed=0, active=0, pid=2))
    assert w.restarts == 1
    _run(s, "t1")
    s.apply(worker_ev(processed=1, active=0, pid=2))
    assert w.missed_tasks_estimate == 4  # nothing more lost


def test_loss_estimate_ignores_remote_heartbeat_without_counters() -> None:
    s = ClusterState()
    d = worker_ev(freq=5).to_dict()
    for k in ("active", "processed", "loadavg"):
        del d[k]
    s.apply(d)
    w = s.worker("celery@a")
    assert w is not None and w.missed_tasks_estimate == 0 and w.freq == 5


# --------------------------------------------------------------------- statistics


def test_event_counters_and_rates() -> None:
    clock = FakeClock(T0)
    s = ClusterState(time_source=clock, rate_window=10)
    for sec in range(10):
        for _ in range(5):
            s.apply(worker_ev(ts=T0 + sec + 0.5))
        s.apply(task_ev("task-received", f"t{sec}", ts=T0 + sec + 0.5))
    assert s.event_counts() == {"worker-heartbeat": 50, "task-received": 10}
    clock.now = T0 + 10.2
    assert s.rates() == {"worker-heartbeat": 5.0, "task-received": 1.0}
    assert s.rate("worker-heartbeat") == 5.0
    assert s.rate() == 6.0
    assert s.rate("task-failed") == 0.0
    clock.now = T0 + 15.0  # half the window is now empty
    assert s.rates() == {"worker-heartbeat": 2.5, "task-received": 0.5}
    clock.now = T0 + 100
    assert s.rates() == {}


def test_rate_counter_late_event_goes_to_current_second() -> None:
    r = RateCounter(window=2)
    r.add("a", 100.5)
    r.add("a", 50.0)
    assert r.rates(101.0) == {"a": 1.0}
    with pytest.raises(ValueError):
        RateCounter(window=0)


def test_runtime_and_queue_wait_percentiles() -> None:
    s = ClusterState()
    for i in range(1, 101):
        u = f"t{i}"
        s.apply(received(u, ts=T0))
        s.apply(task_ev("task-started", u, ts=T0 + i / 100))
        s.apply(task_ev("task-succeeded", u, ts=T0 + 2, runtime=float(i)))
    rp = s.runtime_percentiles((0, 50, 90, 100))
    assert rp[0] == 1.0 and rp[100] == 100.0
    assert rp[50] == pytest.approx(50.5)
    assert rp[90] == pytest.approx(90.1)
    qp = s.queue_wait_percentiles((50,))
    assert qp[50] == pytest.approx(0.505)
    assert s.task("t3").queue_wait == pytest.approx(0.03)  # type: ignore[union-attr]


def test_queue_wait_out_of_order_and_retries_and_eta() -> None:
    s = ClusterState()
    s.apply(task_ev("task-started", "a", ts=T0 + 2))
    s.apply(received("a", ts=T0))  # late: still measured once
    s.apply(received("e", ts=T0, eta="2030-01-01T00:00:00+00:00"))
    s.apply(task_ev("task-started", "e", ts=T0 + 50))  # waiting for an eta is not queueing
    s.apply(received("r", ts=T0))
    s.apply(task_ev("task-started", "r", ts=T0 + 1))
    s.apply(task_ev("task-retried", "r", ts=T0 + 2))
    s.apply(received("r", ts=T0 + 3, retries=1))
    s.apply(task_ev("task-started", "r", ts=T0 + 7))
    assert sorted(s.queue_waits.values()) == [1.0, 2.0, 4.0]


def test_reservoir_keeps_most_recent() -> None:
    r = Reservoir(3)
    assert r.percentile(50) is None
    for v in (1.0, 2.0, 3.0, 4.0, 5.0):
        r.add(v)
    assert r.values() == [3.0, 4.0, 5.0]
    assert len(r) == 3 and r.count == 5
    assert r.percentile(50) == 4.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    with pytest.raises(ValueError):
        Reservoir(0)


def test_bounded_reservoir_in_state() -> None:
    s = ClusterState(reservoir_size=10)
    for i in range(100):
        s.apply(task_ev("task-succeeded", f"t{i}", runtime=float(i)))
    assert len(s.runtimes) == 10
    assert s.runtime_percentiles((0,)) == {0: 90.0}


def test_clear() -> None:
    s = ClusterState()
    for ev in lifecycle():
        s.apply(ev)
    s.apply(worker_ev())
    s.clear()
    assert len(s) == 0 and not s.workers and s.event_counts() == {} and s.event_count == 0
    assert s.state_counts() == {} and len(s.runtimes) == 0
    assert "ClusterState" in repr(s)


# --------------------------------------------------------------------- follow


async def test_follow_applies_then_yields() -> None:
    events = [*lifecycle("f1"), worker_ev()]

    async def source():
        for ev in events:
            yield ev

    s = ClusterState()
    seen = []
    async for ev in s.follow(source()):
        seen.append(ev)
        if ev.type == "task-started":
            # Already applied when handed out.
            assert s.task("f1").state == "STARTED"  # type: ignore[union-attr]
    assert seen == events
    assert s.task("f1").state == "SUCCESS"  # type: ignore[union-attr]
    assert s.worker("celery@a") is not None


def test_task_event_liveness_uses_receive_time() -> None:
    # Celery counts the sender's timestamp of task events; ClusterState the
    # receive time, like for worker events (a sender clock far behind does
    # not make a busy worker look dead).
    clock = FakeClock(T0 + 1000)
    s = ClusterState(time_source=clock)
    s.apply(worker_ev(ts=T0 + 1000))
    s.apply(task_ev("task-started", ts=T0, local_received=T0 + 1003))
    w = s.worker("celery@a")
    assert w is not None and w.last_seen == T0 + 1003
    clock.now = T0 + 1006
    assert w.alive


def test_apply_returns_the_record_and_accepts_any_mapping() -> None:
    from types import MappingProxyType

    s = ClusterState()
    t = s.apply(MappingProxyType(received().to_dict()))
    assert t is s.task("t1")
    w = s.apply(worker_ev())
    assert w is s.worker("celery@a")
    assert s.apply({"type": "client-custom", "hostname": "x"}) is None
    assert s.event_counts()["client-custom"] == 1


async def test_follow_a_real_receiver_over_the_memory_broker() -> None:
    from contextlib import aclosing

    import anyio

    from aiocelev import EventDispatcher, EventReceiver

    url = "memory://state-follow"
    clock = FakeClock()
    s = ClusterState(time_source=clock)
    online: list[Event] = []
    async with EventReceiver(url) as receiver, EventDispatcher(url, hostname="celery@m") as d:
        await d.send("worker-online", freq=2.0, active=0, processed=0)
        await d.send("task-received", uuid="e2e", name="proj.add", args="(1,)", kwargs="{}")
        await d.send("task-started", uuid="e2e")
        await d.send("task-succeeded", uuid="e2e", result="2", runtime=0.25)
        await d.flush()
        with anyio.fail_after(5):
            async with aclosing(s.follow(receiver)) as events:
                async for ev in events:
                    if ev.type == "worker-online":
                        online.append(ev)
                    if ev.type == "task-succeeded":
                        break
    t = s.task("e2e")
    assert t is not None and t.state == "SUCCESS" and t.worker == "celery@m"
    assert t.name == "proj.add" and t.result == "2"
    w = s.worker("celery@m")
    assert w is not None and len(online) == 1
    received_at = online[0]["local_received"]
    assert w.drift == received_at - online[0]["timestamp"]
    clock.now = received_at + 1.0  # within 2 x freq of the latest event
    assert w.alive
    assert s.runtime_percentiles((50,)) == {50: 0.25}


_TYPES = [
    "task-sent",
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-retried",
    "task-revoked",
    "task-rejected",
    "task-progress",
]


def test_indexes_consistent_for_random_streams() -> None:
    from hypothesis import given, settings, strategies as st

    step = st.tuples(
        st.sampled_from(_TYPES),
        st.integers(0, 15),  # task
        st.integers(0, 3),  # worker
        st.integers(0, 4),  # name
        st.integers(-1, 15),  # parent (-1: none)
    )

    @settings(max_examples=300, deadline=None)
    @given(st.integers(1, 6), st.lists(step, max_size=60))
    def run(max_tasks: int, steps: list[tuple[str, int, int, int, int]]) -> None:
        s = ClusterState(max_tasks=max_tasks)
        for type_, task, worker, name, parent in steps:
            fields: dict[str, Any] = {}
            if type_ in ("task-sent", "task-received"):
                fields = {"name": f"n{name}", "parent_id": f"t{parent}" if parent >= 0 else None}
            s.apply(task_ev(type_, f"t{task}", host=f"w{worker}", **fields))
            assert len(s) <= max_tasks
            _check_indexes(s)

    run()


def _index_view(s: ClusterState) -> dict[str, Any]:
    """Everything the indexes answer, in order."""
    return {
        "states": s.state_counts(),
        "names": s.name_counts(),
        "workers": s.worker_task_counts(),
        "task_names": s.task_names(),
        "by_state": {k: [t.uuid for t in s.tasks_by_state(k)] for k in s.state_counts()},
        "by_name": {k: [t.uuid for t in s.tasks_by_name(k)] for k in s.task_names()},
        "by_worker": {k: [t.uuid for t in s.tasks_by_worker(k)] for k in s.worker_task_counts()},
    }


def test_indexes_built_on_first_query_match_indexes_kept_all_along() -> None:
    """The indexes by state, name and worker are built when first asked for:
    the answer (groups and their order) is the one keeping them from the
    first event gives, whenever the first query comes."""
    from hypothesis import given, settings, strategies as st

    step = st.one_of(
        st.tuples(
            st.sampled_from(_TYPES),
            st.integers(0, 15),  # task
            st.integers(0, 3),  # worker
            st.integers(0, 4),  # name
        ),
        st.tuples(st.just("forget"), st.integers(0, 15), st.just(0), st.just(0)),
        st.tuples(st.just("restore"), st.integers(0, 15), st.integers(0, 3), st.integers(0, 4)),
    )

    @settings(max_examples=300, deadline=None)
    @given(st.integers(1, 8), st.lists(step, max_size=60), st.integers(0, 60))
    def run(max_tasks: int, steps: list[tuple[str, int, int, int]], first_query: int) -> None:
        kept = ClusterState(max_tasks=max_tasks)
        kept.state_counts()  # indexes kept from the start
        lazy = ClusterState(max_tasks=max_tasks)
        for i, (type_, task, worker, name) in enumerate(steps):
            if i == first_query:
                assert _index_view(lazy) == _index_view(kept)
            for s in (kept, lazy):
                if type_ == "forget":
                    s.forget_task(f"t{task}")
                elif type_ == "restore":
                    s.restore_task(
                        {
                            "uuid": f"t{task}",
                            "state": "STARTED",
                            "name": f"r{name}",
                            "worker": f"w{worker}",
                        }
                    )
                else:
                    fields: dict[str, Any] = {}
                    if type_ in ("task-sent", "task-received"):
                        fields = {"name": f"n{name}"}
                    s.apply(task_ev(type_, f"t{task}", host=f"w{worker}", **fields))
        assert _index_view(lazy) == _index_view(kept)
        _check_indexes(lazy)

    run()


def test_a_state_never_asked_by_index_keeps_no_index() -> None:
    """Until a query needs them, the indexes hold nothing (what they cost is
    paid by states that are asked)."""
    s = ClusterState(max_tasks=5)
    for i in range(20):
        for ev in lifecycle(f"t{i}"):
            s.apply(ev)
    assert len(s._by_state) == len(s._by_name) == len(s._by_worker) == 0
    assert s.state_counts() == {"SUCCESS": 5}
    assert len(s._by_state) == 1


def test_per_worker_event_counts() -> None:
    s = ClusterState()
    s.apply(worker_ev("worker-online"))
    s.apply(worker_ev())
    for ev in lifecycle("a"):
        s.apply(ev)
    s.apply(task_ev("task-failed", "b"))
    s.apply(task_ev("task-sent", "c", host="gen@client"))  # a client, not a worker
    w = s.worker("celery@a")
    assert w is not None
    assert w.event_counts == {
        "worker-online": 1,
        "worker-heartbeat": 1,
        "task-received": 1,
        "task-started": 1,
        "task-succeeded": 1,
        "task-failed": 1,
    }
    assert s.worker("gen@client") is None


def test_tasks_by_time_sorts_by_state_timestamp() -> None:
    s = ClusterState()
    s.apply(received("late", ts=T0 + 10))
    s.apply(received("early", ts=T0))
    s.apply(received("mid", ts=T0 + 5))
    assert [t.uuid for t in s.tasks_by_time(2)] == ["late", "mid"]
    assert [t.uuid for t in s.tasks_by_time(None)] == ["late", "mid", "early"]
    # Arrival order is a different thing.
    assert [t.uuid for t in s.recent_tasks(3)] == ["mid", "early", "late"]


def test_garbage_field_values_never_raise() -> None:
    from hypothesis import given, settings, strategies as st

    values = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=5),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )
    keys = st.sampled_from(
        [
            "uuid",
            "hostname",
            "timestamp",
            "local_received",
            "clock",
            "pid",
            "freq",
            "active",
            "processed",
            "name",
            "parent_id",
            "root_id",
            "runtime",
            "eta",
            "terminated",
            "utcoffset",
        ]
    )
    event = st.builds(
        lambda type_, fields, uuid, host: (
            {**fields, "type": type_, "uuid": uuid, "hostname": host}
            if uuid is not None
            else {**fields, "type": type_}
        ),
        st.sampled_from([*_TYPES, "worker-online", "worker-heartbeat", "worker-offline", "x-y"]),
        st.dictionaries(keys, values, max_size=8),
        st.one_of(st.none(), st.sampled_from(["t1", "t2"])),
        st.sampled_from(["celery@a", "celery@b"]),
    )

    @settings(max_examples=150, deadline=None)
    @given(st.lists(event, max_size=20))
    def run(events: list[dict[str, Any]]) -> None:
        s = ClusterState(max_tasks=3, time_source=FakeClock(T0))
        for ev in events:
            s.apply(ev)
        _check_indexes(s)
        for w in s.workers.values():
            w.to_dict()
        for t in s.tasks.values():
            t.to_dict()
        s.rates()
        s.tasks_by_time()
        s.runtime_percentiles()
        s.queue_wait_percentiles()

    run()
