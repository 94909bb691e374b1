"""The broker page's data: depth and consumers of the queues workers consume.

Queue names come from the workers' ``active_queues`` inspect replies (Celery's
default ``celery`` when no worker answers).  Depths come from the adapter
(:class:`~aiocelev.brokers.QueueInspector`: RabbitMQ passive declare, Redis
``LLEN``) and, for RabbitMQ when the user gives its URL, from the management
HTTP API, which also lists every queue of the vhost with unacknowledged
counts.  Results are cached for a few seconds so a live page does not poll
the broker on every update.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.request
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import anyio

from aiocelev import AiocelevError
from aiocelev.brokers import QueueInspector

from ._urls import mask

if TYPE_CHECKING:
    from ._hub import Feed, Hub

__all__ = ["QueueBoard", "management_queues"]

logger = logging.getLogger("aiocelev.dashboard")

#: Queues Celery itself declares for events and remote control (not task queues).
_INTERNAL_PREFIXES = ("celeryev.", "amq.")
_INTERNAL_SUFFIXES = (".pidbox", ".reply.celery.pidbox")
_DEFAULT_QUEUES = ("celery",)


def _internal(name: str) -> bool:
    return name.startswith(_INTERNAL_PREFIXES) or name.endswith(_INTERNAL_SUFFIXES)


def _vhost(broker_url: str) -> str:
    path = urlsplit(broker_url.split(";")[0]).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def management_queues(api_url: str, vhost: str, timeout: float = 3.0) -> list[dict[str, Any]]:
    """Every queue of *vhost* from RabbitMQ's management API (blocking; run in a thread).

    *api_url* is the API root, e.g. ``http://guest:guest@localhost:15672/api/``;
    credentials in it are sent as HTTP Basic auth and never appear in errors.

    :raises AiocelevError: the API is unreachable or answers with an error.
    """
    parts = urlsplit(api_url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/", "", ""))
    request = urllib.request.Request(f"{base}queues/{quote(vhost, safe='')}")
    if parts.username is not None:
        secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(secret).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
    except Exception as exc:  # urllib, socket and JSON errors alike
        raise AiocelevError(f"management API {mask(api_url)}: {mask(str(exc))}") from None
    if not isinstance(body, list):
        raise AiocelevError(f"management API {mask(api_url)}: unexpected answer")
    return [q for q in body if isinstance(q, dict) and isinstance(q.get("name"), str)]


class QueueBoard:
    """Queue rows for every broker of a hub, cached for *ttl* seconds."""

    def __init__(self, hub: Hub, broker_api: str | None = None, ttl: float = 2.0) -> None:
        self._hub = hub
        self.broker_api = broker_api
        self._ttl = ttl
        self._lock = anyio.Lock()
        self._cached: tuple[float, list[dict[str, Any]], list[str]] | None = None
        self._inspected_at = 0.0

    def forget(self) -> None:
        """Drop the cache and re-ask the workers for their queues next time (a consumer changed)."""
        self._cached = None
        self._inspected_at = 0.0

    async def rows(self) -> tuple[list[dict[str, Any]], list[str]]:
        """``(rows, errors)``: one row per queue and broker; what could not be read."""
        async with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self._ttl:
                return self._cached[1], self._cached[2]
            rows: list[dict[str, Any]] = []
            errors: list[str] = []
            names = await self._queue_names()
            for feed in self._hub.feeds:
                await self._feed_rows(feed, names.get(id(feed), set()), rows, errors)
            rows.sort(key=lambda r: (r["broker"], r["name"]))
            self._cached = (time.monotonic(), rows, errors)
            return rows, errors

    async def _queue_names(self) -> dict[int, set[str]]:
        """Queue names per feed, from the workers' ``active_queues`` (refreshed every 30 s)."""
        hub = self._hub
        if hub.state.workers and time.monotonic() - self._inspected_at > 30.0:
            self._inspected_at = time.monotonic()
            await hub.inspect()
        names: dict[int, set[str]] = {}
        for node, info in hub.inspected.items():
            feed = hub.feed_of(node)
            queues = info.get("active_queues")
            if feed is None or not isinstance(queues, list):
                continue
            for queue in queues:
                name = queue.get("name") if isinstance(queue, dict) else None
                if isinstance(name, str) and name:
                    names.setdefault(id(feed), set()).add(name)
        return names

    async def _feed_rows(
        self, feed: Feed, names: set[str], rows: list[dict[str, Any]], errors: list[str]
    ) -> None:
        broker = feed.broker
        wanted = sorted(names or _DEFAULT_QUEUES)
        seen: set[str] = set()
        url = broker.url
        scheme = urlsplit(url).scheme.lower()
        if self.broker_api and scheme in ("amqp", "amqps", "pyamqp"):
            try:
                queues = await anyio.to_thread.run_sync(
                    management_queues, self.broker_api, _vhost(url)
                )
            except AiocelevError as exc:
                errors.append(str(exc))
            else:
                for q in queues:
                    name = q["name"]
                    if _internal(name) and name not in names:
                        continue
                    seen.add(name)
                    rows.append(
                        {
                            "broker": feed.label,
                            "name": name,
                            "messages": q.get("messages_ready", q.get("messages")),
                            "unacked": q.get("messages_unacknowledged"),
                            "consumers": q.get("consumers"),
                            "source": "management API",
                        }
                    )
        missing = [name for name in wanted if name not in seen]
        if not missing:
            return
        if not isinstance(broker, QueueInspector):
            errors.append(f"{feed.label}: this broker has no task queues to measure")
            return
        try:
            infos = await broker.queue_info(missing)
        except AiocelevError as exc:
            errors.append(f"{feed.label}: {mask(str(exc))}")
            return
        source = "redis" if scheme.startswith(("redis", "sentinel")) else "amqp"
        rows.extend(
            {
                "broker": feed.label,
                "name": info.name,
                "messages": info.messages,
                "unacked": None,
                "consumers": info.consumers,
                "source": source,
            }
            for info in infos
        )
