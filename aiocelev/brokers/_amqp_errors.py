"""Translation of aio-pika / aiormq / pamqp / OS errors into aiocelev errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import aio_pika.exceptions
import aiormq.exceptions
import pamqp.exceptions

from .._exceptions import AiocelevError, BrokerConnectionError, BrokerError, PublishError
from .._url import mask_url

__all__ = ["CONNECTION_ERRORS", "describe", "map_errors"]

#: Errors meaning "the connection (or the channel with it) is gone or unusable".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aio_pika.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    TimeoutError,
    EOFError,
)


def describe(exc: BaseException) -> str:
    """A short one-line description of a foreign exception, passwords masked."""
    text = str(exc).strip() or repr(exc)
    # Client libraries sometimes quote the URL they were given.
    return f"{type(exc).__name__}: {mask_url(text)}"


@contextmanager
def map_errors(where: str, *, publish: bool = False) -> Iterator[None]:
    """Re-raise foreign errors of the block as aiocelev errors.

    :param where: what was being done and on which (masked) URL, for the message.
    :param publish: map delivery failures (nack, return) to :class:`PublishError`.
    """
    try:
        yield
    except AiocelevError:
        raise
    except aiormq.exceptions.DeliveryError as exc:
        if publish:
            raise PublishError(
                f"{where}: the broker did not accept the message ({describe(exc)})"
            ) from exc
        raise BrokerError(f"{where}: {describe(exc)}") from exc
    except aiormq.exceptions.ChannelClosed as exc:
        # A channel-level error (PRECONDITION_FAILED, NOT_FOUND, ACCESS_REFUSED...):
        # the connection may still be fine but the request is refused.
        raise BrokerError(f"{where}: the broker closed the channel ({describe(exc)})") from exc
    except CONNECTION_ERRORS as exc:
        raise BrokerConnectionError(f"{where}: {describe(exc)}") from exc
    except (aiormq.exceptions.AMQPError, pamqp.exceptions.PAMQPException) as exc:
        if publish:
            raise PublishError(f"{where}: {describe(exc)}") from exc
        raise BrokerError(f"{where}: {describe(exc)}") from exc
    except RuntimeError as exc:
        # aio-pika raises bare RuntimeError for "closed" / "not initialised" objects.
        if "closed" in str(exc).lower() or "initialized" in str(exc).lower():
            raise BrokerConnectionError(f"{where}: {describe(exc)}") from exc
        raise
