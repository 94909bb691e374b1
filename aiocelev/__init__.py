"""aiocelev: Celery's monitoring event bus, natively in asyncio.

Send events as a Celery worker does (:class:`EventDispatcher`), receive them as
typed objects (:class:`EventReceiver`), over RabbitMQ, Redis or the in-memory
broker (:func:`open_broker`).
"""

from __future__ import annotations

from ._clock import LamportClock as LamportClock
from ._codec import (
    decode_message as decode_message,
    encode_batch as encode_batch,
    encode_event as encode_event,
)
from ._control import ControlReply as ControlReply, ControlRequest as ControlRequest
from ._control_client import Control as Control
from ._dispatcher import (
    DispatcherStatistics as DispatcherStatistics,
    EventDispatcher as EventDispatcher,
)
from ._events import (
    Event as Event,
    TaskEvent as TaskEvent,
    TaskFailed as TaskFailed,
    TaskReceived as TaskReceived,
    TaskRejected as TaskRejected,
    TaskRetried as TaskRetried,
    TaskRevoked as TaskRevoked,
    TaskSent as TaskSent,
    TaskStarted as TaskStarted,
    TaskSucceeded as TaskSucceeded,
    WorkerEvent as WorkerEvent,
    WorkerHeartbeat as WorkerHeartbeat,
    WorkerOffline as WorkerOffline,
    WorkerOnline as WorkerOnline,
)
from ._exceptions import (
    AiocelevError as AiocelevError,
    BrokerConnectionError as BrokerConnectionError,
    BrokerError as BrokerError,
    BufferFullError as BufferFullError,
    ClosedError as ClosedError,
    ConfigurationError as ConfigurationError,
    DecodeError as DecodeError,
    DuplicateNodeError as DuplicateNodeError,
    EndOfStream as EndOfStream,
    MissingDependencyError as MissingDependencyError,
    NotSupportedError as NotSupportedError,
    PublishError as PublishError,
    TaskStateError as TaskStateError,
    UnknownSchemeError as UnknownSchemeError,
)
from ._link import ConnectionCallback as ConnectionCallback, ConnectionStatus as ConnectionStatus
from ._message import IncomingMessage as IncomingMessage, OutgoingMessage as OutgoingMessage
from ._overflow import Overflow as Overflow
from ._receiver import (
    ErrorCallback as ErrorCallback,
    EventReceiver as EventReceiver,
    Handler as Handler,
    ReceiverStatistics as ReceiverStatistics,
)
from ._saferepr import saferepr as saferepr
from ._simulation import (
    Simulation as Simulation,
    SimulationStatistics as SimulationStatistics,
    simulate_cluster as simulate_cluster,
)
from ._state import ClusterState as ClusterState
from ._state_models import TaskState as TaskState, WorkerState as WorkerState
from ._task_scope import (
    TaskHandle as TaskHandle,
    TaskRetry as TaskRetry,
    TaskScope as TaskScope,
)
from ._version import __version__ as __version__
from ._worker import WorkerInstrument as WorkerInstrument, worker_events as worker_events
from ._worker_control import ControlHandler as ControlHandler
from .brokers import (
    Broker as Broker,
    ControlSubscription as ControlSubscription,
    ControlTransport as ControlTransport,
    Replies as Replies,
    open_broker as open_broker,
    register_broker as register_broker,
)
from .cli import render_top as render_top

__all__ = [
    "AiocelevError",
    "Broker",
    "BrokerConnectionError",
    "BrokerError",
    "BufferFullError",
    "ClosedError",
    "ClusterState",
    "ConfigurationError",
    "ConnectionCallback",
    "ConnectionStatus",
    "Control",
    "ControlHandler",
    "ControlReply",
    "ControlRequest",
    "ControlSubscription",
    "ControlTransport",
    "DecodeError",
    "DispatcherStatistics",
    "DuplicateNodeError",
    "EndOfStream",
    "ErrorCallback",
    "Event",
    "EventDispatcher",
    "EventReceiver",
    "Handler",
    "IncomingMessage",
    "LamportClock",
    "MissingDependencyError",
    "NotSupportedError",
    "OutgoingMessage",
    "Overflow",
    "PublishError",
    "ReceiverStatistics",
    "Replies",
    "Simulation",
    "SimulationStatistics",
    "TaskEvent",
    "TaskFailed",
    "TaskHandle",
    "TaskReceived",
    "TaskRejected",
    "TaskRetried",
    "TaskRetry",
    "TaskRevoked",
    "TaskScope",
    "TaskSent",
    "TaskStarted",
    "TaskState",
    "TaskStateError",
    "TaskSucceeded",
    "UnknownSchemeError",
    "WorkerEvent",
    "WorkerHeartbeat",
    "WorkerInstrument",
    "WorkerOffline",
    "WorkerOnline",
    "WorkerState",
    "__version__",
    "decode_message",
    "encode_batch",
    "encode_event",
    "open_broker",
    "register_broker",
    "render_top",
    "saferepr",
    "simulate_cluster",
    "worker_events",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("aiocelev._"):
        try:
            _obj.__module__ = "aiocelev"
        except (AttributeError, TypeError):  # pragma: no cover - builtins, NamedTuple fields
            pass
del _name, _obj
