"""The broker boundary: the small structural protocol every adapter implements."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .._message import IncomingMessage, OutgoingMessage

if TYPE_CHECKING:
    from ._control import ControlTransport

__all__ = ["Broker", "Subscription"]


@runtime_checkable
class Subscription(Protocol):
    """A live subscription: an async iterator of raw messages.

    It is live as soon as :meth:`Broker.subscribe` returns: a message published
    after that is delivered.  Adapters reconnect and resubscribe by themselves;
    iteration ends (``StopAsyncIteration``) only after :meth:`aclose`, and raises
    :class:`~aiocelev.BrokerConnectionError` only when the adapter gives up.
    """

    def __aiter__(self) -> AsyncIterator[IncomingMessage]: ...

    async def __anext__(self) -> IncomingMessage: ...

    async def aclose(self) -> None:
        """Cancel the subscription and release what it holds."""
        ...


@runtime_checkable
class Broker(Protocol):
    """A connection to a message broker's event exchange.

    Four async methods over bytes and routing keys, plus the remote-control hook
    :meth:`control`; events are serialised above this boundary.
    ``aiocelev.testing.check_broker`` verifies an implementation.
    """

    @property
    def url(self) -> str:
        """The broker URL with any password masked."""
        ...

    async def connect(self) -> None:
        """Connect (idempotent).

        :raises BrokerConnectionError: when the broker cannot be reached.
        """
        ...

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish messages in order; return once the broker has them.

        "Has them" means written to the connection, or confirmed by the broker
        when the adapter is configured for publisher confirms.

        :raises BrokerConnectionError: when the broker is unavailable right now;
            nothing can be assumed about which messages went out.
        """
        ...

    async def subscribe(self, binding_keys: Sequence[str]) -> Subscription:
        """Subscribe to the routing keys matching any of *binding_keys*.

        Binding keys use AMQP topic syntax (``*`` one word, ``#`` zero or more).
        The subscription is live when this returns.
        """
        ...

    def control(self) -> ControlTransport:
        """The remote-control transport over this broker (the same object each call).

        It shares the adapter's connection; see :class:`~aiocelev.brokers.ControlTransport`.

        :raises NotSupportedError: the adapter has no remote control.
        """
        ...

    async def aclose(self) -> None:
        """Close every connection and subscription (idempotent)."""
        ...
