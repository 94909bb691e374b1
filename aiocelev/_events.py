"""Typed, immutable events.

An event is a thin, read-only :class:`~collections.abc.Mapping` over its wire
dict: building one from a decoded message costs a single allocation, every
field (unknown ones included) is kept, and ``dict(event)`` or
:meth:`Event.to_dict` gives back the complete wire form.  One class
per Celery event type adds typed attribute access to the fields Celery defines;
any other type (``task-progress``, ``worker-elect``...) becomes an
:class:`Event` (or :class:`TaskEvent` / :class:`WorkerEvent` by group), so
custom events round-trip unchanged.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, overload

from ._exceptions import ConfigurationError

__all__ = [
    "Event",
    "TaskEvent",
    "TaskFailed",
    "TaskReceived",
    "TaskRejected",
    "TaskRetried",
    "TaskRevoked",
    "TaskSent",
    "TaskStarted",
    "TaskSucceeded",
    "WorkerEvent",
    "WorkerHeartbeat",
    "WorkerOffline",
    "WorkerOnline",
    "event_class",
    "group_of",
    "routing_key_of",
]

_T = TypeVar("_T")


class _Field(Generic[_T]):
    """Read-only typed access to one wire field; ``None`` when absent."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> _Field[_T]: ...
    @overload
    def __get__(self, obj: Event, owner: type[Any]) -> _T | None: ...
    def __get__(self, obj: Event | None, owner: type[Any]) -> _Field[_T] | _T | None:
        if obj is None:
            return self
        return obj._fields.get(self.name)


def group_of(type_: str) -> str:
    """The event group: the part of the type before the first ``-`` (``task``, ``worker``)."""
    return type_.partition("-")[0]


def routing_key_of(type_: str) -> str:
    """The routing key Celery publishes an event type with: ``-`` replaced by ``.``."""
    return type_.replace("-", ".")


_registry: dict[str, type[Event]] = {}

if TYPE_CHECKING:
    _MappingBase = Mapping[str, Any]
else:
    # At run time Event is registered as a Mapping instead of inheriting from
    # it: an ABC subclass makes every ``isinstance(x, Event)`` go through
    # ABCMeta, about three times slower, on paths taken once per event.  Event
    # defines every Mapping method itself.
    _MappingBase = object


class Event(_MappingBase):
    """A Celery monitoring event: a read-only mapping of its wire fields.

    Known fields are attributes (``event.hostname``, ``event.clock``); every
    field, known or not, is also reachable as ``event["name"]`` and
    ``event.get("name")``, and the mapping methods work on the wire fields
    (``len(event)``, ``event.keys()``, ``event.items()``, ``dict(event)``,
    ``{**event}``).  Events are immutable; an event equals another mapping
    (another event, or a dict) with the same fields, and is hashable.

    :param type: the event type (optional on the classes of one type, e.g.
        ``TaskSucceeded(uuid=...)``).
    :param fields: the wire fields.
    :raises ConfigurationError: no type, or a type another class stands for.
    """

    __slots__ = ("_fields",)
    _fields: dict[str, Any]

    #: The event type this class stands for (``None`` on the generic classes).
    event_type: ClassVar[str | None] = None

    hostname = _Field[str]("hostname")
    timestamp = _Field[float]("timestamp")
    utcoffset = _Field[float]("utcoffset")
    pid = _Field[int]("pid")
    clock = _Field[int]("clock")
    local_received = _Field[float]("local_received")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.event_type is not None and "event_type" in cls.__dict__:
            _registry[cls.event_type] = cls
            # Every event of this class has this type: a class attribute reads
            # faster than the property (consumers read ``event.type`` per event).
            setattr(cls, "type", cls.event_type)  # noqa: B010

    def __init__(self, type: str | None = None, /, **fields: Any) -> None:  # noqa: A002
        expected = self.event_type
        if type is None:
            if expected is None:
                raise ConfigurationError(f"{self.__class__.__name__} needs an event type")
            type = expected  # noqa: A001
        elif expected is not None and type != expected:
            raise ConfigurationError(
                f"{self.__class__.__name__} is for {expected!r} events, not {type!r}"
            )
        fields["type"] = type
        object.__setattr__(self, "_fields", fields)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        """Build the right event class for a wire dict (which is copied).

        :raises ConfigurationError: ``data`` has no string ``type``.
        """
        type_ = data.get("type")
        if not isinstance(type_, str):
            raise ConfigurationError("an event needs a string 'type' field")
        return _wrap(dict(data))

    @property
    def type(self) -> str:
        """The event type, e.g. ``task-succeeded``."""
        return self._fields["type"]  # type: ignore[no-any-return]

    @property
    def group(self) -> str:
        """The event group, e.g. ``task`` or ``worker``."""
        return group_of(self._fields["type"])

    @property
    def routing_key(self) -> str:
        """The routing key Celery would publish this single event with."""
        return routing_key_of(self._fields["type"])

    @property
    def fields(self) -> Mapping[str, Any]:
        """A read-only view of every wire field."""
        return MappingProxyType(self._fields)

    def to_dict(self) -> dict[str, Any]:
        """The full wire dict: every field, unknown ones included (a new dict)."""
        return dict(self._fields)

    def get(self, name: str, default: Any = None) -> Any:
        """The field *name*, or *default* when absent."""
        return self._fields.get(name, default)

    def replace(self, **changes: Any) -> Event:
        """A copy with some fields changed."""
        data = dict(self._fields)
        data.update(changes)
        return _wrap(data)

    # The mapping methods read the wire dict directly (no copy, C speed); the
    # views they return are read-only.

    def keys(self) -> KeysView[str]:
        """The field names (a live, read-only view)."""
        return self._fields.keys()

    def values(self) -> ValuesView[Any]:
        """The field values (a live, read-only view)."""
        return self._fields.values()

    def items(self) -> ItemsView[str, Any]:
        """``(name, value)`` pairs of every field (a live, read-only view)."""
        return self._fields.items()

    def __getitem__(self, name: str) -> Any:
        return self._fields[name]

    def __contains__(self, name: object) -> bool:
        return name in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{self.__class__.__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{self.__class__.__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Event):
            return self._fields == other._fields
        if isinstance(other, Mapping):
            return self._fields == dict(other)
        return NotImplemented

    def __hash__(self) -> int:
        f = self._fields
        return hash((f.get("type"), f.get("hostname"), f.get("clock"), f.get("uuid")))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_wrap, (dict(self._fields),))

    def __repr__(self) -> str:
        f = self._fields
        extra = f" uuid={f['uuid']!r}" if "uuid" in f else ""
        return (
            f"<{self.__class__.__name__} {f.get('type')!r} hostname={f.get('hostname')!r}"
            f"{extra} clock={f.get('clock')!r}>"
        )


class WorkerEvent(Event):
    """An event of the ``worker`` group."""

    __slots__ = ()
    freq = _Field[float]("freq")
    active = _Field[int]("active")
    processed = _Field[int]("processed")
    loadavg = _Field[list[float]]("loadavg")
    sw_ident = _Field[str]("sw_ident")
    sw_ver = _Field[str]("sw_ver")
    sw_sys = _Field[str]("sw_sys")


class WorkerOnline(WorkerEvent):
    """``worker-online``: a worker started sending events."""

    __slots__ = ()
    event_type = "worker-online"


class WorkerHeartbeat(WorkerEvent):
    """``worker-heartbeat``: a worker is alive (every ``freq`` seconds)."""

    __slots__ = ()
    event_type = "worker-heartbeat"


class WorkerOffline(WorkerEvent):
    """``worker-offline``: a worker shut down."""

    __slots__ = ()
    event_type = "worker-offline"


class TaskEvent(Event):
    """An event of the ``task`` group; ``uuid`` is the task id."""

    __slots__ = ()
    uuid = _Field[str]("uuid")


class TaskSent(TaskEvent):
    """``task-sent``: a client published a task message."""

    __slots__ = ()
    event_type = "task-sent"
    name = _Field[str]("name")
    args = _Field[str]("args")
    kwargs = _Field[str]("kwargs")
    root_id = _Field[str]("root_id")
    parent_id = _Field[str]("parent_id")
    retries = _Field[int]("retries")
    eta = _Field[str]("eta")
    expires = _Field[str]("expires")
    queue = _Field[str]("queue")
    exchange = _Field[str]("exchange")
    task_routing_key = _Field[str]("routing_key")


class TaskReceived(TaskEvent):
    """``task-received``: a worker accepted a task message."""

    __slots__ = ()
    event_type = "task-received"
    name = _Field[str]("name")
    args = _Field[str]("args")
    kwargs = _Field[str]("kwargs")
    root_id = _Field[str]("root_id")
    parent_id = _Field[str]("parent_id")
    retries = _Field[int]("retries")
    eta = _Field[str]("eta")
    expires = _Field[str]("expires")


class TaskStarted(TaskEvent):
    """``task-started``: a worker began executing the task."""

    __slots__ = ()
    event_type = "task-started"


class TaskSucceeded(TaskEvent):
    """``task-succeeded``: the task returned; ``result`` is its repr."""

    __slots__ = ()
    event_type = "task-succeeded"
    result = _Field[str]("result")
    runtime = _Field[float]("runtime")


class TaskFailed(TaskEvent):
    """``task-failed``: the task raised."""

    __slots__ = ()
    event_type = "task-failed"
    exception = _Field[str]("exception")
    traceback = _Field[str]("traceback")


class TaskRetried(TaskEvent):
    """``task-retried``: the task asked to be retried."""

    __slots__ = ()
    event_type = "task-retried"
    exception = _Field[str]("exception")
    traceback = _Field[str]("traceback")


class TaskRejected(TaskEvent):
    """``task-rejected``: the worker rejected the task message."""

    __slots__ = ()
    event_type = "task-rejected"
    requeue = _Field[bool]("requeue")


class TaskRevoked(TaskEvent):
    """``task-revoked``: the task was revoked (maybe terminated, maybe expired)."""

    __slots__ = ()
    event_type = "task-revoked"
    terminated = _Field[bool]("terminated")
    signum = _Field[Any]("signum")
    expired = _Field[bool]("expired")


Mapping.register(Event)


def event_class(type_: str) -> type[Event]:
    """The class used for events of *type_*."""
    cls = _registry.get(type_)
    if cls is not None:
        return cls
    group = group_of(type_)
    if group == "task":
        return TaskEvent
    if group == "worker":
        return WorkerEvent
    return Event


_new = object.__new__
_set = object.__setattr__


def _wrap(data: dict[str, Any]) -> Event:
    """Wrap a wire dict (ownership is taken, no copy) in its event class."""
    cls = _registry.get(data["type"]) or event_class(data["type"])
    event = _new(cls)
    _set(event, "_fields", data)
    return event
