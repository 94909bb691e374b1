"""Fixtures of the dashboard tests: an app on a private memory:// broker, served in-process."""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

from aiocelev import EventDispatcher, worker_events  # noqa: E402
from aiocelev.dashboard import create_app  # noqa: E402


async def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    """Wait for *predicate()* to be true; fail with *what* after *timeout* seconds."""
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)
        return
    pytest.fail(f"timed out waiting for {what}")


async def eventually(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Await *check()* until it returns something truthy; that value."""
    with anyio.move_on_after(timeout):
        while True:
            value = await check()
            if value:
                return value
            await anyio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


class Dashboard:
    """A running app, an HTTP client on it, and its broker URL."""

    def __init__(self, app: Any, client: Any, url: str) -> None:
        self.app = app
        self.client = client
        self.url = url
        self.hub = app.state.hub

    @asynccontextmanager
    async def worker(self, hostname: str = "w1@host", **kw: Any) -> AsyncIterator[Any]:
        """An instrumented asyncio worker on the dashboard's broker, seen by the dashboard."""
        async with (
            EventDispatcher(self.url, hostname=hostname) as dispatcher,
            worker_events(dispatcher, freq=kw.pop("freq", 1.0), **kw) as worker,
        ):
            await wait_until(lambda: self.hub.state.worker(hostname) is not None, hostname)
            yield worker

    async def run_task(
        self,
        worker: Any,
        uuid_: str,
        name: str = "app.add",
        args: Any = (1, 2),
        kwargs: Any = None,
        result: Any = 3,
        fail: Exception | None = None,
    ) -> None:
        """Run one task on *worker* to its end and wait until the dashboard has its outcome."""
        scope = worker.task(uuid_, name, args, kwargs or {})
        try:
            async with scope as task:
                if fail is not None:
                    raise fail
                task.set_result(result)
        except Exception:
            if fail is None:
                raise
        await wait_until(
            lambda: (t := self.hub.state.task(uuid_)) is not None and t.ready, f"task {uuid_}"
        )


@asynccontextmanager
async def running_dashboard(
    brokers: list[Any] | None = None, **options: Any
) -> AsyncIterator[Dashboard]:
    url = f"memory://dash-{uuid.uuid4().hex[:8]}"
    app = create_app(brokers if brokers is not None else [url], **options)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dash.test") as client:
            dash = Dashboard(app, client, url)
            if brokers is None:
                await wait_until(lambda: dash.hub.connected, "the dashboard's subscription")
            yield dash


def with_dash(**options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run the test inside a running dashboard, passed as its first argument.

    (Not an async fixture: the app's task group must be entered and left in one task.)
    """
    options.setdefault("actions_without_auth", True)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> None:
            async with running_dashboard(**options) as dash:
                await fn(dash, *args, **kwargs)

        sig = inspect.signature(fn)
        wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
            parameters=list(sig.parameters.values())[1:]
        )
        return wrapper

    return decorate
