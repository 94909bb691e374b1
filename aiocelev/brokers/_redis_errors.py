"""Translation of redis-py / socket errors into aiocelev errors.

Every call into redis-py goes through :func:`map_errors` (or is caught with
:data:`REDIS_ERRORS` and passed to :func:`translate`), so no redis exception
ever reaches a caller of the adapter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis.exceptions as redis_exc

from .._exceptions import AiocelevError, BrokerConnectionError, BrokerError, PublishError
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
    """A short one-line description of a foreign exception, passwords masked."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {mask_url(text)}" if text else type(exc).__name__


def translate(exc: BaseException, url: str, doing: str) -> AiocelevError:
    """The aiocelev exception for a redis-py (or socket) error.

    :param url: the masked broker URL, for the message.
    :param doing: what failed (``"publish"``, ``"subscribe"``...); a server-side
        error while publishing becomes :class:`PublishError`.
    """
    what = f"Redis {url}: {doing} failed ({describe(exc)})"
    if isinstance(exc, CONNECTION_ERRORS):
        return BrokerConnectionError(what)
    if isinstance(exc, redis_exc.ResponseError) and doing.startswith("publish"):
        return PublishError(what)
    return BrokerError(what)


@contextmanager
def map_errors(url: str, doing: str) -> Iterator[None]:
    """Re-raise redis-py errors of the block as aiocelev errors (see :func:`translate`)."""
    try:
        yield
    except AiocelevError:
        raise
    except REDIS_ERRORS as exc:
        raise translate(exc, url, doing) from exc
