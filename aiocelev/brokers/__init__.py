"""Broker adapters and the boundary they implement.

``open_broker(url)`` picks the adapter by URL scheme: ``memory://`` (built in),
``amqp://`` / ``amqps://`` (extra ``amqp``), ``redis://`` / ``rediss://`` /
``redis+socket://`` / ``sentinel://`` (extra ``redis``).  Third parties add
schemes with :func:`register_broker`.
"""

from __future__ import annotations

from ._base import Broker as Broker, Subscription as Subscription
from ._control import (
    ControlSubscription as ControlSubscription,
    ControlTransport as ControlTransport,
    PidboxTransport as PidboxTransport,
    RawReply as RawReply,
    Replies as Replies,
    ReplyQueue as ReplyQueue,
)
from ._queues import QueueInfo as QueueInfo, QueueInspector as QueueInspector
from ._registry import (
    BrokerFactory as BrokerFactory,
    known_schemes as known_schemes,
    open_broker as open_broker,
    register_broker as register_broker,
)

__all__ = [
    "Broker",
    "BrokerFactory",
    "ControlSubscription",
    "ControlTransport",
    "PidboxTransport",
    "QueueInfo",
    "QueueInspector",
    "RawReply",
    "Replies",
    "ReplyQueue",
    "Subscription",
    "known_schemes",
    "open_broker",
    "register_broker",
]
