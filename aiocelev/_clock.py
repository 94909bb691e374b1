"""The clocks an event is stamped with: Lamport clock and the local zone offset.

:class:`LamportClock` has the semantics of ``kombu.clocks.LamportClock``; it is
pure and synchronous (asyncio code runs it on one thread, so no lock is
needed).  :func:`utcoffset` is the ``utcoffset`` field Celery sends.
"""

from __future__ import annotations

import time
from typing import Any, TypeGuard

__all__ = ["MAX_CLOCK", "LamportClock", "utcoffset", "valid_clock"]

#: Clock values at or above this are treated as absurd: they are neither used to
#: adjust the local clock nor passed on.  2**53 keeps every clock exactly
#: representable as a JSON number in every reader (JavaScript included).
MAX_CLOCK = 2**53


def valid_clock(value: Any) -> TypeGuard[int]:
    """Whether *value* is a usable clock: an ``int`` (not ``bool``) in ``[0, MAX_CLOCK)``."""
    return type(value) is int and 0 <= value < MAX_CLOCK


def utcoffset() -> float:
    """The local offset in hours *west* of UTC, DST-aware, as Celery >= 5.7 sends it."""
    if time.localtime().tm_isdst > 0 and time.daylight:
        return time.altzone / 3600
    return time.timezone / 3600


class LamportClock:
    """A Lamport logical clock.

    ``forward()`` advances it for a local event (a send); ``adjust(other)`` merges
    a clock seen on a received event: ``max(value, other) + 1``.

    :param initial: the starting value.
    """

    __slots__ = ("value",)

    def __init__(self, initial: int = 0) -> None:
        self.value = initial

    def forward(self) -> int:
        """Advance the clock by one and return the new value."""
        self.value += 1
        return self.value

    def adjust(self, other: int) -> int:
        """Merge a received clock value: set to ``max(value, other) + 1`` and return it."""
        value = self.value
        self.value = (other if other > value else value) + 1
        return self.value

    def __repr__(self) -> str:
        return f"<LamportClock: {self.value}>"
