"""Redis queue depths: kombu keeps each queue as a list, one more per priority step."""

from __future__ import annotations

from collections.abc import Sequence

from ._queues import QueueInfo
from ._redis_channels import RedisChannels
from ._redis_connection import RedisConnection
from ._redis_errors import map_errors

__all__ = ["PRIORITY_STEPS", "redis_queue_info"]

#: kombu's default ``priority_steps``; queue ``q`` at priority ``p > 0`` is the list ``q\x06\x16p``.
PRIORITY_STEPS = (0, 3, 6, 9)
_SEP = "\x06\x16"


def _lists(name: str) -> list[str]:
    return [name if step == 0 else f"{name}{_SEP}{step}" for step in PRIORITY_STEPS]


async def redis_queue_info(
    link: RedisConnection, channels: RedisChannels, names: Sequence[str]
) -> list[QueueInfo]:
    """``LLEN`` of every list of each queue (one pipelined round trip); consumers are unknown.

    A queue with no list at all (``EXISTS`` false for every step) is reported missing.
    """
    if not names:
        return []
    client = link.client()
    with map_errors(link.url, "read queue depths"):
        pipe = client.pipeline(transaction=False)
        for name in names:
            keys = [channels.key(k) for k in _lists(name)]
            for key in keys:
                pipe.llen(key)
            pipe.exists(*keys)
        replies = await pipe.execute()
    found: list[QueueInfo] = []
    per = len(PRIORITY_STEPS) + 1
    for index, name in enumerate(names):
        chunk = replies[index * per : (index + 1) * per]
        lengths, exists = chunk[:-1], chunk[-1]
        total = sum(int(n) for n in lengths)
        found.append(QueueInfo(name, total if exists or total else None, None))
    return found
