"""Typed, immutable events: one class per Celery type, generic classes for the rest."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Mapping, MutableMapping

import pytest

import aiocelev
from aiocelev import (
    Event,
    TaskEvent,
    TaskFailed,
    TaskReceived,
    TaskRejected,
    TaskRetried,
    TaskRevoked,
    TaskSent,
    TaskStarted,
    TaskSucceeded,
    WorkerEvent,
    WorkerHeartbeat,
    WorkerOffline,
    WorkerOnline,
)
from aiocelev._events import _wrap, event_class, group_of, routing_key_of
from aiocelev._exceptions import ConfigurationError

CELERY_TYPES = {
    "worker-online": WorkerOnline,
    "worker-heartbeat": WorkerHeartbeat,
    "worker-offline": WorkerOffline,
    "task-sent": TaskSent,
    "task-received": TaskReceived,
    "task-started": TaskStarted,
    "task-succeeded": TaskSucceeded,
    "task-failed": TaskFailed,
    "task-retried": TaskRetried,
    "task-rejected": TaskRejected,
    "task-revoked": TaskRevoked,
}


def wire(type_: str, **extra: object) -> dict[str, object]:
    data: dict[str, object] = {
        "hostname": "celery@w1",
        "utcoffset": 0,
        "pid": 42,
        "clock": 7,
    }
    data.update(extra)
    data["timestamp"] = 1767225600.5
    data["type"] = type_
    return data


@pytest.mark.parametrize(("type_", "cls"), sorted(CELERY_TYPES.items()))
def test_each_celery_type_has_its_class(type_: str, cls: type[Event]) -> None:
    event = Event.from_dict(wire(type_, uuid="t1"))
    assert type(event) is cls
    assert event_class(type_) is cls
    assert cls.event_type == type_
    assert event.type == type_
    assert event.hostname == "celery@w1"
    assert event.clock == 7
    assert event.timestamp == 1767225600.5
    assert event.pid == 42
    assert event.utcoffset == 0
    assert event.group == type_.partition("-")[0]
    assert event.routing_key == type_.replace("-", ".")
    expected_base = TaskEvent if type_.startswith("task-") else WorkerEvent
    assert isinstance(event, expected_base)


@pytest.mark.parametrize(
    ("type_", "cls"),
    [
        ("task-progress", TaskEvent),
        ("task-cancelled", TaskEvent),
        ("worker-elect", WorkerEvent),
        ("worker-elect-ack", WorkerEvent),
        ("custom-thing", Event),
    ],
)
def test_other_types_get_the_generic_class_of_their_group(type_: str, cls: type[Event]) -> None:
    data = wire(type_, uuid="t1", percent=50)
    event = Event.from_dict(data)
    assert type(event) is cls
    assert event.to_dict() == data
    assert event["percent"] == 50


def test_task_progress_round_trips_unchanged() -> None:
    data = wire("task-progress", uuid="abc", current=3, total=10, meta={"stage": "x"})
    event = Event.from_dict(data)
    assert isinstance(event, TaskEvent)
    assert event.uuid == "abc"
    assert event.routing_key == "task.progress"
    assert Event.from_dict(event.to_dict()) == event
    assert list(event.to_dict()) == list(data)  # field order kept


def test_typed_attributes() -> None:
    ok = Event.from_dict(wire("task-succeeded", uuid="u", result="4", runtime=0.25))
    assert isinstance(ok, TaskSucceeded)
    assert (ok.uuid, ok.result, ok.runtime) == ("u", "4", 0.25)
    failed = Event.from_dict(
        wire("task-failed", uuid="u", exception="ValueError()", traceback="tb")
    )
    assert isinstance(failed, TaskFailed)
    assert (failed.exception, failed.traceback) == ("ValueError()", "tb")
    sent = Event.from_dict(
        wire("task-sent", uuid="u", name="tasks.add", args="(1, 2)", routing_key="celery")
    )
    assert isinstance(sent, TaskSent)
    assert (sent.name, sent.args, sent.task_routing_key) == ("tasks.add", "(1, 2)", "celery")
    revoked = Event.from_dict(
        wire("task-revoked", uuid="u", terminated=True, signum=15, expired=False)
    )
    assert isinstance(revoked, TaskRevoked)
    assert (revoked.terminated, revoked.signum, revoked.expired) == (True, 15, False)
    hb = Event.from_dict(wire("worker-heartbeat", freq=2.0, active=1, loadavg=[0.1, 0.2, 0.3]))
    assert isinstance(hb, WorkerHeartbeat)
    assert (hb.freq, hb.active, hb.loadavg) == (2.0, 1, [0.1, 0.2, 0.3])
    assert hb.processed is None  # absent fields read as None
    assert hb.local_received is None


def test_unknown_fields_are_kept() -> None:
    data = wire("task-started", uuid="u", x_custom={"a": [1, 2]}, another=None)
    event = Event.from_dict(data)
    assert event["x_custom"] == {"a": [1, 2]}
    assert "another" in event
    assert event.get("another", "default") is None
    assert event.get("missing", "default") == "default"
    assert event.fields["x_custom"] == {"a": [1, 2]}
    assert set(event) == set(data)
    with pytest.raises(KeyError):
        event["missing"]


def test_to_dict_is_the_full_wire_dict_and_a_copy() -> None:
    data = wire("task-received", uuid="u", name="n", args="()", kwargs="{}", extra=1)
    event = Event.from_dict(data)
    out = event.to_dict()
    assert out == data
    assert list(out) == list(data)
    out["type"] = "mutated"
    assert event.type == "task-received"


def test_from_dict_copies_its_input() -> None:
    data = wire("task-started", uuid="u")
    event = Event.from_dict(data)
    data["uuid"] = "changed"
    assert event.uuid == "u"


def test_from_dict_needs_a_string_type() -> None:
    with pytest.raises(ConfigurationError, match="type"):
        Event.from_dict({"hostname": "x"})
    with pytest.raises(ConfigurationError, match="type"):
        Event.from_dict({"type": 3})


def test_events_are_immutable() -> None:
    event = Event.from_dict(wire("task-succeeded", uuid="u", result="1"))
    with pytest.raises(AttributeError):
        event.hostname = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        event.anything = 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        del event.hostname  # type: ignore[misc]
    with pytest.raises(TypeError):
        event.fields["hostname"] = "other"  # type: ignore[index]
    with pytest.raises(TypeError):
        event["hostname"] = "other"  # type: ignore[index]
    assert event.hostname == "celery@w1"


def test_replace_returns_a_new_event() -> None:
    event = Event.from_dict(wire("task-succeeded", uuid="u", result="1"))
    other = event.replace(result="2")
    assert isinstance(other, TaskSucceeded)
    assert other.result == "2"
    assert event.result == "1"
    changed = event.replace(type="task-failed")
    assert isinstance(changed, TaskFailed)


def test_constructor() -> None:
    event = TaskSucceeded(uuid="u", result="4", hostname="h")
    assert event.type == "task-succeeded"
    assert event.to_dict() == {
        "uuid": "u",
        "result": "4",
        "hostname": "h",
        "type": "task-succeeded",
    }
    assert TaskSucceeded("task-succeeded", uuid="u") == TaskSucceeded(uuid="u")
    generic = Event("task-progress", uuid="u")
    assert generic.type == "task-progress"
    with pytest.raises(ConfigurationError, match="task-succeeded"):
        TaskSucceeded("task-failed", uuid="u")
    with pytest.raises(ConfigurationError, match="needs an event type"):
        Event()


def test_equality_and_hash() -> None:
    a = Event.from_dict(wire("task-started", uuid="u"))
    b = Event.from_dict(wire("task-started", uuid="u"))
    c = Event.from_dict(wire("task-started", uuid="v"))
    assert a == b
    assert hash(a) == hash(b)
    assert a != c
    assert a == a.to_dict()  # a mapping with the same fields
    assert a.to_dict() == a
    assert a != c.to_dict()
    assert a != [("type", "task-started")]  # not a mapping
    assert len({a, b, c}) == 2


def test_an_event_is_a_read_only_mapping_of_its_wire_fields() -> None:
    data = wire("task-succeeded", uuid="u", result="4", custom={"nested": [1]})
    event = Event.from_dict(data)
    assert isinstance(event, Mapping)
    assert not isinstance(event, MutableMapping)
    assert dict(event) == data
    assert {**event} == data
    assert len(event) == len(data)
    assert list(event) == list(data)  # wire order
    assert list(event.keys()) == list(data)
    assert list(event.values()) == list(data.values())
    assert list(event.items()) == list(data.items())
    assert event["custom"] == {"nested": [1]}
    assert "custom" in event and "missing" not in event
    assert event.get("missing", 7) == 7
    with pytest.raises(KeyError):
        event["missing"]
    with pytest.raises(TypeError):
        event["uuid"] = "v"  # type: ignore[index]
    with pytest.raises(TypeError):
        event.keys().mapping["uuid"] = "v"  # type: ignore[index]  # the view's dict is a proxy
    assert event.uuid == "u" and event.result == "4"  # attributes still work


def test_the_mapping_wraps_the_wire_dict_without_copying() -> None:
    data = wire("task-started", uuid="u")
    event = _wrap(data)
    assert event.keys().mapping == data  # a read-only proxy of the same dict
    data["late"] = 1  # the receiver hands the dict over and never touches it again
    assert event["late"] == 1 and len(event) == len(data)


def test_pickling_and_copying() -> None:
    for type_ in [*CELERY_TYPES, "task-progress", "worker-elect", "other-x"]:
        event = Event.from_dict(wire(type_, uuid="u", extra=[1, {"a": None}]))
        clone = pickle.loads(pickle.dumps(event))
        assert clone == event
        assert type(clone) is type(event)
        assert copy.deepcopy(event) == event
        assert copy.copy(event) == event


def test_repr_names_type_host_and_uuid() -> None:
    event = Event.from_dict(wire("task-started", uuid="abc"))
    text = repr(event)
    assert "TaskStarted" in text and "task-started" in text and "abc" in text


def test_group_and_routing_key_helpers() -> None:
    assert group_of("task-succeeded") == "task"
    assert group_of("worker-elect-ack") == "worker"
    assert group_of("nogroup") == "nogroup"
    assert routing_key_of("worker-elect-ack") == "worker.elect.ack"
    assert routing_key_of("task-progress") == "task.progress"


def test_public_classes_exported() -> None:
    for cls in CELERY_TYPES.values():
        assert getattr(aiocelev, cls.__name__) is cls
