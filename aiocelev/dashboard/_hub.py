"""The dashboard's engine: receivers feeding one ``ClusterState``, and the update push.

One :class:`Hub` per app.  :meth:`Hub.run` (started by the app's lifespan)
runs, in one task group, a feed per broker (an ``EventReceiver`` applying
events to the shared state and the Prometheus series, reconnecting after a
broker failure), the optional demo simulation, and the pusher that wakes
connected browsers at most ``1 / push_interval`` times a second.  Leaving it
cancels everything and closes the brokers it opened.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.abc

from aiocelev import (
    AiocelevError,
    Broker,
    ClusterState,
    ConnectionStatus,
    Control,
    ControlReply,
    EventReceiver,
    TaskState,
    open_broker,
)
from aiocelev.store import EventStore, StoreError, StoreWriter

from ._metrics import FlowerMetrics
from ._urls import mask

__all__ = ["Feed", "Hub", "Subscriber"]

logger = logging.getLogger("aiocelev.dashboard")

#: The remote-control inspections shown on a worker's page and in ``/api/workers``
#: (Flower's ``update_workers`` set).
INSPECT_METHODS = (
    "stats",
    "active_queues",
    "registered",
    "scheduled",
    "active",
    "reserved",
    "revoked",
    "conf",
)

Simulation = Callable[[str, anyio.Event], Awaitable[None]]


class Feed:
    """One broker the dashboard listens to, and what it knows about the connection."""

    def __init__(self, broker: Broker, owned: bool, label: str) -> None:
        self.broker = broker
        self.owned = owned
        #: The masked URL, shown next to every worker and task from this broker.
        self.label = label
        #: ``connecting``, ``connected`` or ``disconnected``.
        self.status = "connecting"
        self.error: str | None = None
        self.since = time.time()
        self.events = 0
        #: Connection losses since the dashboard started (each one a gap in the stream).
        self.gaps = 0
        #: How long the newest finished gap lasted (seconds).
        self.last_gap: float | None = None
        #: Whether this feed's loss is counted in the state's deafness now.
        self.deaf = False
        self.lost_at = 0.0
        self.control = Control(broker)
        #: Writes this broker's events to the hub's store (``--store``), while running.
        self.writer: StoreWriter | None = None
        #: Set the first time the receiver is subscribed (created by :meth:`Hub.run`).
        self.ready: anyio.Event | None = None

    @property
    def connected(self) -> bool:
        """Whether the receiver of this broker is subscribed now."""
        return self.status == "connected"

    def to_dict(self) -> dict[str, Any]:
        """JSON view (never contains a password)."""
        return {
            "broker": self.label,
            "status": self.status,
            "since": self.since,
            "error": self.error,
            "events": self.events,
            "gaps": self.gaps,
            "last_gap": self.last_gap,
        }


class Subscriber:
    """A connected browser: a one-slot, latest-wins mailbox.

    The pusher never waits on it: an update replaces any update the client has
    not taken yet, so a stalled browser costs one pending payload, never
    ingestion time.
    """

    __slots__ = ("_event", "dropped", "latest")

    def __init__(self) -> None:
        self.latest: dict[str, Any] | None = None
        self.dropped = 0
        self._event = anyio.Event()

    def offer(self, payload: dict[str, Any]) -> None:
        """Replace the pending payload with *payload* and wake the client."""
        if self.latest is not None:
            self.dropped += 1
        self.latest = payload
        self._event.set()

    async def next(self, timeout: float) -> dict[str, Any] | None:
        """The newest payload, or ``None`` after *timeout* seconds without one."""
        if self.latest is None:
            with anyio.move_on_after(timeout):
                await self._event.wait()
        payload, self.latest = self.latest, None
        self._event = anyio.Event()
        return payload


class Hub:
    """Brokers, the shared state, metrics, inspect cache and connected browsers."""

    def __init__(
        self,
        brokers: Sequence[str | Broker],
        *,
        max_tasks: int,
        inspect_timeout: float,
        metrics: FlowerMetrics,
        push_interval: float = 0.5,
        max_clients: int = 100,
        reconnect_delay: float = 1.0,
        demo: Simulation | None = None,
        purge_offline_workers: float | None = None,
        store: EventStore | None = None,
        restore_recent: int = 1_000,
    ) -> None:
        self.state = ClusterState(max_tasks=max_tasks)
        self.metrics = metrics
        self.inspect_timeout = inspect_timeout
        self.push_interval = push_interval
        self.max_clients = max_clients
        self.reconnect_delay = reconnect_delay
        self.purge_offline_workers = purge_offline_workers
        self._demo = demo
        #: The task history (``--store``): restored from at start, written to as events arrive.
        self.store = store
        self._restore_recent = restore_recent
        self.restored: tuple[int, int] = (0, 0)
        #: Why writing to the store stopped, if it did.
        self.store_error: str | None = None
        self.feeds: list[Feed] = []
        for broker in brokers:
            if isinstance(broker, str):
                opened = open_broker(broker)
                self.feeds.append(Feed(opened, True, mask(opened.url)))
            else:
                self.feeds.append(Feed(broker, False, mask(broker.url)))
        #: Hostname -> the feed it was last heard on (bounded like the state's workers).
        self._host_feed: OrderedDict[str, Feed] = OrderedDict()
        self._host_limit = self.state.max_workers * 2
        #: Hostname -> {inspect method: payload, "timestamp": when}.
        self.inspected: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.version = 0
        self.subscribers: set[Subscriber] = set()
        self.running = False

    # -- labels and status ----------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether at least one broker's receiver is subscribed."""
        return any(feed.connected for feed in self.feeds)

    @property
    def all_connected(self) -> bool:
        """Whether every broker's receiver is subscribed."""
        return all(feed.connected for feed in self.feeds)

    def feed_of(self, hostname: str | None) -> Feed | None:
        """The feed a worker (or client) was last heard on."""
        if hostname is None:
            return None
        return self._host_feed.get(hostname)

    def broker_of(self, hostname: str | None) -> str | None:
        """The masked URL of the broker *hostname* was last heard on."""
        feed = self.feed_of(hostname)
        return feed.label if feed is not None else None

    def task_broker(self, worker: str | None, client: str | None) -> str | None:
        """Where a task came from: its worker's broker, else its sender's."""
        return self.broker_of(worker) or self.broker_of(client)

    def worker_status(self, hostname: str) -> str:
        """``online``/``offline``/``lost``, or ``unknown`` while its broker is disconnected."""
        worker = self.state.worker(hostname)
        if worker is None:
            return "unknown"
        feed = self.feed_of(hostname)
        if feed is not None and not feed.connected and worker.status == "lost":
            return "unknown"
        return worker.status

    def status_payload(self) -> dict[str, Any]:
        """What the SSE stream sends: a version and the connection summary."""
        return {
            "version": self.version,
            "connected": self.connected,
            "brokers": [feed.to_dict() for feed in self.feeds],
            "tasks": len(self.state),
            "workers": len(self.state.workers),
        }

    # -- running --------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run every feed, the pusher and the demo until cancelled; then close the brokers."""
        async with AsyncExitStack() as stack:
            for feed in self.feeds:
                feed.ready = anyio.Event()
                if feed.owned:
                    stack.push_async_callback(feed.broker.aclose)
            if self.store is not None:
                await self._restore(self.store)
                for feed in self.feeds:
                    feed.writer = await stack.enter_async_context(
                        StoreWriter(self.store, broker=feed.label)
                    )
            async with anyio.create_task_group() as tg:
                for feed in self.feeds:
                    tg.start_soon(self._feed, feed, name=f"dashboard feed {feed.label}")
                tg.start_soon(self._push, name="dashboard pusher")
                if self._demo is not None and self.feeds:
                    tg.start_soon(self._run_demo, self._demo, name="dashboard demo")
                self.running = True
                task_status.started()
                try:
                    await anyio.sleep_forever()
                finally:
                    self.running = False
                    for subscriber in self.subscribers:  # let live streams end
                        subscriber.offer(self.status_payload())
                    tg.cancel_scope.cancel()

    async def _run_demo(self, demo: Simulation) -> None:
        feed = self.feeds[0]
        # Wait until the receiver is subscribed, so the demo's first events are seen.
        assert feed.ready is not None
        await feed.ready.wait()
        stop = anyio.Event()
        await demo(feed.label, stop)

    def _lost(self, feed: Feed, reason: str) -> None:
        """*feed* cannot hear its broker: say so, and stop ageing workers meanwhile."""
        feed.status, feed.since, feed.error = "disconnected", time.time(), mask(reason)
        if not feed.deaf:
            feed.deaf = True
            feed.gaps += 1
            feed.lost_at = time.monotonic()
            self.state.connection_lost()
        self.version += 1

    def _heard(self, feed: Feed) -> None:
        """*feed* hears its broker (again)."""
        feed.status, feed.since, feed.error = "connected", time.time(), None
        if feed.deaf:
            feed.deaf = False
            feed.last_gap = time.monotonic() - feed.lost_at
            self.state.connection_restored()
            logger.warning(
                "dashboard: %s is back after %.1fs (gap #%d)", feed.label, feed.last_gap, feed.gaps
            )
        self.version += 1

    def _on_connection(self, feed: Feed, status: ConnectionStatus) -> None:
        if status.connected:
            self._heard(feed)
        else:
            self._lost(feed, status.reason or "connection lost")
            logger.warning(
                "dashboard: disconnected from %s (%s); reconnecting (gap #%d)",
                feed.label,
                feed.error,
                feed.gaps,
            )

    async def _feed(self, feed: Feed) -> None:
        delay = self.reconnect_delay
        while True:
            if not feed.deaf:
                feed.status, feed.since = "connecting", time.time()
            try:
                async with EventReceiver(
                    feed.broker,
                    connect_timeout=10.0,
                    on_connection=functools.partial(self._on_connection, feed),
                ) as receiver:
                    self._heard(feed)
                    if feed.ready is not None:
                        feed.ready.set()
                    delay = self.reconnect_delay
                    self.version += 1
                    logger.info("dashboard: receiving events from %s", feed.label)
                    apply = self._apply_batch
                    # Wire dicts: the state, the metrics and the store take
                    # mappings, and the typed wrapper would cost each event.
                    async for batch in receiver.batches(max_size=_BATCH, dicts=True):
                        apply(feed, batch)
                        if feed.writer is not None:
                            await self._write(feed, feed.writer, batch)
                self._lost(feed, "the broker ended the subscription")
            except AiocelevError as exc:
                self._lost(feed, str(exc))
                logger.warning("dashboard: %s: %s", feed.label, feed.error)
            await anyio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _restore(self, store: EventStore) -> None:
        """Workers and unfinished (plus recently finished) tasks from the store, before any event."""
        by_label = {feed.label: feed for feed in self.feeds}
        try:
            self.restored = await store.restore(self.state, recent=self._restore_recent)
            for worker in await store.workers():
                feed = by_label.get(worker.get("broker") or "")
                if feed is not None:
                    self._host_feed[worker["hostname"]] = feed
        except StoreError as exc:
            logger.warning("dashboard: could not restore from the store: %s", mask(str(exc)))
            return
        logger.info(
            "dashboard: restored %d tasks and %d workers from %s",
            *self.restored,
            mask(store.url),
        )
        self.version += 1

    def _apply_batch(self, feed: Feed, batch: list[dict[str, Any]]) -> None:
        """Apply a list of events from *feed*: state, labels, metrics (one loop, names bound once)."""
        hosts = self._host_feed
        limit = self._host_limit
        apply = self.state.apply
        observe = self.metrics.observe
        for event in batch:
            hostname = event.get("hostname")
            if type(hostname) is str and hosts.get(hostname) is not feed:
                hosts[hostname] = feed
                if len(hosts) > limit:
                    hosts.popitem(last=False)
            record = apply(event)
            if type(record) is TaskState and event.get("type") == "task-received":
                _share_strings(record)
            observe(event, record)
        feed.events += len(batch)
        self.version += 1

    async def _write(self, feed: Feed, writer: StoreWriter, batch: list[dict[str, Any]]) -> None:
        """Hand *batch* to the history writer (waits while its buffer is full)."""
        try:
            for event in batch:
                await writer.put(event)
        except AiocelevError as exc:
            # History stops; the live view goes on.
            self.store_error = mask(str(exc))
            logger.error("dashboard: the store failed: %s", self.store_error)
            feed.writer = None

    async def _push(self) -> None:
        sent = -1
        while True:
            await anyio.sleep(self.push_interval)
            if self.version == sent or not self.subscribers:
                continue
            sent = self.version
            payload = self.status_payload()
            for subscriber in self.subscribers:
                subscriber.offer(payload)

    # -- metrics housekeeping -------------------------------------------------

    def purge_offline_metrics(self) -> int:
        """Drop the series of workers offline for longer than ``purge_offline_workers``."""
        limit = self.purge_offline_workers
        if limit is None:
            return 0
        now = time.time()
        gone = []
        for hostname in self.metrics.workers():
            worker = self.state.worker(hostname)
            if worker is None or (not worker.alive and (worker.last_seen or 0) + limit < now):
                gone.append(hostname)
        return self.metrics.remove_workers(gone)

    # -- remote control ---------------------------------------------------------

    def controls_for(self, hostname: str | None) -> list[Control]:
        """The control clients to reach *hostname* (every broker when unknown)."""
        feed = self.feed_of(hostname)
        if feed is not None:
            return [feed.control]
        return [feed.control for feed in self.feeds]

    async def inspect(self, hostnames: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Run Flower's inspections on *hostnames* (default: every worker); cache and return them."""
        targets: dict[int, tuple[Control, list[str] | None]] = {}
        if hostnames:
            for hostname in hostnames:
                for control in self.controls_for(hostname):
                    entry = targets.setdefault(id(control), (control, []))
                    assert entry[1] is not None
                    entry[1].append(hostname)
        else:
            for feed in self.feeds:
                targets[id(feed.control)] = (feed.control, None)
        found: dict[str, dict[str, Any]] = {}

        async def one(control: Control, method: str, destination: list[str] | None) -> None:
            kw: dict[str, Any] = {"timeout": self.inspect_timeout}
            if destination:
                kw["destination"] = destination
            try:
                replies: list[ControlReply] = await getattr(control, method)(**kw)
            except AiocelevError as exc:
                logger.info("dashboard: inspect %s failed: %s", method, mask(str(exc)))
                return
            for reply in replies:
                if reply.duplicate:
                    continue
                found.setdefault(reply.node, {})[method] = reply.payload

        async with anyio.create_task_group() as tg:
            for control, destination in targets.values():
                for method in INSPECT_METHODS:
                    tg.start_soon(one, control, method, destination)
        now = time.time()
        for node, info in found.items():
            info = found[node] = _scrub(info)
            info["timestamp"] = now
            self.inspected[node] = info
            self.inspected.move_to_end(node)
            while len(self.inspected) > self.state.max_workers:
                self.inspected.popitem(last=False)
        return found

    async def command(
        self, hostname: str | None, method: str, *args: Any, **kw: Any
    ) -> list[ControlReply]:
        """Send a control command (to *hostname*, or broadcast); the replies of every broker."""
        replies: list[ControlReply] = []
        kw.setdefault("timeout", self.inspect_timeout)
        if hostname is not None:
            kw["destination"] = [hostname]
        for control in self.controls_for(hostname):
            replies.extend(await getattr(control, method)(*args, **kw))
        return replies


def _share_strings(task: TaskState) -> None:
    """One string object per task name and worker, and a root id that is the task's own
    shared with its uuid: each decoded event brings fresh copies, about 200 bytes per task."""
    name, worker = task.name, task.worker
    if type(name) is str:
        task.name = sys.intern(name)
    if type(worker) is str:
        task.worker = sys.intern(worker)
    if task.root_id == task.uuid:
        task.root_id = task.uuid


#: Most events taken from a receiver at once (bounds the time between two pushes).
_BATCH = 2_000

_SECRET_KEYS = frozenset({"password", "passwd", "secret", "sentinel_password"})


def _scrub(value: Any) -> Any:
    """*value* without secrets: ``password``-like keys blanked, URLs masked (inspect replies
    carry the worker's broker and configuration)."""
    if isinstance(value, dict):
        return {
            k: ("***" if isinstance(k, str) and k.lower() in _SECRET_KEYS and v else _scrub(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, str) and "@" in value:
        return mask(value)
    return value
