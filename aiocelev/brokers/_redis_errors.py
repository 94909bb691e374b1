"""Translation of redis-py / socket errors into aiocelev errors.

Every call into redis-py goes through :func:`map_errors` (or is caught with
:data:`REDIS_ERRORS` and passed to :func:`translate`), so no redis exception
ever reaches a caller of the adapter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis.exceptions as redis_exc

from .._exceptions import (
    AiocelevError,
    BrokerConnectionError,
    BrokerError,
    PublishError,
    network_reason,
)
from .._url import mask_url

__all__ = ["CONNECTION_ERRORS", "REDIS_ERRORS", "describe", "map_errors", "translate"]

#: Errors of the redis client that mean "the connection is unusable".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis_exc.ConnectionError,
    redis_exc.TimeoutError,
    OSError,
)

#: Every error an operation on Redis may raise that the adapter translates.
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    redis_exc.RedisError,
    TimeoutError,
)


def describe(exc: BaseException) -> str:
    """A short one-line description of a foreign exception, passwords masked.

    Known failures are said in words (a refused connection, an unknown host,
    a refused login, no answer in time, a server that does not speak Redis);
    others keep the exception's type and text.
    """
    reason = network_reason(exc)
    if reason is not None:
        return reason
    text = str(exc).strip()
    if isinstance(exc, redis_exc.AuthenticationError):
        return f"login refused: {text} (check the user name and password)"
    if isinstance(exc, redis_exc.InvalidResponse):
        return f"the server does not speak Redis ({text})"
    if isinstance(exc, (redis_exc.TimeoutError, TimeoutError)):
        return f"no answer from the server in time ({text or 'timed out'})"
    if isinstance(exc, redis_exc.ResponseError) and "DB index is out of range" in text:
        return f"the server refused the database number: {text}"
    return f"{type(exc).__name__}: {mask_url(text)}" if text else type(exc).__name__


def translate(exc: BaseException, url: str, doing: str) -> BrokerError:
    """The aiocelev exception for a redis-py (or socket) error.

    :param url: the masked broker URL, for the message.
    :param doing: what failed (``"publish"``, ``"subscribe"``...); a server-side
        error while publishing becomes :class:`PublishError`.
    """
    reason = describe(exc)
    what = f"Redis {url}: {doing} failed ({reason})"
    error: BrokerError
    if isinstance(exc, CONNECTION_ERRORS):
        error = BrokerConnectionError(what)
    elif isinstance(exc, redis_exc.ResponseError) and doing.startswith("publish"):
        error = PublishError(what)
    else:
        error = BrokerError(what)
    error.reason = reason
    return error


@contextmanager
def map_errors(url: str, doing: str) -> Iterator[None]:
    """Re-raise redis-py errors of the block as aiocelev errors (see :func:`translate`)."""
    try:
        yield
    except AiocelevError:
        raise
    except REDIS_ERRORS as exc:
        raise translate(exc, url, doing) from exc
