"""Raw messages: what crosses the broker boundary (bytes plus routing metadata)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KOMBU_ENVELOPE", "IncomingMessage", "OutgoingMessage"]

#: ``IncomingMessage.content_type`` of a payload that is still wrapped in kombu's
#: virtual-transport JSON envelope (Redis); the core codec unwraps it.
KOMBU_ENVELOPE = "application/x-kombu-envelope"


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message to publish on the event exchange.

    :param routing_key: e.g. ``worker.heartbeat`` or ``task.multi``.
    :param body: the serialised body (UTF-8 JSON for events).
    :param headers: application headers; Celery sets ``{"hostname": nodename}``.
    """

    routing_key: str
    body: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    delivery_mode: int = 1
    priority: int = 0


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One message received from the event exchange.

    :param routing_key: the routing key it was published with (or, for a raw
        kombu envelope, the channel-derived key until the envelope is decoded).
    :param body: the raw body bytes.
    :param content_type: as published; ``KOMBU_ENVELOPE`` for a raw envelope.
    :param ack: called once every event of the message was handed to the caller
        (adapters that consume with acknowledgements set it).
    """

    routing_key: str
    body: bytes
    content_type: str | None = "application/json"
    content_encoding: str | None = "utf-8"
    headers: Mapping[str, Any] = field(default_factory=dict)
    ack: Callable[[], None] | None = None
