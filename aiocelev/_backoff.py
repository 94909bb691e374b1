"""Jittered, capped exponential backoff for reconnect loops."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays for retries: exponential growth, capped, with "equal jitter".

    Each delay is drawn uniformly from ``[d/2, d]`` where ``d`` doubles from
    *initial* up to *maximum*, so a fleet of clients that lost the broker at the
    same moment does not come back in lockstep.
    """

    __slots__ = ("_attempt", "factor", "initial", "maximum")

    def __init__(self, initial: float = 0.1, maximum: float = 5.0, factor: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self._attempt = 0

    @property
    def attempts(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._attempt

    @attempts.setter
    def attempts(self, value: int) -> None:
        # Lets a caller count a failure that was noticed without a delay (the
        # next delay then grows as if one had been handed out).
        self._attempt = max(0, value)

    def next_delay(self) -> float:
        """The next delay, in seconds."""
        try:
            ceiling = min(self.maximum, self.initial * self.factor**self._attempt)
        except OverflowError:  # a very long outage: the cap was reached long ago
            ceiling = self.maximum
        self._attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Start again from *initial* (call after a success)."""
        self._attempt = 0
