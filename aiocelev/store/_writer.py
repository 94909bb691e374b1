"""StoreWriter: events into a store in batches, behind a bounded buffer."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, NamedTuple

import anyio
import anyio.abc

from .._backoff import Backoff
from .._events import Event
from .._exceptions import (
    AiocelevError,
    ClosedError,
    ConfigurationError,
    StoreConnectionError,
    StoreError,
)
from ._base import EventStore
from ._rows import Prepared

__all__ = ["StoreWriter", "WriterStatistics"]

logger = logging.getLogger("aiocelev.store")

_Item = Event | Mapping[str, Any]


class WriterStatistics(NamedTuple):
    """Counters of a :class:`StoreWriter` (cumulative except ``pending``)."""

    received: int
    """Events handed to :meth:`StoreWriter.put`."""
    committed: int
    """Events committed to the store (or refused by it, counted in ``rejected``)."""
    pending: int
    """Events put but not committed yet (now)."""
    batches: int
    """Batches committed."""
    retries: int
    """Batch attempts that failed with :class:`~aiocelev.StoreConnectionError` and were retried."""
    rejected: int
    """Events the database refused even alone (see the store's ``statistics().rejected``)."""
    acks: int
    """Broker acknowledgements released after a commit."""
    pruned: int
    """Task rows deleted by the background retention."""


class StoreWriter:
    """Write events to an :class:`EventStore` in batches, from a task of its own.

    ::

        async with open_store("sqlite:///history.db") as store, StoreWriter(store) as writer:
            async for event in receiver:
                await writer.put(event)

    :meth:`put` appends to a buffer of at most *buffer_size* events and returns;
    when the buffer is full it waits for room (backpressure: nothing is ever
    dropped).  The writer takes whatever is buffered, up to *max_batch* events,
    replays it over the store's cache (:meth:`EventStore.prepare`) and writes it
    in one transaction (natural batching: an idle writer commits at once, a busy
    one coalesces).  The next batch is prepared while the previous one is being
    written, so at most *buffer_size* + 2 × *max_batch* events are held; batches
    are committed, and acknowledged, in the order they were taken.  While the database is unreachable
    (:class:`~aiocelev.StoreConnectionError`) the batch is retried with capped,
    jittered backoff and the buffer fills up, so ingestion slows down to the
    database's pace.  A batch the database refuses for another reason is split
    in halves until the offending events stand alone; those are counted by reason
    in the store's ``statistics().rejected`` and logged, the rest is written.

    :meth:`put_ack` registers a callback run once every event put before it is
    committed: an at-least-once ingest acknowledges broker messages with it.

    With *max_age* (seconds) or *max_rows*, retention runs in the background
    every *prune_every* seconds, in small batches (:meth:`EventStore.prune`).

    :param broker: the masked URL of the broker the events come from (kept with new rows).
    :param close_timeout: on leaving, how long to wait for buffered events to be
        committed; what is left is logged (and, with acks, redelivered later).
    """

    def __init__(
        self,
        store: EventStore,
        *,
        buffer_size: int = 20_000,
        max_batch: int = 20_000,
        broker: str | None = None,
        max_age: float | None = None,
        max_rows: int | None = None,
        prune_every: float = 60.0,
        close_timeout: float = 10.0,
    ) -> None:
        if buffer_size < 1 or max_batch < 1:
            raise ConfigurationError("buffer_size and max_batch must be at least 1")
        if prune_every <= 0:
            raise ConfigurationError("prune_every must be positive")
        self.store = store
        self.broker = broker
        self._buffer_size = buffer_size
        self._max_batch = max_batch
        self._max_age = max_age
        self._max_rows = max_rows
        self._prune_every = prune_every
        self._close_timeout = close_timeout
        self._buffer: deque[_Item] = deque()
        self._acks: deque[tuple[int, Callable[[], None]]] = deque()
        self._received = 0
        self._committed = 0
        self._batches = self._retries = self._rejected = self._acked = self._pruned = 0
        self._readable = anyio.Event()
        self._writable = anyio.Event()
        self._progress = anyio.Event()
        self._error: BaseException | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False

    # -- producer side ----------------------------------------------------------

    async def put(self, event: _Item) -> None:
        """Buffer one event (waits while the buffer is full).

        :raises ClosedError: the writer is not running.
        :raises StoreError: the writer task failed.
        """
        while len(self._buffer) >= self._buffer_size:
            self._check()
            self._writable = anyio.Event()
            await self._writable.wait()
        self._check()
        self._buffer.append(event)
        self._received += 1
        self._readable.set()

    def put_ack(self, ack: Callable[[], None]) -> None:
        """Call *ack* once every event put so far is committed (never blocks)."""
        if self._committed >= self._received:
            self._call(ack)
        else:
            self._acks.append((self._received, ack))

    async def flush(self) -> None:
        """Wait until every event put so far is committed.

        :raises StoreError: the writer task failed.
        """
        target = self._received
        while self._committed < target:
            self._check()
            progress = self._progress
            await progress.wait()

    def statistics(self) -> WriterStatistics:
        """A snapshot of the counters."""
        return WriterStatistics(
            received=self._received,
            committed=self._committed,
            pending=self._received - self._committed,
            batches=self._batches,
            retries=self._retries,
            rejected=self._rejected,
            acks=self._acked,
            pruned=self._pruned,
        )

    def _check(self) -> None:
        if self._error is not None:
            raise StoreError(f"the store writer stopped: {self._error}") from self._error
        if self._tg is None or self._closed:
            raise ClosedError("the store writer is not running")

    # -- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> StoreWriter:
        if self._tg is not None or self._closed:
            raise ClosedError("a StoreWriter runs once")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._run, name="aiocelev store writer")
        if self._max_age is not None or self._max_rows is not None:
            tg.start_soon(self._retention, name="aiocelev store retention")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self.aclose(flush=exc_type is None)
        return None

    async def drain(self) -> None:
        """Wait (at most *close_timeout*, shielded) for the buffered events to be committed.

        What is left is logged; the writer keeps running.
        """
        if self._error is None and self._tg is not None and not self._closed:
            with anyio.move_on_after(self._close_timeout, shield=True):
                try:
                    await self.flush()
                except AiocelevError:
                    pass
        left = self._received - self._committed
        if left:
            logger.warning(
                "closing the store writer with %d events not committed to %s",
                left,
                self.store.url,
            )

    async def aclose(self, *, flush: bool = True) -> None:
        """Commit what is buffered (:meth:`drain`, unless *flush* is false), then stop
        the tasks.

        A batch being written when the tasks stop is committed whole or rolled back.
        """
        tg = self._tg
        if tg is None or self._closed:
            return
        try:
            if flush:
                await self.drain()
        finally:
            self._closed = True
            tg.cancel_scope.cancel()
            try:
                await tg.__aexit__(None, None, None)
            finally:
                self._writable.set()
                self._progress.set()

    # -- the writer task ----------------------------------------------------------------

    async def _run(self) -> None:
        # Two stages: the next batch is replayed over the store's cache (Python work)
        # while the previous one is written (database work); batches are written,
        # and acknowledged, in the order they were taken.
        send, receive = anyio.create_memory_object_stream[tuple[list[_Item], Prepared | None]]()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._prepare_batches, send)
                async with receive:
                    async for batch, prepared in receive:
                        if prepared is None:
                            await self._commit(batch)
                        else:
                            await self._commit_prepared(batch, prepared)
                        self._committed += len(batch)
                        self._batches += 1
                        self._release_acks()
                        self._progress.set()
                        self._progress = anyio.Event()
        except StoreError as exc:
            self._error = exc
            self._progress.set()
            self._writable.set()
            logger.error("the store writer stopped: %s", exc)

    async def _prepare_batches(
        self, send: anyio.abc.ObjectSendStream[tuple[list[_Item], Prepared | None]]
    ) -> None:
        buffer, store = self._buffer, self.store
        taken = self._committed
        first = True
        last: Prepared | None = None
        async with send:
            while True:
                while not buffer:
                    self._readable = anyio.Event()
                    await self._readable.wait()
                n = min(len(buffer), self._max_batch)
                batch = [buffer.popleft() for _ in range(n)]
                self._writable.set()
                after = None if first else last
                if not first and (last is None or not store.is_current(last)):
                    # The previous batch is prepared again when it is written (the cache
                    # was dropped since, or preparing it failed): this one waits for
                    # that, or it would only be deferred in turn, and so on.
                    while self._committed < taken:
                        progress = self._progress
                        await progress.wait()
                    after = None
                first = False
                prepared: Prepared | None
                try:
                    prepared = await store.prepare(batch, self.broker, after=after)
                except StoreError:
                    prepared = None  # written the plain way, with its retries
                last = prepared
                taken += n
                # Waits until the previous batch is written: one batch ahead at most.
                await send.send((batch, prepared))

    async def _commit_prepared(self, batch: list[_Item], prepared: Prepared) -> None:
        try:
            await self.store.write_prepared(prepared)
            return
        except StoreConnectionError as exc:
            self._retries += 1
            logger.warning(
                "writing %d events to %s failed (%s); retrying",
                len(batch),
                self.store.url,
                exc,
            )
        except StoreError:
            pass
        await self._commit(batch)  # retried with backoff, or split around what is refused

    async def _commit(self, batch: list[_Item]) -> None:
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                await self.store.write(batch, broker=self.broker)
                return
            except StoreConnectionError as exc:
                self._retries += 1
                delay = backoff.next_delay()
                logger.warning(
                    "writing %d events to %s failed (%s); retrying in %.2fs",
                    len(batch),
                    self.store.url,
                    exc,
                    delay,
                )
                await anyio.sleep(delay)
            except StoreError as exc:
                if len(batch) == 1:
                    reason = type(exc.__cause__ or exc).__name__
                    self.store.count_rejected(reason)
                    self._rejected += 1
                    logger.warning("the store refused an event (%s): %s", reason, exc)
                    return
                half = len(batch) // 2
                await self._commit(batch[:half])
                await self._commit(batch[half:])
                return

    def _release_acks(self) -> None:
        acks, done = self._acks, self._committed
        while acks and acks[0][0] <= done:
            self._call(acks.popleft()[1])

    def _call(self, ack: Callable[[], None]) -> None:
        try:
            ack()
            self._acked += 1
        except AiocelevError as exc:
            logger.warning("acknowledging a message failed (it will be redelivered): %s", exc)

    async def _retention(self) -> None:
        while True:
            await anyio.sleep(self._prune_every)
            try:
                self._pruned += await self.store.prune(
                    max_age=self._max_age, max_rows=self._max_rows
                )
            except StoreError as exc:
                logger.warning("retention on %s failed (retrying later): %s", self.store.url, exc)
