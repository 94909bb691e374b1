"""Redis adapter: kombu-compatible pub/sub on ``redis.asyncio`` (extra ``redis``).

URLs (kombu's spellings)::

    redis://[[user]:password@]host[:port][/db][?option=value...]
    rediss://...                       (TLS; ssl_cert_reqs=required|optional|none, ...)
    redis+socket:///path/to/redis.sock[?virtual_host=db]
    sentinel://host:26379[/db];sentinel://host2:26379?master_name=mymaster

Celery events on Redis are *fanout* messages on Redis PUB/SUB: kombu publishes
``PUBLISH [global_keyprefix]/<db>.celeryev/<routing.key> <envelope>`` where the
envelope is kombu's JSON wrapper with a base64 body, and receivers
``PSUBSCRIBE`` to ``/<db>.celeryev/*``.  This adapter writes the same bytes
and subscribes the same way, so it interoperates with Celery workers, ``celery
events`` and Flower in both directions.  The envelope stays inside the
adapter: subscriptions yield the plain body with the routing key, content
type, encoding and headers it carries.

Options (keywords of :func:`from_url`, or a kombu-style ``transport_options``
mapping, or the URL's query string; keywords win): see :class:`RedisOptions`
and ``docs/brokers/redis.md``.

Guarantees are those of Redis pub/sub: at most once, nothing is stored, and a
message published while a subscriber is (re)connecting is lost.  Subscriptions
reconnect by themselves with jittered, capped backoff and count each gap in
:attr:`RedisSubscription.reconnects`.

:meth:`RedisBroker.control` is the remote-control transport: send Celery
commands (``enable_events``, ``ping``...) as ``celery control`` does, or answer
them as a node.

The parts live in their own modules: ``_redis_options`` (URL and options),
``_redis_errors`` (error translation), ``_redis_channels`` (channel names and
patterns), ``_redis_envelope`` (kombu's envelope), ``_redis_connection``
(pool, Sentinel, up/down state), ``_redis_publisher`` (the publishing
connection), ``_redis_subscription`` (pub/sub) and ``_redis_control`` (remote
control).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, final

import anyio

from .._message import OutgoingMessage
from ._queues import QueueInfo
from ._redis_channels import RedisChannels
from ._redis_connection import RedisConnection
from ._redis_control import RedisControl
from ._redis_envelope import encode_envelope
from ._redis_errors import CONNECTION_ERRORS, REDIS_ERRORS, translate
from ._redis_options import ParsedUrl, RedisOptions
from ._redis_publisher import PublishConnection
from ._redis_queues import redis_queue_info
from ._redis_subscription import RedisSubscription
from ._topic import compile_bindings

__all__ = ["RedisBroker", "RedisControl", "RedisOptions", "RedisSubscription", "from_url"]


@final
class RedisBroker:
    """Celery's event bus on Redis pub/sub (kombu ``redis``/``sentinel`` transport compatible).

    Create it with :func:`from_url` (or ``aiocelev.brokers.open_broker``).
    """

    def __init__(self, url: str, **options: Any) -> None:
        self._link = RedisConnection(url, options)
        self._channels = RedisChannels(self._link.parsed)
        self._subscriptions: set[RedisSubscription] = set()
        self._control: RedisControl | None = None
        # Sentinel: publish through the pool, which follows the master.
        self._publisher = None if self._link.parsed.sentinel else PublishConnection(self._link)

    # -- introspection ----------------------------------------------------

    @property
    def _parsed(self) -> ParsedUrl:
        return self._link.parsed

    @property
    def url(self) -> str:
        """The broker URL with any password masked."""
        return self._link.url

    @property
    def options(self) -> RedisOptions:
        """The effective options."""
        return self._link.options

    @property
    def db(self) -> int:
        """The Redis database number (only used in channel names: pub/sub ignores it)."""
        return self._link.parsed.db

    @property
    def reconnects(self) -> int:
        """Gaps on the subscribe side: lost-and-restored pub/sub connections, all subscriptions."""
        return self._link.subscription_gaps

    @property
    def publish_reconnects(self) -> int:
        """Times a publish found the connection lost and later succeeded again."""
        return self._link.publish_reconnects

    def channel_for(self, routing_key: str, exchange: str | None = None) -> str:
        """The channel kombu publishes *routing_key* on (with every prefix)."""
        return self._channels.channel_for(routing_key, exchange)

    def pattern_for(self, binding_key: str) -> str:
        """The PSUBSCRIBE pattern of an AMQP *binding_key* (``#`` becomes ``*``)."""
        return self._channels.pattern_for(binding_key)

    def __repr__(self) -> str:
        return (
            f"<RedisBroker {self.url!r} db={self.db} channel={self.channel_for('<routing.key>')!r}"
            f"{' closed' if self._link.closed else ''}>"
        )

    # -- the broker protocol ------------------------------------------------

    async def connect(self) -> None:
        """Check that Redis answers (idempotent; connections are opened on demand).

        :raises BrokerConnectionError: Redis (or every Sentinel) is unreachable.
        """
        await self._link.ping()

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """PUBLISH every message in kombu's envelope (one pipelined round trip for a batch).

        :raises BrokerConnectionError: Redis is unreachable right now (raised at once,
            without touching the network, while the reconnect backoff runs).
        :raises PublishError: Redis refused a command.
        :raises ClosedError: after :meth:`aclose`.
        """
        link = self._link
        client = link.client()
        if not messages:
            return
        now = time.monotonic()
        link.check_available(now)
        channels = self._channels
        exchange = channels.exchange
        commands = [
            (channels.channel_for(m.routing_key), encode_envelope(m, exchange)) for m in messages
        ]
        try:
            publisher = self._publisher
            if publisher is not None and not publisher.busy:
                await publisher.publish(commands)
            else:
                await link.follow_master(now)
                pipe = client.pipeline(transaction=False)
                for channel, payload in commands:
                    pipe.publish(channel, payload)
                await pipe.execute()
        except CONNECTION_ERRORS as exc:
            link.mark_down(exc)
            raise translate(exc, link.url, "publish") from exc
        except REDIS_ERRORS as exc:
            raise translate(exc, link.url, "publish") from exc
        link.mark_up()

    def _new_subscription(
        self, patterns: list[bytes], binding_keys: Sequence[str] | None = None
    ) -> RedisSubscription:
        self._link.ensure_pool()
        if binding_keys is None:
            matches, match_all = (lambda _key: True), True
        else:
            matches, match_all = compile_bindings(binding_keys), "#" in binding_keys
        sub = RedisSubscription(
            self._link, self._channels, patterns, matches, match_all, self._subscriptions.discard
        )
        self._subscriptions.add(sub)
        return sub

    async def subscribe(self, binding_keys: Sequence[str]) -> RedisSubscription:
        """PSUBSCRIBE to the channels of *binding_keys* (AMQP topic syntax).

        Live when this returns (Redis confirmed every pattern).  Redis globs
        over-match (``*`` also matches dots), so messages are filtered again by
        AMQP topic rules on their routing key.

        :raises BrokerConnectionError: Redis is unreachable.
        """
        if isinstance(binding_keys, str):
            binding_keys = [binding_keys]
        keys = list(binding_keys) or ["#"]
        sub = self._new_subscription(self._channels.patterns_for(keys), keys)
        try:
            await sub.open()
        except REDIS_ERRORS as exc:
            await sub.aclose()
            raise translate(exc, self.url, "subscribe") from exc
        except BaseException:
            await sub.aclose()
            raise
        return sub

    async def queue_info(self, names: Sequence[str]) -> list[QueueInfo]:
        """Messages waiting in each kombu queue (all priority lists; 0 if empty or missing).

        Redis cannot tell how many workers consume a queue: ``consumers`` is ``None``.

        :raises BrokerConnectionError: Redis is unreachable.
        """
        return await redis_queue_info(self._link, self._channels, names)

    def control(self) -> RedisControl:
        """The remote-control transport over this adapter's connections (same object each call).

        ``await broker.control().broadcast("ping")`` returns the replies;
        ``broker.control().consume_control(nodename)`` makes this process a node.
        """
        if self._control is None:
            self._control = RedisControl(self._link, self._channels, self._new_subscription)
        return self._control

    # -- closing ----------------------------------------------------------

    async def __aenter__(self) -> RedisBroker:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every subscription and connection (idempotent)."""
        self._link.closed = True
        with anyio.CancelScope(shield=True):
            if self._control is not None:
                await self._control.aclose()
            for sub in list(self._subscriptions):
                await sub.aclose()
            self._subscriptions.clear()
            if self._publisher is not None:
                await self._publisher.aclose()
            await self._link.aclose()


def from_url(url: str, **options: Any) -> RedisBroker:
    """Create (but do not connect) a :class:`RedisBroker`.

    Options are keywords (``from_url(url, global_keyprefix="app:")``), a kombu
    ``transport_options`` mapping (``from_url(url, transport_options={...})``,
    e.g. Celery's ``broker_transport_options`` as it is) and/or the URL's query
    string; keywords win.  kombu options that only concern queues
    (``visibility_timeout``...) are accepted and ignored.

    :raises ConfigurationError: bad URL or option.
    """
    return RedisBroker(url, **options)
