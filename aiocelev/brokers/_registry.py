"""URL scheme -> adapter registry, with lazy imports of optional extras."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from .._exceptions import ConfigurationError, MissingDependencyError, UnknownSchemeError
from .._url import mask_url, scheme_of, split_urls
from ._base import Broker

__all__ = ["BrokerFactory", "known_schemes", "open_broker", "register_broker"]

BrokerFactory = Callable[..., Broker]

# scheme -> (module, extra that provides its dependency)
_BUILTIN: dict[str, tuple[str, str | None]] = {
    "memory": ("aiocelev.brokers.memory", None),
    "amqp": ("aiocelev.brokers.amqp", "amqp"),
    "amqps": ("aiocelev.brokers.amqp", "amqp"),
    "pyamqp": ("aiocelev.brokers.amqp", "amqp"),
    "librabbitmq": ("aiocelev.brokers.amqp", "amqp"),
    "redis": ("aiocelev.brokers.redis", "redis"),
    "rediss": ("aiocelev.brokers.redis", "redis"),
    "redis+socket": ("aiocelev.brokers.redis", "redis"),
    "sentinel": ("aiocelev.brokers.redis", "redis"),
}

_custom: dict[str, BrokerFactory] = {}


def register_broker(scheme: str, factory: BrokerFactory) -> None:
    """Make ``open_broker`` use *factory* for URLs of *scheme*.

    *factory* is called as ``factory(url, **options)`` and must return an
    object implementing :class:`~aiocelev.brokers.Broker`.
    """
    if not scheme or "://" in scheme:
        raise ConfigurationError(f"not a URL scheme: {scheme!r}")
    _custom[scheme.lower()] = factory


def known_schemes() -> list[str]:
    """Every scheme ``open_broker`` accepts, sorted."""
    return sorted({*_BUILTIN, *_custom})


def _factory_for(scheme: str, url: str) -> BrokerFactory:
    if scheme in _custom:
        return _custom[scheme]
    if scheme not in _BUILTIN:
        close = difflib.get_close_matches(scheme, known_schemes(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownSchemeError(
            f"no broker adapter for {mask_url(url)!r} (scheme {scheme!r}); "
            f"known schemes: {', '.join(known_schemes())}.{hint}"
        )
    module_name, extra = _BUILTIN[scheme]
    try:
        module = importlib.import_module(module_name)
    except MissingDependencyError:
        raise  # the adapter already said which extra is missing
    except ImportError as exc:
        if extra is None:
            raise
        raise MissingDependencyError(
            f"the {scheme}:// adapter needs the {extra!r} extra "
            f"({exc.name or exc}): pip install 'aiocelev[{extra}]'"
        ) from exc
    factory: BrokerFactory = module.from_url
    return factory


def open_broker(url: str, **options: Any) -> Broker:
    """Create (but do not connect) the adapter for *url*.

    ``amqp://…;amqp://…`` failover lists are passed whole to the adapter.

    :raises UnknownSchemeError: no adapter for the scheme (the message names the known ones).
    :raises MissingDependencyError: the adapter's extra is not installed.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError("a broker URL is required, e.g. 'memory://' or 'amqp://localhost'")
    first = split_urls(url)[0] if ";" in url else url
    scheme = scheme_of(first)
    if not scheme:
        raise UnknownSchemeError(
            f"{mask_url(url)!r} is not a broker URL; known schemes: {', '.join(known_schemes())}"
        )
    return _factory_for(scheme, url)(url, **options)


def resolve_broker(
    broker: Broker | str, options: Mapping[str, Any] | None = None
) -> tuple[Broker, bool]:
    """The broker a dispatcher or receiver uses, and whether it owns it.

    A URL is opened with :func:`open_broker` (*options* as keyword options) and
    is owned (closed with its user); a broker instance is used as it is.
    """
    if isinstance(broker, str):
        return open_broker(broker, **(options or {})), True
    return broker, False
