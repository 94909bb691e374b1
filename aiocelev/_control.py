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

import json
import logging
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any

from ._clock import LamportClock, valid_clock
from ._codec import dumps, loads
from ._exceptions import ConfigurationError, DecodeError

__all__ = [
    "DEFAULT_CONTROL_EXCHANGE",
    "ControlReply",
    "ControlRequest",
    "decode_replies",
    "loads_reply",
    "encode_reply_body",
    "parse_request",
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
    :raises ConfigurationError: *destination* is not a list/tuple, or only one of
        *ticket* / *reply_to* is given.
    """
    if destination is not None and not isinstance(destination, (list, tuple)):
        raise ConfigurationError(
            f"destination must be a list or tuple of node names, not {type(destination).__name__}"
        )
    if (ticket is None) != (reply_to is None):
        raise ConfigurationError("ticket and reply_to go together: give both or neither")
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
        decoded = loads_reply(body)
    except DecodeError as exc:
        log.warning("ignoring an undecodable remote-control reply: %s", exc)
        return None
    return match_reply(decoded, headers, ticket)


def loads_reply(body: bytes | str) -> Any:
    """Decode a reply body as Celery's client does: JSON, including ``Infinity`` and ``NaN``.

    kombu writes ``float("inf")`` as ``Infinity`` (a worker's ``conf`` has some), which the
    event decoder rejects on purpose; replies are shown, not merged into clocks or state.

    :raises DecodeError: the body is not JSON.
    """
    try:
        return json.loads(body)
    except (ValueError, TypeError, RecursionError) as exc:
        raise DecodeError("json", f"not JSON: {exc}") from None


def reply_limit(limit: int | None, destination: Sequence[str] | None) -> int | None:
    """How many replies to wait for: *limit*, else one per *destination* node."""
    if limit is None and destination:
        return len(destination)
    return limit


def encode_reply_body(nodename: str, payload: Any) -> bytes:
    """A node's reply body ``{nodename: payload}`` as kombu's JSON serializer writes it.

    :raises TypeError: *payload* is not JSON serialisable.
    """
    return dumps({nodename: payload}).encode("ascii")


def reply_headers(ticket: str | None, clock: int) -> dict[str, Any]:
    """The headers of a reply: the request's ``ticket`` and the node's ``clock``."""
    return {"ticket": ticket, "clock": clock}


# -- the request, as a node sees it --------------------------------------------


@dataclass(frozen=True)
class ControlRequest:
    """One remote-control request taken from a node's pidbox.

    Build it from a decoded request body and its message headers with
    :meth:`from_message`; transports may keep what they need to reply
    (e.g. a channel) in :attr:`context`.
    """

    method: str
    """The command, e.g. ``"ping"``."""
    arguments: Mapping[str, Any] = field(default_factory=dict)
    """Its keyword arguments."""
    destination: tuple[str, ...] | None = None
    """Node names it is for; ``None``: every node (unless *pattern* says otherwise)."""
    pattern: str | None = None
    """With *matcher*: a pattern node names must match."""
    matcher: str | None = None
    """``"glob"`` (default) or ``"pcre"``."""
    ticket: str | None = None
    """Ties the reply to the request; set when a reply is wanted."""
    reply_to: Mapping[str, str] | None = None
    """``{"exchange": ..., "routing_key": ...}`` when a reply is wanted."""
    clock: int | None = None
    """The sender's Lamport clock (header ``clock``)."""
    expires: float | None = None
    """Header ``expires`` (epoch seconds; ``0``/``None``: never)."""
    context: Any = field(default=None, compare=False, repr=False)
    """Transport-private data."""

    @classmethod
    def from_message(
        cls, body: Any, headers: Mapping[str, Any] | None = None, *, context: Any = None
    ) -> ControlRequest:
        """Parse a decoded pidbox request body (kombu ``Mailbox`` format).

        :raises ValueError: the body is not a request.
        """
        if type(body) is not dict or not isinstance(body.get("method"), str):
            raise ValueError("a remote-control request is a JSON object with a 'method'")
        arguments = body.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise ValueError("'arguments' must be a JSON object")
        destination = body.get("destination")
        if destination is not None:
            if not isinstance(destination, (list, tuple)):
                raise ValueError("'destination' must be a list of node names")
            destination = tuple(str(name) for name in destination)
        reply_to = body.get("reply_to")
        if reply_to is not None and not (
            isinstance(reply_to, dict) and isinstance(reply_to.get("routing_key"), str)
        ):
            raise ValueError("'reply_to' must be an object with a 'routing_key'")
        headers = headers or {}
        clock = headers.get("clock")
        expires = headers.get("expires")
        pattern = body.get("pattern")
        matcher = body.get("matcher")
        ticket = body.get("ticket")
        return cls(
            method=body["method"],
            arguments=MappingProxyType(dict(arguments)),
            destination=destination,
            pattern=pattern if isinstance(pattern, str) else None,
            matcher=matcher if isinstance(matcher, str) else None,
            ticket=ticket if isinstance(ticket, str) else None,
            reply_to=MappingProxyType(dict(reply_to)) if reply_to is not None else None,
            clock=clock if valid_clock(clock) else None,
            expires=float(expires) if isinstance(expires, (int, float)) and expires else None,
            context=context,
        )

    @property
    def wants_reply(self) -> bool:
        """Whether the sender waits for replies."""
        return self.reply_to is not None

    def expired(self, now: float | None = None) -> bool:
        """Whether the request's ``expires`` header is in the past."""
        return bool(self.expires) and (time.time() if now is None else now) > (self.expires or 0)

    def addressed_to(self, nodename: str) -> bool:
        """Whether node *nodename* should handle this request (kombu's rules).

        A non-empty ``destination`` lists the nodes; otherwise ``pattern`` and
        ``matcher`` (``glob`` or ``pcre``, matched from the start) select them;
        otherwise every node does.
        """
        if self.destination:
            return nodename in self.destination
        if self.pattern and self.matcher:
            if self.matcher == "glob":
                return fnmatchcase(nodename, self.pattern)
            if self.matcher == "pcre":
                try:
                    return re.match(self.pattern, nodename) is not None
                except re.error:
                    return False
            return False
        return True


def parse_request(
    body: bytes, headers: Mapping[str, Any] | None, nodename: str, log: logging.Logger
) -> ControlRequest | None:
    """Decode one raw pidbox request for *nodename*; ``None`` (logged) if malformed."""
    try:
        return ControlRequest.from_message(loads(body), headers)
    except (DecodeError, ValueError) as exc:
        log.warning("%s: ignoring a malformed remote-control request: %s", nodename, exc)
        return None


# -- the replies, as a client sees them ---------------------------------------


@dataclass(frozen=True, slots=True)
class ControlReply:
    """One node's answer to a remote-control request.

    Celery workers answer ``{nodename: payload}``; ``payload`` is whatever the
    command returns: ``{"ok": "pong"}`` for ``ping``, a list of task dicts for
    ``inspect active``, ``{"error": "..."}`` when the command failed.
    """

    node: str
    """The node that answered, e.g. ``"celery@host"``."""
    payload: Any
    """The decoded JSON answer."""
    duplicate: bool = False
    """Another reply to the same request already came from a node with this name
    (two workers share a node name; Celery warns ``DuplicateNodenameWarning``)."""

    @property
    def ok(self) -> bool:
        """``False`` when the payload is ``{"error": ...}``."""
        return not (isinstance(self.payload, dict) and "error" in self.payload)

    @property
    def error(self) -> str | None:
        """The error a node reported, if any."""
        if isinstance(self.payload, dict) and "error" in self.payload:
            return str(self.payload["error"])
        return None

    def as_dict(self) -> dict[str, Any]:
        """``{node: payload}``, the shape Celery's client returns per reply."""
        return {self.node: self.payload}


def decode_replies(
    body: bytes,
    headers: Mapping[str, Any],
    ticket: str,
    clock: LamportClock,
    log: logging.Logger,
) -> list[ControlReply]:
    """The replies one raw reply message carries for *ticket* (usually one).

    Merges a valid ``clock`` header into *clock*; a reply for another ticket,
    an expired one or an undecodable one gives ``[]`` (the latter is logged).
    """
    matched = accept_reply(body, headers, ticket, clock, log)
    if matched is None:
        return []
    return [ControlReply(str(node), payload) for node, payload in matched.items()]
