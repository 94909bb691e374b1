"""RabbitMQ queue depths from passive ``queue.declare`` (no management plugin needed)."""

from __future__ import annotations

from collections.abc import Sequence

import aio_pika.exceptions
import aiormq.exceptions
from aio_pika.abc import AbstractChannel

from ._amqp_connection import AmqpConnection, close_quietly
from ._amqp_errors import map_errors
from ._queues import QueueInfo

__all__ = ["amqp_queue_info"]

_MISSING = (aio_pika.exceptions.ChannelNotFoundEntity, aiormq.exceptions.ChannelNotFoundEntity)


async def amqp_queue_info(connection: AmqpConnection, names: Sequence[str]) -> list[QueueInfo]:
    """Declare each queue passively on a short-lived channel: ready messages and consumers.

    A missing queue closes the channel (``NOT_FOUND``); a new one is opened for the next name.
    """
    found: list[QueueInfo] = []
    channel: AbstractChannel | None = None
    where = f"reading queue depths on {connection.current_masked}"
    try:
        for name in names:
            with map_errors(where):
                if channel is None or channel.is_closed:
                    conn = await connection.get(wait=True)
                    channel = await conn.channel(publisher_confirms=False)
                try:
                    queue = await channel.declare_queue(name, passive=True)
                except _MISSING:
                    found.append(QueueInfo(name, None, None))
                    await close_quietly(channel)
                    channel = None
                    continue
            result = queue.declaration_result
            found.append(QueueInfo(name, result.message_count, result.consumer_count))
    finally:
        await close_quietly(channel)
    return found
