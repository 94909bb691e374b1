"""Translation of aio-pika / aiormq / pamqp / OS errors into aiocelev errors."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager

import aio_pika.exceptions
import aiormq.exceptions
import pamqp.exceptions

from .._exceptions import (
    AiocelevError,
    BrokerConnectionError,
    BrokerError,
    PublishError,
    network_reason,
)
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
    """A short one-line description of a foreign exception, passwords masked.

    Known failures are said in words (a refused connection, a refused login,
    a vhost the broker does not have, no answer in time); others keep the
    exception's type and text.
    """
    reason = network_reason(exc)
    if reason is not None:
        return reason
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return f"login refused: {_reply_text(exc)} (check the user name and password)"
    if isinstance(exc, aiormq.exceptions.ConnectionClosed) and len(exc.args) >= 2:
        return f"the broker closed the connection: {exc.args[1]}"
    if isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(exc):
        return _refused_open(exc)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) and not str(exc).strip():
        return "no answer from the broker in time (is it an AMQP port?)"
    text = str(exc).strip() or repr(exc)
    # Client libraries sometimes quote the URL they were given.
    return f"{type(exc).__name__}: {mask_url(text)}"


def _reply_text(exc: BaseException) -> str:
    text = str(exc.args[0]) if exc.args else str(exc)
    return text.replace(" For details see the broker logfile.", "").strip()


def _refused_open(exc: BaseException) -> str:
    """The broker answered ``Connection.Open`` with ``Connection.Close``.

    aiormq keeps only the frame's default repr in its message; the frame
    itself, with the broker's reply text, is still a local of the failing
    call in the traceback.
    """
    text = None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame.f_locals.get("frame")
        reply = getattr(frame, "reply_text", None)
        if isinstance(reply, str) and reply:
            text = reply
        tb = tb.tb_next
    if text is None:
        return "the broker refused to open the vhost (it does not exist, or the user has no access)"
    found = re.search(r"vhost (\S+) not found", text)
    if found is not None:
        return f"vhost {found[1]!r} not found"
    return f"the broker refused the connection: {text}"


@contextmanager
def map_errors(where: str, *, publish: bool = False) -> Iterator[None]:
    """Re-raise foreign errors of the block as aiocelev errors.

    The error's :attr:`~aiocelev.BrokerError.reason` is :func:`describe` of the
    foreign error (without *where*).

    :param where: what was being done and on which (masked) URL, for the message.
    :param publish: map delivery failures (nack, return) to :class:`PublishError`.
    """
    try:
        yield
    except AiocelevError:
        raise
    except aiormq.exceptions.DeliveryError as exc:
        if publish:
            raise _with_reason(
                PublishError(f"{where}: the broker did not accept the message ({describe(exc)})"),
                exc,
            ) from exc
        raise _with_reason(BrokerError(f"{where}: {describe(exc)}"), exc) from exc
    except aiormq.exceptions.ChannelClosed as exc:
        # A channel-level error (PRECONDITION_FAILED, NOT_FOUND, ACCESS_REFUSED...):
        # the connection may still be fine but the request is refused.
        raise _with_reason(
            BrokerError(f"{where}: the broker closed the channel ({describe(exc)})"), exc
        ) from exc
    except CONNECTION_ERRORS as exc:
        raise _with_reason(BrokerConnectionError(f"{where}: {describe(exc)}"), exc) from exc
    except (aiormq.exceptions.AMQPError, pamqp.exceptions.PAMQPException) as exc:
        if publish:
            raise _with_reason(PublishError(f"{where}: {describe(exc)}"), exc) from exc
        raise _with_reason(BrokerError(f"{where}: {describe(exc)}"), exc) from exc
    except RuntimeError as exc:
        # aio-pika raises bare RuntimeError for "closed" / "not initialised" objects.
        if "closed" in str(exc).lower() or "initialized" in str(exc).lower():
            raise _with_reason(BrokerConnectionError(f"{where}: {describe(exc)}"), exc) from exc
        raise


def _with_reason(error: BrokerError, cause: BaseException) -> BrokerError:
    error.reason = describe(cause)
    return error
