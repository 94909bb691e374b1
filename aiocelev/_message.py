"""Raw messages: what crosses the broker boundary (bytes plus routing metadata)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._exceptions import DecodeError

__all__ = ["IncomingMessage", "OutgoingMessage"]


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

    Adapters hand up the message as it was published: its body, routing key,
    content type, encoding and headers, with any broker-specific framing
    already removed.

    :param routing_key: the routing key it was published with.
    :param body: the raw body bytes.
    :param content_type: as published.
    :param ack: called once every event of the message was handed to the caller
        (adapters that consume with acknowledgements set it).
    :param error: set by an adapter that received the message but could not
        take its framing apart (a malformed Redis envelope, say); *body* then
        holds the bytes as received.  The receiver counts and reports the
        message under ``error.reason`` and goes on with the next one.
    """

    routing_key: str
    body: bytes
    content_type: str | None = "application/json"
    content_encoding: str | None = "utf-8"
    headers: Mapping[str, Any] = field(default_factory=dict)
    ack: Callable[[], None] | None = None
    error: DecodeError | None = None


_new_message = object.__new__
(
    _set_routing_key,
    _set_body,
    _set_content_type,
    _set_content_encoding,
    _set_headers,
    _set_ack,
    _set_error,
) = (
    IncomingMessage.__dict__[name].__set__
    for name in (
        "routing_key",
        "body",
        "content_type",
        "content_encoding",
        "headers",
        "ack",
        "error",
    )
)


def incoming_message(
    routing_key: str,
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    headers: Mapping[str, Any],
    ack: Callable[[], None] | None = None,
) -> IncomingMessage:
    """``IncomingMessage(routing_key, body, ...)`` for an adapter's per-message path.

    The same object the constructor makes, built through the slots directly:
    the frozen dataclass's ``__init__`` stores each field with
    ``object.__setattr__``, nearly twice the cost.
    """
    message: IncomingMessage = _new_message(IncomingMessage)
    _set_routing_key(message, routing_key)
    _set_body(message, body)
    _set_content_type(message, content_type)
    _set_content_encoding(message, content_encoding)
    _set_headers(message, headers)
    _set_ack(message, ack)
    _set_error(message, None)
    return message
