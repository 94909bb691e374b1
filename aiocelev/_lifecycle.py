"""Explicit open/closed lifecycle for dispatchers and receivers."""

from __future__ import annotations

from enum import Enum

from ._exceptions import ClosedError

__all__ = ["Lifecycle", "LifecycleState"]


class LifecycleState(Enum):
    """Where an object is in its life; it never goes back."""

    UNOPENED = "unopened"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Lifecycle:
    """Tracks the state of one object and refuses reopening or use while not open."""

    __slots__ = ("name", "state")

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = LifecycleState.UNOPENED

    @property
    def is_open(self) -> bool:
        return self.state is LifecycleState.OPEN

    @property
    def is_closed(self) -> bool:
        return self.state is LifecycleState.CLOSED

    def check_open(self) -> None:
        if self.state is not LifecycleState.OPEN:
            if self.state is LifecycleState.UNOPENED:
                raise ClosedError(f"{self.name} is not open: use it as 'async with'")
            raise ClosedError(f"{self.name} is {self.state.value}")

    def opening(self) -> None:
        if self.state is not LifecycleState.UNOPENED:
            raise ClosedError(f"{self.name} cannot be opened twice (it is {self.state.value})")
        self.state = LifecycleState.OPENING

    def opened(self) -> None:
        self.state = LifecycleState.OPEN

    def failed(self) -> None:
        self.state = LifecycleState.CLOSED

    def closing(self) -> None:
        self.state = LifecycleState.CLOSING

    def closed(self) -> None:
        self.state = LifecycleState.CLOSED
