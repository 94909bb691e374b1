"""Exceptions raised by aiocelev.

Every error aiocelev raises derives from :class:`AiocelevError`; errors of the
broker client libraries (aiormq, pamqp, redis) are translated at the adapter
edge and never reach the caller.

* AiocelevError
  * ConfigurationError (also ``ValueError``): a bad URL or option.
    * UnknownSchemeError: no adapter registered for a URL scheme.
    * MissingDependencyError (also ``ImportError``): an optional extra is not installed.
    * DuplicateNodeError: a remote-control node name is already in use.
  * BrokerError: the broker failed.
    * BrokerConnectionError: the broker cannot be reached, or the connection was lost.
    * PublishError: the broker refused or did not confirm a publish.
    (``BrokerError.reason`` is the cause in a few words, without the URL.)
  * DecodeError: a message is not a valid event message; ``reason`` says why.
  * ClosedError: a dispatcher, receiver or broker was used after it was closed.
    * TaskStateError: a task handle was driven out of order (an outcome twice, or
      an outcome that needs ``started()`` before it).
  * EndOfStream: a receiver has no more events (it was closed, or its subscription ended).
  * BufferFullError: a bounded buffer had no room and the policy says to fail.
  * NotSupportedError (also ``NotImplementedError``): the broker adapter cannot do this.
  * StoreError: the task-history store failed (a database error, translated).
    * StoreConnectionError (also ``ConnectionError``): the database cannot be reached, or
      is busy; retrying may succeed.
"""

from __future__ import annotations

import errno
import re
import socket

__all__ = [
    "AiocelevError",
    "BrokerConnectionError",
    "BrokerError",
    "BufferFullError",
    "ClosedError",
    "ConfigurationError",
    "DecodeError",
    "DuplicateNodeError",
    "EndOfStream",
    "MissingDependencyError",
    "NotSupportedError",
    "PublishError",
    "StoreConnectionError",
    "StoreError",
    "TaskStateError",
    "UnknownSchemeError",
]


class AiocelevError(Exception):
    """Base class of every error raised by aiocelev."""


class ConfigurationError(AiocelevError, ValueError):
    """An argument, URL or option is not valid."""


class UnknownSchemeError(ConfigurationError):
    """No broker adapter is registered for the URL's scheme."""


class MissingDependencyError(AiocelevError, ImportError):
    """A broker adapter needs an optional extra that is not installed."""


class DuplicateNodeError(ConfigurationError):
    """Another node already consumes the remote-control pidbox of this node name."""


class NotSupportedError(AiocelevError, NotImplementedError):
    """The broker adapter does not support this operation (e.g. remote control)."""


class BrokerError(AiocelevError):
    """The broker failed to do what was asked."""

    #: Why, in a few words and without the broker's URL (for example
    #: ``"connection refused by 127.0.0.1:5672 (is the broker running there?)"`` or
    #: ``"vhost 'x' not found"``); ``None`` when the adapter gave no reason.
    reason: str | None = None


class BrokerConnectionError(BrokerError, ConnectionError):
    """The broker cannot be reached, or the connection to it was lost."""


class PublishError(BrokerError):
    """The broker refused a publish, or did not confirm it."""


class DecodeError(AiocelevError):
    """A message on the event bus is not a valid event message.

    :param reason: a short, stable, machine-readable reason such as
        ``"content-type"``, ``"json"``, ``"not-an-event"``, ``"too-large"`` or
        ``"envelope"``; receivers count malformed messages by it.
    :param detail: a human-readable explanation.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ClosedError(AiocelevError):
    """The object was used after it was closed (or before it was opened)."""


class TaskStateError(ClosedError):
    """A :class:`~aiocelev.TaskHandle` was driven out of order.

    Raised when an outcome is reported twice, or when ``succeeded()``,
    ``failed()`` or ``retried()`` is called before ``started()``.
    """


class EndOfStream(AiocelevError):
    """A receiver has no more events: it was closed, or its subscription ended.

    ``receive()`` raises it; ``async for`` ends normally instead.
    """


class BufferFullError(AiocelevError):
    """A bounded buffer had no room and its overflow policy says to fail."""


def network_reason(exc: BaseException) -> str | None:
    """What an operating-system connection error in *exc*'s chain means, in a few words.

    Looks through ``__cause__`` / ``__context__`` for a refused connection, an
    unknown host or a reset; ``None`` when there is none of these.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "errno", None)
        text = str(current)
        if isinstance(current, ConnectionRefusedError) or code == errno.ECONNREFUSED:
            found = re.search(r"\('([^']*)', (\d+)", text) or re.search(
                r"connecting to (\S+?:\d+)", text
            )
            where = ""
            if found is not None:
                where = " by " + (":".join(found.groups()) if found.lastindex == 2 else found[1])
            return f"connection refused{where} (is the broker running there?)"
        if isinstance(current, socket.gaierror):
            return f"unknown host ({current.strerror or text})"
        if isinstance(current, ConnectionResetError) or code == errno.ECONNRESET:
            return "connection reset by the server"
        current = current.__cause__ or current.__context__
    return None


class StoreError(AiocelevError):
    """The task-history store failed: a database error, translated at the store's edge."""


class StoreConnectionError(StoreError, ConnectionError):
    """The store's database cannot be reached, or is busy: retrying may succeed."""
