"""Options and URL parsing of the Redis adapter (no I/O, no redis import)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .._exceptions import ConfigurationError
from .._url import mask_url, split_urls
from ._options import to_bool, to_opt_float, to_opt_str

__all__ = ["Endpoint", "RedisOptions", "glob_escape", "parse_redis_url"]

_SCHEMES = ("redis", "rediss", "redis+socket", "sentinel")

#: kombu transport options that mean something only to kombu's queue emulation;
#: accepted (so ``broker_transport_options`` can be passed as it is) and ignored.
_IGNORED_KOMBU_OPTIONS = frozenset(
    {
        "visibility_timeout",
        "max_connections",
        "priority_steps",
        "sep",
        "queue_order_strategy",
        "ack_emulation",
        "unacked_key",
        "unacked_index_key",
        "unacked_mutex_key",
        "unacked_mutex_expire",
        "unacked_restore_limit",
        "unacked_restore_interval",
        "unacked_restore_throttle",
        "brpop_timeout",
        "retry_on_timeout",
        "polling_interval",
        "max_retries",
        "interval_start",
        "interval_step",
        "interval_max",
        "socket_keepalive_options",
        "credential_provider",
        "sentinel_fanout_compat",
        "virtual_host",
        "db",
        "result_chord_ordered",
    }
)

_SSL_OPTIONS = frozenset(
    {
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_check_hostname",
    }
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One Redis (or Sentinel) server address."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # unix socket


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """Every option of the Redis adapter (see ``docs/brokers/redis.md``)."""

    exchange: str = "celeryev"
    fanout_prefix: bool | str = True
    fanout_patterns: bool = True
    global_keyprefix: str = ""
    control_exchange: str = "celery"
    master_name: str | None = None
    min_other_sentinels: int = 0
    sentinel_kwargs: Mapping[str, Any] | None = None
    socket_timeout: float | None = 10.0
    socket_connect_timeout: float | None = 5.0
    socket_keepalive: bool = True
    health_check_interval: float = 25.0
    sentinel_check_interval: float = 1.0
    reconnect_delay: float = 0.1
    reconnect_max_delay: float = 5.0
    client_name: str | None = None
    ssl: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ParsedUrl:
    """A Redis broker URL taken apart."""

    scheme: str
    endpoints: tuple[Endpoint, ...]
    db: int
    username: str | None
    password: str | None
    options: RedisOptions

    @property
    def sentinel(self) -> bool:
        return self.scheme == "sentinel"

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss" or bool(self.options.ssl)


def _fanout_prefix(value: Any) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return to_bool(value)
        except ValueError:
            return value
    return bool(value)


def _mapping(value: Any) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping")
    return dict(value)


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "exchange": str,
    "fanout_prefix": _fanout_prefix,
    "fanout_patterns": to_bool,
    "global_keyprefix": lambda v: "" if v is None else str(v),
    "control_exchange": str,
    "master_name": to_opt_str,
    "min_other_sentinels": int,
    "sentinel_kwargs": _mapping,
    "socket_timeout": to_opt_float,
    "socket_connect_timeout": to_opt_float,
    "socket_keepalive": to_bool,
    "health_check_interval": float,
    "sentinel_check_interval": float,
    "reconnect_delay": float,
    "reconnect_max_delay": float,
    "client_name": to_opt_str,
}


def glob_escape(text: str) -> str:
    """Escape Redis glob metacharacters so *text* matches only itself."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


def _db_of(path: str, query: Mapping[str, str], url: str) -> int:
    raw = query.get("db") or query.get("virtual_host") or path.strip("/") or "0"
    try:
        db = int(raw)
    except ValueError:
        raise ConfigurationError(
            f"Redis database must be an integer, not {raw!r} in {mask_url(url)!r}"
        ) from None
    if db < 0:
        raise ConfigurationError(f"Redis database must be >= 0 in {mask_url(url)!r}")
    return db


def _endpoint(scheme: str, netloc_host: str | None, port: int | None, path: str) -> Endpoint:
    if scheme == "redis+socket":
        return Endpoint(path=path or None)
    default_port = 26379 if scheme == "sentinel" else 6379
    return Endpoint(host=netloc_host or "127.0.0.1", port=port or default_port)


def parse_redis_url(url: str, options: Mapping[str, Any]) -> ParsedUrl:
    """Parse *url* (kombu's spellings) and merge *options* over its query string.

    Options given as arguments win over the same option in the query string.

    :raises ConfigurationError: bad URL, unknown option or bad option value.
    """
    parts = split_urls(url)
    if not parts:
        raise ConfigurationError("a Redis URL is required, e.g. 'redis://127.0.0.1:6379/0'")
    first = urlsplit(parts[0])
    scheme = first.scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigurationError(
            f"not a Redis URL: {mask_url(url)!r} (expected one of {', '.join(_SCHEMES)})"
        )
    if len(parts) > 1 and scheme != "sentinel":
        raise ConfigurationError(
            f"';'-separated lists are only supported for sentinel:// URLs: {mask_url(url)!r}"
        )
    # a query string may follow any of the ';'-separated URLs (usually the last)
    query: dict[str, str] = {}
    for part in parts:
        query.update(parse_qsl(urlsplit(part).query, keep_blank_values=True))
    endpoints: list[Endpoint] = []
    for part in parts:
        split = urlsplit(part)
        if split.scheme.lower() != scheme:
            raise ConfigurationError(f"mixed schemes in {mask_url(url)!r}")
        try:
            port = split.port
        except ValueError:
            raise ConfigurationError(f"bad port in {mask_url(url)!r}") from None
        path = unquote(split.path) if scheme == "redis+socket" else split.path
        if scheme == "redis+socket" and not path:
            raise ConfigurationError(
                f"redis+socket:// needs a socket path, e.g. 'redis+socket:///run/redis.sock': {mask_url(url)!r}"
            )
        endpoints.append(_endpoint(scheme, split.hostname, port, path))
    db = _db_of("", query, url) if scheme == "redis+socket" else _db_of(first.path, query, url)
    username = unquote(first.username) if first.username else None
    password = unquote(first.password) if first.password is not None else None
    if password == "":
        password = None

    merged: dict[str, Any] = {}
    ssl: dict[str, Any] = {}
    for key, value in query.items():
        if key in _SSL_OPTIONS:
            ssl[key] = value
        elif key in _CONVERTERS:
            merged[key] = value
        elif key not in _IGNORED_KOMBU_OPTIONS:
            raise ConfigurationError(f"unknown Redis URL option {key!r} in {mask_url(url)!r}")
    transport_options = options.get("transport_options")
    given: dict[str, Any] = {}
    if transport_options is not None:
        if not isinstance(transport_options, Mapping):
            raise ConfigurationError("transport_options must be a mapping")
        given.update(transport_options)
    given.update({k: v for k, v in options.items() if k != "transport_options"})
    for key, value in given.items():
        if key in _SSL_OPTIONS:
            ssl[key] = value
        elif key == "ssl":
            if isinstance(value, Mapping):
                ssl.update(value)
            elif value and not ssl:
                ssl["ssl_cert_reqs"] = "required"
        elif key in _CONVERTERS:
            merged[key] = value
        elif key not in _IGNORED_KOMBU_OPTIONS:
            raise ConfigurationError(
                f"unknown Redis option {key!r}; known: {', '.join(sorted(_CONVERTERS))}"
            )
    values: dict[str, Any] = {}
    for key, value in merged.items():
        try:
            values[key] = _CONVERTERS[key](value)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"bad value for Redis option {key!r}: {value!r} ({exc})"
            ) from None
    opts = RedisOptions(**values, ssl=ssl)
    if isinstance(opts.fanout_prefix, str):
        try:
            opts.fanout_prefix.format(db=0)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigurationError(
                f"bad fanout_prefix {opts.fanout_prefix!r}: only '{{db}}' may be substituted ({exc})"
            ) from None
    if not opts.exchange:
        raise ConfigurationError("exchange must not be empty")
    if opts.reconnect_delay <= 0 or opts.reconnect_max_delay < opts.reconnect_delay:
        raise ConfigurationError("need 0 < reconnect_delay <= reconnect_max_delay")
    if opts.health_check_interval <= 0:
        raise ConfigurationError("health_check_interval must be positive")
    if scheme == "sentinel" and not opts.master_name:
        raise ConfigurationError(
            f"sentinel:// needs the 'master_name' option (keyword or ?master_name=): {mask_url(url)!r}"
        )
    if scheme != "sentinel" and opts.master_name:
        raise ConfigurationError("master_name is only meaningful with sentinel:// URLs")
    return ParsedUrl(
        scheme=scheme,
        endpoints=tuple(endpoints),
        db=db,
        username=username,
        password=password,
        options=opts,
    )


def replace_options(parsed: ParsedUrl, **changes: Any) -> ParsedUrl:
    """A copy of *parsed* with some options changed (used by tests and helpers)."""
    return dataclasses.replace(parsed, options=dataclasses.replace(parsed.options, **changes))
