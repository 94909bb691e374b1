"""Options and URL parsing of the AMQP adapter (no I/O, no aio-pika import)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from .._exceptions import ConfigurationError
from .._url import mask_url, split_urls
from ._options import to_bool, to_opt_float, to_opt_int

__all__ = ["SCHEMES", "AmqpOptions", "Endpoint", "parse_options", "replace", "split_query"]

#: The URL schemes of RabbitMQ, and the scheme each is opened with.
SCHEMES = {"amqp": "amqp", "pyamqp": "amqp", "librabbitmq": "amqp", "amqps": "amqps"}

#: Query parameters handed to aiormq unchanged (connection tuning and TLS files).
_PASSTHROUGH = frozenset(
    {
        "frame_max",
        "channel_max",
        "cafile",
        "capath",
        "cadata",
        "keyfile",
        "certfile",
        "no_verify_ssl",
        "name",
    }
)


@dataclass(frozen=True, slots=True)
class AmqpOptions:
    """Every option of the AMQP adapter (see ``docs/brokers/amqp.md``)."""

    exchange: str = "celeryev"
    queue_prefix: str = "celeryev"
    queue_name: str | None = None
    durable: bool = False
    message_ttl: float | None = 5.0
    expires: float | None = 60.0
    no_ack: bool = True
    prefetch_count: int | None = None
    max_buffer: int = 10_000
    confirm_publish: bool = False
    publish_timeout: float = 10.0
    connect_timeout: float = 5.0
    heartbeat: int | None = None
    reconnect_delay: float = 0.5
    reconnect_max_delay: float = 10.0
    max_retries: int | None = None
    control_exchange: str = "celery"
    connection_name: str = "aiocelev"
    fast_consume: bool = True


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "exchange": str,
    "queue_prefix": str,
    "queue_name": lambda v: None if v is None else str(v),
    "durable": to_bool,
    "message_ttl": to_opt_float,
    "expires": to_opt_float,
    "no_ack": to_bool,
    "prefetch_count": to_opt_int,
    "max_buffer": int,
    "confirm_publish": to_bool,
    "publish_timeout": float,
    "connect_timeout": float,
    "heartbeat": to_opt_int,
    "reconnect_delay": float,
    "reconnect_max_delay": float,
    "max_retries": to_opt_int,
    "control_exchange": str,
    "connection_name": str,
    "fast_consume": to_bool,
}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One broker address: the URL handed to aio-pika and its masked form."""

    url: str
    masked: str
    ssl: bool


def split_query(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", parts.fragment)), query


def _endpoint(
    url: str, passthrough: Mapping[str, str], heartbeat: int | None, connection_name: str
) -> Endpoint:
    bare, _ = split_query(url)
    parts = urlsplit(bare)
    scheme = SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ConfigurationError(f"not an AMQP URL: {mask_url(url)!r}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"bad port in {mask_url(url)!r}") from None
    host = parts.hostname or "localhost"
    user = unquote(parts.username) if parts.username is not None else "guest"
    password = unquote(parts.password) if parts.password is not None else "guest"
    if port is None:
        port = 5671 if scheme == "amqps" else 5672
    # kombu: the path minus its first "/" is the virtual host; "" means "/".
    path = parts.path
    vhost = unquote(path[1:]) if path.startswith("/") else unquote(path)
    if not vhost:
        vhost = "/"
    query = dict(passthrough)
    if heartbeat is not None:
        query["heartbeat"] = str(heartbeat)
    # aiormq (6.x and 7.x) sends ?name= as the client property "connection_name"
    query["name"] = connection_name
    netloc_host = f"[{host}]" if ":" in host else host
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{netloc_host}:{port}"
    real = urlunsplit((scheme, netloc, "/" + quote(vhost, safe=""), urlencode(query), ""))
    return Endpoint(url=real, masked=mask_url(bare), ssl=scheme == "amqps")


def parse_options(url: str, options: Mapping[str, Any]) -> tuple[list[Endpoint], AmqpOptions]:
    """Split a (``;``-separated) URL list and merge query options with keyword options.

    Keyword options win over query parameters.  Query parameters of every URL
    in a failover list are merged (later URLs win).

    :raises ConfigurationError: an unknown option, a bad value or a non-AMQP URL.
    """
    urls = split_urls(url)
    if not urls:
        raise ConfigurationError("an AMQP URL is required, e.g. 'amqp://guest:guest@localhost//'")
    from_query: dict[str, str] = {}
    passthrough: dict[str, str] = {}
    for one in urls:
        _, query = split_query(one)
        for key, value in query.items():
            if key in _CONVERTERS:
                from_query[key] = value
            elif key in _PASSTHROUGH:
                passthrough[key] = value
            else:
                raise ConfigurationError(
                    f"unknown amqp:// URL parameter {key!r} in {mask_url(one)!r}; known: "
                    f"{', '.join(sorted({*_CONVERTERS, *_PASSTHROUGH}))}"
                )
    unknown = set(options) - set(_CONVERTERS)
    if unknown:
        raise ConfigurationError(
            f"unknown amqp:// options: {', '.join(sorted(unknown))}; known: {', '.join(sorted(_CONVERTERS))}"
        )
    merged: dict[str, Any] = {**from_query, **options}
    values: dict[str, Any] = {}
    for key, raw in merged.items():
        try:
            values[key] = _CONVERTERS[key](raw)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"bad value for amqp:// option {key!r}: {raw!r} ({exc})"
            ) from None
    durable = values.get("durable", False)
    if durable:
        # A durable queue exists so that nothing is lost while its consumer is
        # away: no TTL, no expiry and acknowledged consumption unless asked for.
        values.setdefault("message_ttl", None)
        values.setdefault("expires", None)
        values.setdefault("no_ack", False)
        if not values.get("queue_name"):
            raise ConfigurationError(
                "durable=True needs queue_name= (a durable queue must have a stable name)"
            )
    if values.get("no_ack") is False:
        values.setdefault("prefetch_count", 100)
    opts = AmqpOptions(**values)
    _validate(opts)
    endpoints = [_endpoint(one, passthrough, opts.heartbeat, opts.connection_name) for one in urls]
    return endpoints, opts


def _validate(opts: AmqpOptions) -> None:
    for name in ("publish_timeout", "connect_timeout", "reconnect_delay", "reconnect_max_delay"):
        if getattr(opts, name) <= 0:
            raise ConfigurationError(f"{name} must be positive")
    for name in ("message_ttl", "expires"):
        value = getattr(opts, name)
        if value is not None and value < 0:
            raise ConfigurationError(f"{name} must not be negative")
    if opts.expires is not None and opts.expires == 0:
        raise ConfigurationError("expires must be positive (RabbitMQ refuses x-expires=0)")
    if opts.prefetch_count is not None and not 0 <= opts.prefetch_count <= 65535:
        raise ConfigurationError("prefetch_count must be between 0 and 65535")
    if opts.max_buffer < 1:
        raise ConfigurationError("max_buffer must be at least 1")
    if opts.max_retries is not None and opts.max_retries < 0:
        raise ConfigurationError("max_retries must not be negative")
    if not opts.exchange:
        raise ConfigurationError("exchange must not be empty")


def replace(opts: AmqpOptions, **changes: Any) -> AmqpOptions:
    """A copy of *opts* with *changes* (validated)."""
    new = dataclasses.replace(opts, **changes)
    _validate(new)
    return new
