"""The remote-control client: every command ``celery control`` and ``celery inspect`` send.

::

    async with Control("amqp://guest:guest@localhost:5672//") as control:
        for reply in await control.ping():
            print(reply.node, reply.payload)           # celery@host {'ok': 'pong'}
        async with control.stats(timeout=2.0) as replies:
            async for reply in replies:                # printed as each node answers
                print(reply.node, reply.payload["pool"])

Each command builds its arguments exactly as Celery 5's ``app.control`` does,
so the bytes on the wire are the ones a Celery worker expects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, final

import anyio

from ._exceptions import ClosedError, ConfigurationError
from .brokers import Broker, open_broker
from .brokers._control import ControlTransport, Replies

__all__ = ["Control"]

#: Celery's default signal for ``revoke(terminate=True)`` (billiard's ``TERM_SIGNAME``).
TERM_SIGNAME = "SIGTERM"


@final
class Control:
    """Send remote-control commands to Celery workers and read their replies.

    :param broker: a broker URL (opened and closed by this object) or an open
        :class:`~aiocelev.brokers.Broker` (left open).
    :param timeout: default seconds to wait for replies (Celery's default is 1).
    :param options: adapter options when *broker* is a URL.

    Every command returns a :class:`~aiocelev.brokers.Replies`: await it for the
    list of :class:`~aiocelev.ControlReply`, or enter it and iterate to take
    each reply the moment it arrives.  Common keywords:

    * ``destination``: node names (``["celery@host"]``); default every node.
      Waiting stops as soon as every named node answered.
    * ``timeout``: seconds to wait for replies (default: the client's).
    * ``limit``: stop after this many replies.
    * ``reply``: ``False`` to send without waiting for anything.
    * ``pattern`` and ``matcher`` (``"glob"`` or ``"pcre"``): select nodes by name.
    """

    def __init__(self, broker: Broker | str, *, timeout: float = 1.0, **options: Any) -> None:
        if isinstance(broker, str):
            self._broker: Broker = open_broker(broker, **options)
            self._owns = True
        else:
            if options:
                raise ConfigurationError("adapter options are only accepted with a broker URL")
            self._broker = broker
            self._owns = False
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigurationError(f"timeout must be a positive number, not {timeout!r}")
        self._timeout = float(timeout)
        self._transport: ControlTransport | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<Control {self._broker.url!r}>"

    @property
    def broker(self) -> Broker:
        """The broker the commands go through."""
        return self._broker

    async def __aenter__(self) -> Control:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Connect the broker (idempotent).

        :raises BrokerConnectionError: the broker cannot be reached.
        :raises NotSupportedError: the adapter has no remote control.
        """
        if self._closed:
            raise ClosedError("the control client is closed")
        if self._transport is None:
            try:
                transport = self._broker.control()
                await self._broker.connect()
            except BaseException:
                if self._owns:
                    self._closed = True
                    with anyio.CancelScope(shield=True):
                        await self._broker.aclose()
                raise
            self._transport = transport

    async def aclose(self) -> None:
        """Close the broker if this client opened it (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._transport = None
        if self._owns:
            await self._broker.aclose()

    def _transport_or_raise(self) -> ControlTransport:
        if self._closed:
            raise ClosedError("the control client is closed")
        if self._transport is None:
            # Not entered: the adapter connects on demand.
            self._transport = self._broker.control()
        return self._transport

    # -- the generic command ------------------------------------------------------

    def broadcast(
        self,
        method: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        destination: Sequence[str] | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
        reply: bool = True,
        timeout: float | None = None,
        limit: int | None = None,
    ) -> Replies:
        """Send any command by name, as ``app.control.broadcast`` does.

        :raises ConfigurationError: *destination* is not a list of names, or
            *pattern* is given without *matcher*.
        """
        if not isinstance(method, str) or not method:
            raise ConfigurationError("method must be a command name")
        if isinstance(destination, str):
            destination = [destination]
        if (pattern is None) != (matcher is None):
            raise ConfigurationError("pattern and matcher go together")
        if matcher is not None and matcher not in ("glob", "pcre"):
            raise ConfigurationError(f"matcher must be 'glob' or 'pcre', not {matcher!r}")
        return self._transport_or_raise().broadcast(
            method,
            arguments,
            destination=destination,
            pattern=pattern,
            matcher=matcher,
            reply=reply,
            timeout=self._timeout if timeout is None else timeout,
            limit=limit,
        )

    # -- inspect --------------------------------------------------------------------

    def ping(self, **kw: Any) -> Replies:
        """``ping``: every live node answers ``{"ok": "pong"}``."""
        return self.broadcast("ping", {}, **kw)

    def active(self, safe: bool | None = None, **kw: Any) -> Replies:
        """``inspect active``: the tasks each node is executing."""
        return self.broadcast("active", {"safe": safe}, **kw)

    def reserved(self, safe: bool | None = None, **kw: Any) -> Replies:
        """``inspect reserved``: tasks prefetched and waiting to execute."""
        return self.broadcast("reserved", {}, **kw)

    def scheduled(self, safe: bool | None = None, **kw: Any) -> Replies:
        """``inspect scheduled``: tasks with an ETA or countdown."""
        return self.broadcast("scheduled", {}, **kw)

    def registered(self, *taskinfoitems: str, **kw: Any) -> Replies:
        """``inspect registered``: the task names each node knows (with *taskinfoitems*)."""
        return self.broadcast("registered", {"taskinfoitems": list(taskinfoitems)}, **kw)

    def stats(self, **kw: Any) -> Replies:
        """``inspect stats``: pool, broker, totals, rusage of each node."""
        return self.broadcast("stats", {}, **kw)

    def active_queues(self, **kw: Any) -> Replies:
        """``inspect active_queues``: the queues each node consumes."""
        return self.broadcast("active_queues", {}, **kw)

    def revoked(self, **kw: Any) -> Replies:
        """``inspect revoked``: the task ids each node has revoked."""
        return self.broadcast("revoked", {}, **kw)

    def conf(self, with_defaults: bool = False, **kw: Any) -> Replies:
        """``inspect conf``: each node's configuration."""
        return self.broadcast("conf", {"with_defaults": with_defaults}, **kw)

    def query_task(self, *ids: Any, **kw: Any) -> Replies:
        """``inspect query_task``: what each node knows of the given task ids."""
        # As Celery: one list argument is the list of ids.
        listed = ids[0] if len(ids) == 1 and not isinstance(ids[0], str) else ids
        return self.broadcast("query_task", {"ids": list(listed)}, **kw)

    def report(self, **kw: Any) -> Replies:
        """``inspect report``: each node's bug-report information."""
        return self.broadcast("report", {}, **kw)

    def clock(self, **kw: Any) -> Replies:
        """``inspect clock``: each node's Lamport clock."""
        return self.broadcast("clock", {}, **kw)

    # -- control ----------------------------------------------------------------------

    def revoke(
        self,
        task_id: str | Sequence[str],
        *,
        terminate: bool = False,
        signal: str = TERM_SIGNAME,
        **kw: Any,
    ) -> Replies:
        """``control revoke``: discard the task(s); with *terminate*, also kill a running one."""
        ids: str | list[str] = task_id if isinstance(task_id, str) else list(task_id)
        return self.broadcast(
            "revoke", {"task_id": ids, "terminate": terminate, "signal": signal}, **kw
        )

    def revoke_by_stamped_headers(
        self,
        headers: Mapping[str, Any],
        *,
        terminate: bool = False,
        signal: str = TERM_SIGNAME,
        **kw: Any,
    ) -> Replies:
        """``control revoke_by_stamped_headers``: revoke tasks whose stamps match *headers*."""
        return self.broadcast(
            "revoke_by_stamped_headers",
            {"headers": dict(headers), "terminate": terminate, "signal": signal},
            **kw,
        )

    def terminate(
        self, task_id: str | Sequence[str], signal: str = TERM_SIGNAME, **kw: Any
    ) -> Replies:
        """``control terminate``: revoke and kill the running task(s) with *signal*."""
        return self.revoke(task_id, terminate=True, signal=signal, **kw)

    def rate_limit(self, task_name: str, rate_limit: str | int | float, **kw: Any) -> Replies:
        """``control rate_limit``: e.g. ``"10/m"``; ``0`` removes the limit."""
        return self.broadcast(
            "rate_limit", {"task_name": task_name, "rate_limit": rate_limit}, **kw
        )

    def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        **kw: Any,
    ) -> Replies:
        """``control time_limit``: new soft and hard time limits (seconds) for a task."""
        return self.broadcast(
            "time_limit", {"task_name": task_name, "hard": hard, "soft": soft}, **kw
        )

    def pool_grow(self, n: int = 1, **kw: Any) -> Replies:
        """``control pool_grow``: add *n* pool processes."""
        return self.broadcast("pool_grow", {"n": n}, **kw)

    def pool_shrink(self, n: int = 1, **kw: Any) -> Replies:
        """``control pool_shrink``: remove *n* pool processes."""
        return self.broadcast("pool_shrink", {"n": n}, **kw)

    def autoscale(self, max: int, min: int, **kw: Any) -> Replies:  # noqa: A002
        """``control autoscale``: set the autoscaler's bounds."""
        return self.broadcast("autoscale", {"max": max, "min": min}, **kw)

    def add_consumer(
        self,
        queue: str,
        exchange: str | None = None,
        exchange_type: str = "direct",
        routing_key: str | None = None,
        options: Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> Replies:
        """``control add_consumer``: start consuming from *queue*."""
        arguments = {
            "queue": queue,
            "exchange": exchange,
            "exchange_type": exchange_type,
            "routing_key": routing_key,
            **(options or {}),
        }
        return self.broadcast("add_consumer", arguments, **kw)

    def cancel_consumer(self, queue: str, **kw: Any) -> Replies:
        """``control cancel_consumer``: stop consuming from *queue*."""
        return self.broadcast("cancel_consumer", {"queue": queue}, **kw)

    def shutdown(self, **kw: Any) -> Replies:
        """``control shutdown``: ask the nodes to stop (Celery workers do not reply)."""
        return self.broadcast("shutdown", {}, **kw)

    def enable_events(self, **kw: Any) -> Replies:
        """``control enable_events``: switch task events on."""
        return self.broadcast("enable_events", {}, **kw)

    def disable_events(self, **kw: Any) -> Replies:
        """``control disable_events``: switch task events off."""
        return self.broadcast("disable_events", {}, **kw)

    def heartbeat(self, **kw: Any) -> Replies:
        """``control heartbeat``: ask each node to send a ``worker-heartbeat`` now."""
        return self.broadcast("heartbeat", {}, **kw)
