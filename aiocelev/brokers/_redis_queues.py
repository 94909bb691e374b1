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
    """``LLEN`` of every list of each queue (one pipelined round trip).

    Redis deletes a list when it is emptied, so an empty queue and a missing one
    look the same: both are reported with ``messages=0``.  Consumers are unknown.
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
        replies = await pipe.execute()
    per = len(PRIORITY_STEPS)
    return [
        QueueInfo(name, sum(int(n) for n in replies[i * per : (i + 1) * per]), None)
        for i, name in enumerate(names)
    ]
