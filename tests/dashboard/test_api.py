"""The Flower-compatible JSON API over memory:// (in-process, httpx's ASGI transport)."""

from __future__ import annotations

import time

import pytest

from aiocelev.dashboard._query import FLOWER_TASK_FIELDS

from .conftest import Dashboard, wait_until, with_dash


async def _three_tasks(dash: Dashboard) -> None:
    async with dash.worker("w1@host") as w1, dash.worker("w2@host") as w2:
        await dash.run_task(w1, "t-ok", "app.add", (1, 2), result=3)
        await dash.run_task(w1, "t-bad", "app.boom", ("needle",), fail=ValueError("kaboom"))
        await dash.run_task(w2, "t-other", "app.mul", (2, 4), {"tag": "needle"}, result=8)


@with_dash()
async def test_tasks_and_info_have_flowers_fields(dash: Dashboard) -> None:
    await _three_tasks(dash)
    r = await dash.client.get("/api/tasks")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"t-ok", "t-bad", "t-other"}
    assert set(FLOWER_TASK_FIELDS) <= set(body["t-ok"])
    assert body["t-ok"]["worker"] == "w1@host"
    assert body["t-ok"]["broker"] == dash.url
    info = (await dash.client.get("/api/task/info/t-bad")).json()
    assert info["state"] == "FAILURE" and "kaboom" in info["exception"]
    assert info["traceback"]
    assert (await dash.client.get("/api/task/info/nope")).status_code == 404
    types = (await dash.client.get("/api/task/types")).json()
    assert types == {"task-types": ["app.add", "app.boom", "app.mul"]}


@with_dash()
async def test_flower_query_parameters(dash: Dashboard) -> None:
    await _three_tasks(dash)

    async def ids(**params: str) -> list[str]:
        r = await dash.client.get("/api/tasks", params=params)
        assert r.status_code == 200, r.text
        return list(r.json())

    assert await ids(workername="w2@host") == ["t-other"]
    assert await ids(taskname="app.add") == ["t-ok"]
    assert await ids(state="FAILURE") == ["t-bad"]
    assert await ids(state="All", taskname="All") != []
    assert sorted(await ids(search="needle")) == ["t-bad", "t-other"]
    assert await ids(search="needle -kaboom") == ["t-other"]
    assert await ids(search="kwargs:needle") == ["t-other"]
    assert await ids(sort_by="name") == ["t-ok", "t-bad", "t-other"]
    assert await ids(sort_by="-name") == ["t-other", "t-bad", "t-ok"]
    assert len(await ids(limit="2")) == 2
    assert await ids(sort_by="name", offset="1", limit="1") == ["t-bad"]
    past = time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() - 3600))
    future = time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() + 3600))
    assert len(await ids(received_start=past, received_end=future)) == 3
    assert await ids(received_start=future) == []
    assert await ids(received_end=past) == []
    for bad in ({"sort_by": "uuid"}, {"received_start": "yesterday"}, {"limit": "x"}):
        r = await dash.client.get("/api/tasks", params=bad)
        assert r.status_code == 400 and "error" in r.json()


@with_dash()
async def test_workers_status_refresh_and_unknown(dash: Dashboard) -> None:
    async with dash.worker("w1@host", task_names=["app.add"]):
        assert (await dash.client.get("/api/workers", params={"status": "true"})).json() == {
            "w1@host": True
        }
        r = await dash.client.get("/api/workers", params={"refresh": "1"})
        entry = r.json()["w1@host"]
        assert "app.add" in entry["registered"]
        assert entry["stats"]["pid"]
        assert entry["broker"] == dash.url
        one = (await dash.client.get("/api/workers", params={"workername": "w1@host"})).json()
        assert list(one) == ["w1@host"]
        r = await dash.client.get("/api/workers", params={"workername": "ghost@host"})
        assert r.status_code == 404


@with_dash()
async def test_revoke_through_the_api_reaches_the_worker(dash: Dashboard) -> None:
    import anyio

    async with dash.worker("w1@host") as worker:
        started = anyio.Event()

        async def job() -> None:
            async with worker.task("t-long", "app.sleep") as _task:
                started.set()
                await anyio.sleep(60)

        async with anyio.create_task_group() as tg:
            tg.start_soon(job)
            await started.wait()
            await wait_until(lambda: dash.hub.state.task("t-long") is not None, "t-long")
            r = await dash.client.post("/api/task/revoke/t-long", params={"terminate": "true"})
            assert r.status_code == 200, r.text
            assert r.json()["message"] == "Revoked 't-long'"
            assert r.json()["replies"][0]["node"] == "w1@host"
        await wait_until(lambda: dash.hub.state.task("t-long").state == "REVOKED", "REVOKED")


@with_dash()
async def test_worker_actions_answer_like_flower(dash: Dashboard) -> None:
    async with dash.worker("w1@host"):
        r = await dash.client.post("/api/worker/pool/grow/ghost@host")
        assert r.status_code == 404
        r = await dash.client.post("/api/worker/shutdown/w1@host")
        assert r.status_code == 200 and r.json() == {"message": "Shutting down!"}
        r = await dash.client.post("/api/task/rate-limit/app.add", data={"ratelimit": "10/m"})
        assert r.status_code == 400  # workername is required, as in Flower


@pytest.mark.parametrize("path", ["/api/task/timeout/app.add", "/api/task/rate-limit/app.add"])
@with_dash()
async def test_task_limits_need_a_known_worker(dash: Dashboard, path: str) -> None:
    r = await dash.client.post(path, data={"workername": "ghost@host", "ratelimit": "1/s"})
    assert r.status_code == 404
