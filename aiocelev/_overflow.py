"""Overflow policies: what a full buffer does with one more event.

Each side supports its own set: a dispatcher can make the caller wait
(``block``), a receiver can stop reading from the broker (``pause``).  Both
can drop the oldest or the newest event, or fail.
"""

from __future__ import annotations

from collections.abc import Collection
from enum import Enum

from ._exceptions import ConfigurationError

__all__ = ["DISPATCHER_POLICIES", "RECEIVER_POLICIES", "Overflow", "parse_overflow"]


class Overflow(str, Enum):
    """What a full buffer does with one more event.

    * ``BLOCK`` (dispatcher only): ``send`` waits for room (backpressure on the
      caller).  It waits at most ``block_timeout`` seconds, and not at all while
      the broker is away; then the oldest buffered event is dropped to make room.
    * ``PAUSE`` (receiver only): stop reading from the broker until the caller
      takes an event (backpressure on the broker).
    * ``DROP_OLDEST``: drop the oldest buffered event to make room.
    * ``DROP_NEWEST``: drop the event that does not fit.
    * ``ERROR``: fail with :class:`~aiocelev.BufferFullError`.
    """

    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"
    DROP_NEWEST = "drop_newest"
    PAUSE = "pause"
    ERROR = "error"


#: The policies an :class:`~aiocelev.EventDispatcher` accepts.
DISPATCHER_POLICIES: tuple[Overflow, ...] = (
    Overflow.BLOCK,
    Overflow.DROP_OLDEST,
    Overflow.DROP_NEWEST,
    Overflow.ERROR,
)
#: The policies an :class:`~aiocelev.EventReceiver` accepts.
RECEIVER_POLICIES: tuple[Overflow, ...] = (
    Overflow.PAUSE,
    Overflow.DROP_OLDEST,
    Overflow.DROP_NEWEST,
    Overflow.ERROR,
)


def parse_overflow(value: Overflow | str, allowed: Collection[Overflow], owner: str) -> Overflow:
    """The policy *value* names, if *owner* supports it (it is in *allowed*).

    :param value: an :class:`Overflow` or its name (``"drop_oldest"``).
    :param allowed: the policies *owner* supports, in the order to list them.
    :param owner: who asks, for the message (``"EventReceiver"``).
    :raises ConfigurationError: not a policy name, or not one *owner* supports;
        the message lists the valid ones.
    """
    valid = ", ".join(repr(policy.value) for policy in allowed)
    try:
        policy = Overflow(value)
    except ValueError:
        raise ConfigurationError(
            f"unknown overflow policy {value!r} for {owner}; valid policies: {valid}"
        ) from None
    if policy not in allowed:
        raise ConfigurationError(
            f"{owner} does not support overflow policy {policy.value!r}; valid policies: {valid}"
        )
    return policy
