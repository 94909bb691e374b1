"""Celery remote control ("pidbox") messages, independent of the broker.

Celery's ``app.control.broadcast`` (kombu ``Mailbox``) publishes one JSON
message on the ``<control_exchange>.pidbox`` fanout exchange (``celery.pidbox``
by default); every worker's ``<nodename>.celery.pidbox`` queue gets it.  When a
reply is wanted the message carries a ``ticket`` and a ``reply_to`` mapping,
and each worker answers ``{nodename: {...}}`` on the ``reply.celery.pidbox``
direct exchange with the routing key from ``reply_to`` and a ``ticket`` header.

This module builds the request and recognises replies; adapters only move the
bytes::

    body, headers = build_control_body(
        "enable_events", destination=None, ticket=ticket,
        reply_to=reply_to_mapping(reply_routing_key), clock=1, timeout=1.0,
    )
    payload = encode_control_body(body)   # kombu-exact JSON bytes

Wire details (Celery 5.x, kombu 5.x): body keys in the order ``method``,
``arguments``, ``destination``, ``pattern``, ``matcher`` then, with a reply,
``ticket`` and ``reply_to``; headers ``{"clock": <int>, "expires": <epoch float
or 0>}``; content type ``application/json``; the request is published with
delivery mode 2 and routing key ``""``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ._clock import LamportClock, valid_clock
from ._codec import dumps, loads
from ._exceptions import DecodeError

__all__ = [
    "DEFAULT_CONTROL_EXCHANGE",
    "build_control_body",
    "encode_control_body",
    "new_reply_key",
    "new_ticket",
    "pidbox_exchange",
    "reply_exchange",
    "reply_queue_name",
    "reply_to_mapping",
    "match_reply",
    "accept_reply",
    "reply_limit",
]

#: Celery's ``control_exchange`` setting default (the pidbox namespace).
DEFAULT_CONTROL_EXCHANGE = "celery"

#: Delivery mode Celery's client uses for a broadcast request (persistent, see
#: protocol notes sec. 8.2; replies use 1).
REQUEST_DELIVERY_MODE = 2

#: ``x-expires`` Celery puts on its reply queue (``control_queue_expires``, 10 s).
REPLY_QUEUE_EXPIRES = 10.0

#: ``x-message-ttl`` Celery puts on its reply queue (``control_queue_ttl``, 300 s).
REPLY_QUEUE_TTL = 300.0


def pidbox_exchange(namespace: str = DEFAULT_CONTROL_EXCHANGE) -> str:
    """The fanout exchange requests go to: ``<namespace>.pidbox``."""
    return f"{namespace}.pidbox"


def reply_exchange(namespace: str = DEFAULT_CONTROL_EXCHANGE) -> str:
    """The direct exchange replies come back on: ``reply.<namespace>.pidbox``."""
    return f"reply.{namespace}.pidbox"


def reply_queue_name(reply_key: str, namespace: str = DEFAULT_CONTROL_EXCHANGE) -> str:
    """The reply queue Celery's client declares: ``<reply_key>.reply.<namespace>.pidbox``."""
    return f"{reply_key}.{reply_exchange(namespace)}"


def new_ticket() -> str:
    """A fresh ticket (uuid4 string) that ties replies to one request."""
    return str(uuid.uuid4())


def new_reply_key() -> str:
    """A fresh reply routing key (a uuid, as kombu's per-client ``oid``)."""
    return str(uuid.uuid4())


def reply_to_mapping(reply_key: str, namespace: str = DEFAULT_CONTROL_EXCHANGE) -> dict[str, str]:
    """The ``reply_to`` value of a request: reply exchange name and routing key."""
    return {"exchange": reply_exchange(namespace), "routing_key": reply_key}


def build_control_body(
    method: str,
    arguments: Mapping[str, Any] | None = None,
    *,
    destination: Sequence[str] | None = None,
    ticket: str | None = None,
    reply_to: Mapping[str, str] | None = None,
    clock: int = 0,
    timeout: float | None = None,
    pattern: str | None = None,
    matcher: str | None = None,
    now: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The body and headers of a remote-control request, exactly as Celery builds them.

    :param method: the control command, e.g. ``"enable_events"`` or ``"ping"``.
    :param arguments: its keyword arguments (``{}`` when ``None``).
    :param destination: node names (``["celery@host"]``) or ``None`` for every worker.
    :param ticket: set (with *reply_to*) when replies are wanted; see :func:`new_ticket`.
    :param reply_to: where workers reply, see :func:`reply_to_mapping`.
    :param clock: the sender's Lamport clock value for the ``clock`` header.
    :param timeout: how long the request is valid: header ``expires`` becomes
        ``now + timeout``; ``None`` or ``0`` gives ``expires = 0`` (never).
    :param now: the current epoch time (defaults to :func:`time.time`).
    :returns: ``(body, headers)``; serialise the body with :func:`encode_control_body`.
    :raises ValueError: *destination* is not a list/tuple, or only one of
        *ticket* / *reply_to* is given.
    """
    if destination is not None and not isinstance(destination, (list, tuple)):
        raise ValueError(f"destination must be a list or tuple, not {type(destination).__name__}")
    if (ticket is None) != (reply_to is None):
        raise ValueError("ticket and reply_to go together: give both or neither")
    body: dict[str, Any] = {
        "method": method,
        "arguments": dict(arguments) if arguments else {},
        "destination": list(destination) if destination is not None else None,
        "pattern": pattern,
        "matcher": matcher,
    }
    if ticket is not None and reply_to is not None:
        body["ticket"] = ticket
        body["reply_to"] = dict(reply_to)
    expires: float = 0
    if timeout:
        expires = (time.time() if now is None else now) + timeout
    headers: dict[str, Any] = {"clock": clock, "expires": expires}
    return body, headers


def encode_control_body(body: Mapping[str, Any]) -> bytes:
    """Serialise a request body as kombu's JSON serializer does (ASCII bytes)."""
    return dumps(body).encode("ascii")


def match_reply(
    body: Any, headers: Mapping[str, Any], ticket: str, *, now: float | None = None
) -> dict[str, Any] | None:
    """The reply ``{nodename: {...}}`` if it answers *ticket* and has not expired.

    A reply without a ``ticket`` header is accepted (as kombu does); a reply
    whose ``expires`` header is in the past, or that is not a JSON object, is
    ignored (``None``).
    """
    if type(body) is not dict:
        return None
    expires = headers.get("expires")
    if (
        isinstance(expires, (int, float))
        and expires
        and (time.time() if now is None else now) > expires
    ):
        return None
    if headers.get("ticket", ticket) != ticket:
        return None
    return body


def accept_reply(
    body: bytes,
    headers: Mapping[str, Any],
    ticket: str,
    clock: LamportClock,
    log: logging.Logger,
) -> dict[str, Any] | None:
    """Take in one raw reply as a broadcasting client does.

    Merges the reply's ``clock`` header into *clock*, decodes *body* and
    returns it if it answers *ticket* (see :func:`match_reply`); an
    undecodable body is logged on *log* and ignored (``None``).
    """
    value = headers.get("clock")
    if valid_clock(value):
        clock.adjust(value)
    try:
        decoded = loads(body)
    except DecodeError:
        log.warning("ignoring an undecodable remote-control reply")
        return None
    return match_reply(decoded, headers, ticket)


def reply_limit(limit: int | None, destination: Sequence[str] | None) -> int | None:
    """How many replies to wait for: *limit*, else one per *destination* node."""
    if limit is None and destination:
        return len(destination)
    return limit
