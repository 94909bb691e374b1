"""The dashboard on a task-history store: history beyond memory, and a restart that remembers."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiocelev import EventDispatcher

from .conftest import eventually, running_dashboard, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _stored(dash: object, n: int) -> bool:
    store = dash.hub.store  # type: ignore[attr-defined]
    return bool(await store.count({}) >= n)


async def test_history_beyond_memory_and_evicted_task_pages(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    async with running_dashboard(store=url, max_tasks=5, actions_without_auth=True) as dash:
        async with dash.worker("hist@host") as w:
            for n in range(12):
                fail = ValueError(f"bad {n}") if n % 4 == 0 else None
                await dash.run_task(w, f"h-{n:02}", "app.job", args=(n,), fail=fail)
        assert dash.hub.state.task("h-00") is None  # evicted from memory (max_tasks=5)
        await eventually(lambda: _stored(dash, 12), "12 tasks committed")

        page = await dash.client.get("/task/h-00")
        assert page.status_code == 200
        assert 'data-testid="task-from-store"' in page.text and "bad 0" in page.text

        history = await dash.client.get("/tasks", params={"source": "history", "limit": "5"})
        assert history.status_code == 200
        assert "12 stored matching" in history.text
        assert history.text.count('data-testid="task-row"') == 5
        assert 'data-static="1"' in history.text  # not refreshed live
        assert 'data-testid="page-next"' in history.text

        failed = await dash.client.get("/tasks", params={"source": "history", "state": "FAILURE"})
        assert "3 stored matching" in failed.text
        for n in (0, 4, 8):
            assert f'data-task="h-{n:02}"' in failed.text

        searched = await dash.client.get(
            "/tasks", params={"source": "history", "search": "exception:bad -4"}
        )
        assert 'data-task="h-00"' in searched.text and 'data-task="h-04"' not in searched.text

        bad = await dash.client.get("/tasks", params={"source": "history", "cursor": "nonsense"})
        assert bad.status_code == 400 and 'data-testid="query-error"' in bad.text

        live = await dash.client.get("/tasks")  # memory: only what is kept
        assert "5 matching" in live.text


async def test_a_restarted_dashboard_shows_the_cluster_as_it_was(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'restart.db'}"
    async with running_dashboard(store=url) as dash:
        async with EventDispatcher(dash.url, hostname="again@host") as events:
            await events.send("worker-online", freq=2.0, active=0, processed=0)
            await events.send("task-received", uuid="done-1", name="app.job", args="(1,)")
            await events.send("task-started", uuid="done-1")
            await events.send("task-succeeded", uuid="done-1", result="2", runtime=0.1)
            await events.send("task-received", uuid="running-1", name="app.long", args="(7,)")
            await events.send("task-started", uuid="running-1")
        await eventually(lambda: _stored(dash, 2), "both tasks committed")
    # A new process of the dashboard: nothing in memory but what the store gives back.
    async with running_dashboard(store=url) as dash:
        assert dash.hub.restored == (2, 1)
        assert dash.hub.state.worker("again@host") is not None
        running = dash.hub.state.task("running-1")
        assert running is not None and running.state == "STARTED" and running.name == "app.long"
        done = dash.hub.state.task("done-1")
        assert done is not None and done.state == "SUCCESS" and done.result == "2"
        page = (await dash.client.get("/tasks", params={"state": "STARTED"})).text
        assert 'data-task="running-1"' in page
        # Events after the restart are applied on top of the restored task.
        async with EventDispatcher(dash.url, hostname="again@host") as events:
            await events.send("task-succeeded", uuid="running-1", result="49", runtime=9.0)
        await wait_until(lambda: running.state == "SUCCESS", "the restored task finished")
