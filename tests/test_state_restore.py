"""ClusterState.restore_task / restore_worker: loading records known from elsewhere."""

from __future__ import annotations

import pytest

from aiocelev import ConfigurationError
from aiocelev._state import ClusterState

from .test_state import T0, FakeClock, _check_indexes, lifecycle, received, task_ev, worker_ev


def _snapshot(s: ClusterState, uuid: str) -> dict[str, object]:
    t = s.task(uuid)
    assert t is not None
    return t.to_dict()


def test_restored_task_equals_the_original() -> None:
    src = ClusterState()
    for e in [
        *lifecycle("p"),
        received("c", T0 + 1, parent_id="p"),
        task_ev("task-progress", "c", T0 + 2, done=3),
    ]:
        src.apply(e)
    dst = ClusterState()
    for uuid in ("p", "c"):
        restored = dst.restore_task(_snapshot(src, uuid))
        assert restored is dst.task(uuid)
        assert restored.to_dict() == _snapshot(src, uuid)
    assert [t.uuid for t in dst.children("p")] == ["c"]
    assert dst.state_counts() == {"SUCCESS": 1, "PROGRESS": 1}
    assert dst.tasks_by_name("proj.add") and dst.tasks_by_worker("celery@a")
    assert dst.event_count == 0 and dst.event_counts() == {}
    assert len(dst.runtimes) == 0 and len(dst.queue_waits) == 0
    _check_indexes(dst)


def test_restore_overwrites_and_moves_every_index() -> None:
    s = ClusterState()
    s.apply(received("t1", host="celery@a"))
    s.apply(received("t2", host="celery@a"))
    s.restore_task({"uuid": "t1", "state": "SUCCESS", "name": "proj.other", "worker": "celery@b"})
    t1 = s.task("t1")
    assert t1 is not None and t1.ready and t1.args == "(1, 2)"  # missing keys stay
    assert s.state_counts() == {"SUCCESS": 1, "RECEIVED": 1}
    assert [t.uuid for t in s.tasks_by_name("proj.other")] == ["t1"]
    assert [t.uuid for t in s.tasks_by_worker("celery@b")] == ["t1"]
    assert [t.uuid for t in s.ready_tasks()] == ["t1"]
    assert [t.uuid for t in s.recent_tasks()] == ["t1", "t2"]
    _check_indexes(s)
    s.restore_task({"uuid": "t1", "state": "STARTED"})  # back across the finished line
    assert [t.uuid for t in s.unready_tasks()] == ["t1", "t2"] and not s.ready_tasks()
    _check_indexes(s)


def test_events_after_restore_follow_precedence() -> None:
    s = ClusterState()
    s.restore_task({"uuid": "t1", "state": "SUCCESS", "name": "proj.add"})
    s.apply(task_ev("task-started", "t1", T0 + 5))  # logically older: state kept
    t = s.task("t1")
    assert t is not None and t.state == "SUCCESS" and t.started == T0 + 5
    s.apply(task_ev("task-retried", "t1", T0 + 6))  # RETRY always overrides
    assert t.state == "RETRY"
    _check_indexes(s)


def test_restore_respects_the_bound_and_evicts_finished_first() -> None:
    s = ClusterState(max_tasks=3)
    s.restore_task({"uuid": "done", "state": "SUCCESS"})
    s.restore_task({"uuid": "a", "state": "STARTED"})
    s.restore_task({"uuid": "b", "state": "RECEIVED"})
    s.restore_task({"uuid": "c", "state": "SUCCESS"})
    assert sorted(s.tasks) == ["a", "b", "c"] and s.evicted_tasks == 1
    s.restore_task({"uuid": "d"})
    assert sorted(s.tasks) == ["a", "b", "d"] and s.evicted_tasks == 2
    d = s.task("d")
    assert d is not None and d.state == "PENDING"
    _check_indexes(s)


def test_forget_task_drops_it_from_every_index() -> None:
    s = ClusterState(max_tasks=10)
    for e in [*lifecycle("done"), received("open", host="celery@b")]:
        s.apply(e)
    forgotten = s.forget_task("done")
    assert forgotten is not None and forgotten.uuid == "done"
    assert s.task("done") is None and sorted(s.tasks) == ["open"]
    assert not s.ready_tasks() and [t.uuid for t in s.unready_tasks()] == ["open"]
    assert s.state_counts() == {"RECEIVED": 1} and s.evicted_tasks == 0
    _check_indexes(s)
    assert s.forget_task("done") is None  # not kept: nothing to do
    s.forget_task("open")
    assert len(s) == 0 and s.task_names() == [] and s.worker_task_counts() == {}
    _check_indexes(s)
    s.apply(received("done"))  # an event for a forgotten task starts it afresh
    t = s.task("done")
    assert t is not None and t.state == "RECEIVED" and t.succeeded is None
    _check_indexes(s)


def test_restore_ignores_index_values_of_the_wrong_type() -> None:
    s = ClusterState()
    t = s.restore_task(
        {"uuid": "t1", "state": 3, "name": ["x"], "worker": 5, "parent_id": {}, "ready": True}
    )
    assert (t.state, t.name, t.worker, t.parent_id) == ("PENDING", None, None, None)
    _check_indexes(s)


@pytest.mark.parametrize("fields", [{}, {"uuid": None}, {"uuid": 1}])
def test_restore_task_needs_a_uuid(fields: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        ClusterState().restore_task(fields)


def test_restored_worker_equals_the_original_and_ages() -> None:
    clock = FakeClock()
    src = ClusterState(time_source=clock)
    src.apply(worker_ev("worker-online", ts=T0))
    src.apply(worker_ev(ts=T0 + 1, processed=3, active=1))
    src.apply(task_ev("task-started", "t1", T0 + 1.5))
    clock.now = T0 + 2
    w = src.worker("celery@a")
    assert w is not None
    dst = ClusterState(time_source=clock)
    restored = dst.restore_worker(w.to_dict())
    assert restored is dst.worker("celery@a")
    expected = w.to_dict()
    expected.update(missed_tasks_estimate=0, missed_started_estimate=0)
    assert restored.to_dict() == expected
    assert restored.alive
    clock.now = T0 + 1.5 + 4.1  # past 2 x freq after the last event received
    assert restored.status == "lost"
    # A heartbeat from the same process is not a restart; a new pid is.
    dst.apply(worker_ev(ts=clock.now, lr=clock.now, processed=4, active=0))
    assert restored.restarts == 0 and restored.alive
    dst.apply(worker_ev(ts=clock.now, lr=clock.now, pid=11, processed=0, active=0))
    assert restored.restarts == 1


def test_restore_worker_offline_and_bound() -> None:
    clock = FakeClock()
    s = ClusterState(max_workers=2, time_source=clock)
    s.restore_worker({"hostname": "w1", "last_seen": T0, "freq": 2.0})
    s.restore_worker({"hostname": "w2", "last_seen": None, "offline": True})
    w2 = s.worker("w2")
    assert w2 is not None and w2.status == "offline"
    s.restore_worker({"hostname": "w1", "freq": -1, "heartbeat_count": "x"})  # heard most recently
    s.restore_worker({"hostname": "w3"})
    assert sorted(s.workers) == ["w1", "w3"] and s.evicted_workers == 1
    w1 = s.worker("w1")
    assert w1 is not None and w1.freq == 2.0 and w1.heartbeat_count == 0 and w1.alive


@pytest.mark.parametrize("fields", [{}, {"hostname": None}, {"hostname": 3}])
def test_restore_worker_needs_a_hostname(fields: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        ClusterState().restore_worker(fields)
