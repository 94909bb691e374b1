"""The Redis adapter's own publishing connection: PUBLISH without the pool's round of calls.

redis.asyncio's client runs every command through its pool: take a connection
under the pool's lock, record it in use, check it, pack, send, read, put it
back.  For one event at a time that machinery is most of what stands between
``publish()`` and the socket (at 200 events/s, about 0.1 ms of the
dispatch-to-receive latency; see docs/benchmarks.md).  This keeps one
connection, made by the pool's own factory (same address, TLS, credentials,
database, timeouts and client name), and writes each batch of ``PUBLISH``
commands to it in one send, then reads their replies.

It serves one publisher at a time: while it is busy, the adapter publishes
through the pool as before, so concurrent publishers never wait for each
other.  It behaves as the pooled client does: a connection error or timeout
(a connection the server closed while it was idle included) is retried once
on a fresh connection.  Any other failure, and a cancellation before every
reply is read, closes the connection (replies left unread would be taken for
the next command's); the next publish opens a fresh one.  Sentinel URLs do not
use it: the pool follows the master there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import final

import anyio
from redis import exceptions as redis_exc
from redis.asyncio.connection import AbstractConnection

from ._redis_connection import RedisConnection

__all__ = ["PublishConnection"]

#: Failures retried once on a fresh connection (those the pooled client retries).
_RETRIED = (redis_exc.ConnectionError, redis_exc.TimeoutError)


@final
class PublishConnection:
    """One connection for ``PUBLISH``; see the module docstring."""

    def __init__(self, link: RedisConnection) -> None:
        self._link = link
        self._conn: AbstractConnection | None = None
        #: Whether a publish is in progress on this connection (then use the pool).
        self.busy = False

    async def publish(self, commands: Sequence[tuple[str, bytes]]) -> None:
        """``PUBLISH channel payload`` for each pair, in one write, then read every reply.

        The caller checks :attr:`busy` first.  As the pooled client does, a
        connection error or timeout (a connection the server closed while it
        was idle included) is retried once on a fresh connection.  Raises what
        redis-py raises (the caller translates it): a connection error, a
        timeout, or the first error reply (``NOPERM``...).
        """
        self.busy = True
        try:
            try:
                await self._publish_once(commands)
            except _RETRIED:
                await self.aclose()
                await self._publish_once(commands)
        except BaseException:
            await self.aclose()
            raise
        finally:
            self.busy = False

    async def _publish_once(self, commands: Sequence[tuple[str, bytes]]) -> None:
        conn = self._conn
        if conn is None:
            conn = self._link.ensure_pool().make_connection()  # type: ignore[no-untyped-call]
            self._conn = conn
        packed = conn.pack_commands([("PUBLISH", channel, data) for channel, data in commands])
        # connects first if needed (the handshake: AUTH, SELECT, CLIENT SETNAME...)
        await conn.send_packed_command(packed, check_health=False)
        for _ in range(len(commands)):
            await conn.read_response()

    async def aclose(self) -> None:
        """Close the connection (a later publish opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await conn.disconnect(nowait=True)
