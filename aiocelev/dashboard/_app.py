"""``create_app``: the dashboard as an ASGI application."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from aiocelev import Broker, ConfigurationError
from aiocelev.store import EventStore, open_store

from ._api import api_routes
from ._hub import Hub, Simulation
from ._metrics import DEFAULT_RUNTIME_BUCKETS, FlowerMetrics
from ._pages import page_routes
from ._queues import QueueBoard
from ._security import Guard, parse_credentials
from ._sse import stream

__all__ = ["DEMO_BROKER", "create_app"]

#: The in-process broker ``demo=True`` uses when no broker is given.
DEMO_BROKER = "memory://aiocelev-dashboard-demo"


@dataclass(frozen=True)
class Config:
    """What templates and handlers need to know about the app's options."""

    read_only: bool
    demo: bool


def create_app(
    brokers: Sequence[str | Broker],
    *,
    read_only: bool = False,
    basic_auth: Sequence[str | tuple[str, str]] = (),
    token: str | None = None,
    max_tasks: int = 10_000,
    url_prefix: str = "",
    demo: bool = False,
    inspect_timeout: float = 1.0,
    actions_without_auth: bool = False,
    runtime_buckets: Sequence[float] = DEFAULT_RUNTIME_BUCKETS,
    purge_offline_workers: float | None = None,
    push_interval: float = 0.5,
    max_clients: int = 100,
    simulation: Simulation | None = None,
    broker_api: str | None = None,
    store: str | EventStore | None = None,
    restore_recent: int = 1_000,
) -> Starlette:
    """Build the dashboard: pages, Flower-compatible JSON API, SSE, ``/metrics``, ``/healthz``.

    The app's lifespan starts one :class:`~aiocelev.EventReceiver` per broker,
    all feeding one bounded :class:`~aiocelev.ClusterState`, and stops them (and
    closes the brokers opened from URLs) on shutdown.  When mounting the app
    inside another Starlette or FastAPI app, enter its lifespan from the
    parent's: ``async with dashboard.router.lifespan_context(dashboard): ...``.

    :param brokers: broker URLs (opened and closed by the app) or open
        :class:`~aiocelev.Broker` adapters (left open); one view over all of
        them, every worker and task labelled with its broker's masked URL.
    :param read_only: refuse every action (HTTP 403).
    :param basic_auth: ``"USER:PASS"`` strings or ``(user, password)`` pairs;
        with any of them (or *token*) every request but ``/healthz`` needs auth.
    :param token: a bearer token (``Authorization: Bearer T``).
    :param max_tasks: tasks kept (finished ones are evicted first).
    :param url_prefix: serve everything under this path (``/flower``).
    :param demo: label every page "demo data"; with no broker given, use the
        in-process ``memory://`` broker, fed by *simulation* if given.
    :param inspect_timeout: seconds to wait for workers' remote-control replies.
    :param actions_without_auth: allow actions although no credentials are
        configured (by default they need authentication).
    :param runtime_buckets: buckets of ``flower_task_runtime_seconds``.
    :param purge_offline_workers: drop the series of workers offline for longer
        than this many seconds (Flower's ``--purge_offline_workers``).
    :param push_interval: seconds between live updates sent to a browser (at most).
    :param max_clients: live (SSE) connections accepted at once.
    :param simulation: ``async fn(broker_url, stop_event)`` run while the app
        runs, once the first broker is subscribed (the CLI's ``--demo`` passes
        the demo's simulated workers).
    :param broker_api: RabbitMQ's management API root
        (``http://user:pass@host:15672/api/``, Flower's ``--broker_api``): the
        broker page then lists every queue of each RabbitMQ vhost with its
        unacknowledged messages; without it, queue depths come from the broker
        protocol itself.
    :param store: a task-history store (``sqlite:///path.db``,
        ``postgresql://...``, or an :class:`~aiocelev.store.EventStore`; a URL is
        opened and closed by the app): on start the workers, the unfinished
        tasks and the *restore_recent* newest finished ones are loaded from it;
        every event is written to it; the task page finds tasks no longer in
        memory there, and the tasks page can search the whole history.
    :raises ConfigurationError: no broker, bad credentials or bounds.

    .. versionadded:: 0.2
    """
    brokers = list(brokers)
    if not brokers:
        if not demo:
            raise ConfigurationError(
                "the dashboard needs at least one broker URL (or demo=True for memory://)"
            )
        brokers = [DEMO_BROKER]
    if max_tasks < 1:
        raise ConfigurationError("max_tasks must be at least 1")
    if inspect_timeout <= 0 or push_interval <= 0:
        raise ConfigurationError("inspect_timeout and push_interval must be positive")
    try:
        credentials = parse_credentials(basic_auth)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    if token is not None and not token:
        raise ConfigurationError("the token must not be empty")
    prefix = "/" + url_prefix.strip("/") if url_prefix.strip("/") else ""

    owned_store: EventStore | None = None
    history: EventStore | None
    if isinstance(store, str):
        owned_store = history = open_store(store)
    else:
        history = store
    metrics = FlowerMetrics(runtime_buckets)
    hub = Hub(
        brokers,
        max_tasks=max_tasks,
        inspect_timeout=inspect_timeout,
        metrics=metrics,
        push_interval=push_interval,
        max_clients=max_clients,
        demo=simulation,
        purge_offline_workers=purge_offline_workers,
        store=history,
        restore_recent=restore_recent,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if owned_store is not None:
                await stack.enter_async_context(owned_store)
            async with anyio.create_task_group() as tg:
                await tg.start(hub.run)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()

    routes: list[BaseRoute] = [
        *page_routes(),
        *api_routes(),
        Route("/events/stream", stream),
        Mount("/static", StaticFiles(packages=[("aiocelev.dashboard", "static")]), name="static"),
    ]
    if prefix:
        routes = [Mount(prefix, routes=routes)]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(
                Guard,
                basic_auth=credentials,
                token=token,
                read_only=read_only,
                actions_without_auth=actions_without_auth,
                prefix=prefix,
            )
        ],
    )
    app.state.hub = hub
    app.state.queues = QueueBoard(hub, broker_api)
    app.state.config = Config(read_only=read_only, demo=demo)
    return app
