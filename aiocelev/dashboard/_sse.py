"""Server-Sent Events: one coalesced ``update`` per push interval, per browser.

Each client gets a :class:`~._hub.Subscriber` (one pending payload, latest
wins).  The first frame is the current version, so a reconnecting browser
catches up at once (the page re-fetches its live fragment when the version
differs from the one it shows).  Comment lines keep idle connections open
through proxies.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ._api import hub_of
from ._hub import Subscriber
from ._responses import Json

__all__ = ["KEEPALIVE", "stream"]

#: Seconds between keep-alive comments on an idle stream.
KEEPALIVE = 15.0


async def stream(request: Request) -> Response:
    """``GET /events/stream``: ``event: update`` frames with ``{"version", "connected", ...}``."""
    hub = hub_of(request)
    if len(hub.subscribers) >= hub.max_clients:
        return Json({"error": "too many live clients"}, status_code=503)
    subscriber = Subscriber()
    subscriber.offer(hub.status_payload())
    hub.subscribers.add(subscriber)

    async def frames() -> AsyncIterator[str]:
        try:
            yield "retry: 2000\n\n"
            while hub.running:
                payload = await subscriber.next(KEEPALIVE)
                if payload is None:
                    yield ": keep-alive\n\n"
                    continue
                data = json.dumps(payload, ensure_ascii=True)
                yield f"id: {payload['version']}\nevent: update\ndata: {data}\n\n"
        finally:
            hub.subscribers.discard(subscriber)

    return StreamingResponse(
        frames(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
