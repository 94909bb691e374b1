"""Whether a subscription hears its broker right now: :class:`ConnectionStatus`.

Adapters reconnect by themselves, so a lost connection does not end a stream:
it opens a *gap* (events published meanwhile may be lost, see
``docs/reliability.md``).  A :class:`LinkMonitor` records each gap as it opens
and closes and tells its listeners; the receiver exposes it as
:attr:`~aiocelev.EventReceiver.connection` and ``on_connection``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["ConnectionCallback", "ConnectionStatus", "LinkMonitor"]

logger = logging.getLogger("aiocelev.link")


class ConnectionStatus(NamedTuple):
    """A snapshot of a subscription's connection to its broker."""

    connected: bool
    """Whether events can arrive now."""
    broker: str
    """The broker URL, password masked."""
    gaps: int
    """How many times the connection was lost since the subscription started."""
    since: float
    """When (epoch seconds) the connection last changed: lost, restored or first made."""
    reason: str | None = None
    """Why it was lost (while disconnected), else ``None``."""
    last_gap: float | None = None
    """How long (seconds) the newest finished gap lasted, if any."""

    def describe(self) -> str:
        """One line for people, e.g. ``disconnected from redis://h:6379/0, reconnecting (gap #2)``."""
        if not self.connected:
            if self.gaps == 0:
                return f"connecting to {self.broker}"
            why = f": {self.reason}" if self.reason else ""
            return f"disconnected from {self.broker}{why}; reconnecting (gap #{self.gaps})"
        if self.last_gap is not None:
            return (
                f"connected to {self.broker}; reconnected after {self.last_gap:.1f}s "
                f"(gap #{self.gaps})"
            )
        return f"connected to {self.broker}"


#: ``on_connection(status)``: called on every loss and recovery; its return value is ignored.
ConnectionCallback = Callable[[ConnectionStatus], object]


class LinkMonitor:
    """Tracks one subscription's connection and notifies listeners of each change.

    Starts *connected* unless told otherwise.  :meth:`lost` opens a gap (a
    second call while already lost only updates the reason); :meth:`restored`
    closes it.  Listener errors are logged, never raised into the adapter.
    """

    __slots__ = (
        "_broker",
        "_connected",
        "_gaps",
        "_last_gap",
        "_listeners",
        "_lost_mono",
        "_reason",
        "_since",
    )

    def __init__(self, broker: str, *, connected: bool = True) -> None:
        self._broker = broker
        self._connected = connected
        self._gaps = 0
        self._since = time.time()
        self._reason: str | None = None
        self._last_gap: float | None = None
        self._lost_mono = time.monotonic()
        self._listeners: list[ConnectionCallback] = []

    @property
    def connected(self) -> bool:
        """Whether the subscription hears its broker now."""
        return self._connected

    @property
    def status(self) -> ConnectionStatus:
        """The current :class:`ConnectionStatus`."""
        return ConnectionStatus(
            connected=self._connected,
            broker=self._broker,
            gaps=self._gaps,
            since=self._since,
            reason=self._reason,
            last_gap=self._last_gap,
        )

    def listen(self, callback: ConnectionCallback) -> Callable[[], None]:
        """Call *callback* with the new status on every change; returns a function that stops it."""
        self._listeners.append(callback)

        def remove() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return remove

    def lost(self, reason: str) -> None:
        """The connection is gone: open a gap (or update the reason of the open one)."""
        if not self._connected:
            if reason != self._reason:
                self._reason = reason
            return
        self._connected = False
        self._gaps += 1
        self._since = time.time()
        self._lost_mono = time.monotonic()
        self._reason = reason
        self._notify()

    def restored(self) -> None:
        """Events can arrive again: close the open gap (the first connection is not a gap)."""
        if self._connected:
            return
        self._connected = True
        self._since = time.time()
        self._reason = None
        if self._gaps:
            self._last_gap = time.monotonic() - self._lost_mono
            self._notify()

    def _notify(self) -> None:
        status = self.status
        for callback in list(self._listeners):
            try:
                callback(status)
            except Exception:
                logger.exception("a connection-status callback raised")
