"""Queue depths: how many task messages wait in the queues workers consume.

An optional capability of an adapter (the dashboard's broker page uses it):
RabbitMQ answers a passive ``queue.declare`` with the queue's ready messages
and consumers; Redis keeps each kombu queue as a list (``LLEN``, plus the
lists of kombu's priority steps).  The in-memory broker has no task queues.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = ["QueueInfo", "QueueInspector"]


class QueueInfo(NamedTuple):
    """One queue's depth as the broker reports it."""

    name: str
    """The queue name (without any key prefix)."""
    messages: int | None
    """Messages waiting (ready); ``None`` when the queue does not exist (RabbitMQ;
    Redis cannot tell a missing queue from an empty one and says 0)."""
    consumers: int | None = None
    """Consumers attached, where the broker can tell (RabbitMQ), else ``None``."""


@runtime_checkable
class QueueInspector(Protocol):
    """An adapter that can report queue depths."""

    async def queue_info(self, names: Sequence[str]) -> list[QueueInfo]:
        """Depth of each queue in *names*, in order (``messages=None``: no such queue).

        :raises BrokerConnectionError: the broker is unreachable.
        """
        ...
