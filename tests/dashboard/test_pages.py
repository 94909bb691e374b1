"""Pages: rendering, filters kept in links, hostile event content escaped, broker loss shown."""

from __future__ import annotations

import anyio

from aiocelev import EventDispatcher

from .conftest import Dashboard, running_dashboard, wait_until, with_dash

SCRIPT = "<script>alert('pwned')</script>"


@with_dash()
async def test_every_page_renders_and_links(dash: Dashboard) -> None:
    async with dash.worker("w1@host") as w:
        await dash.run_task(w, "t-1", "app.add", (1, 2), result=3)
        for path in ["/", "/workers", "/tasks", "/task/t-1", "/worker/w1@host"]:
            r = await dash.client.get(path)
            assert r.status_code == 200, path
            assert "text/html" in r.headers["content-type"]
            assert "script-src 'self'" in r.headers["content-security-policy"]
        page = (await dash.client.get("/")).text
        assert 'data-testid="worker-row" data-worker="w1@host" data-status="online"' in page
        assert "/tasks?worker=w1%40host&amp;state=SUCCESS" in page
        task = (await dash.client.get("/task/t-1")).text
        assert 'data-testid="task-timeline"' in task and "task-succeeded" in task
        assert (await dash.client.get("/task/missing")).status_code == 404
        assert (await dash.client.get("/worker/ghost@host")).status_code == 404


@with_dash()
async def test_fragment_is_the_live_region_only(dash: Dashboard) -> None:
    r = await dash.client.get("/tasks", headers={"X-Aiocelev-Fragment": "1"})
    assert r.status_code == 200
    assert "<html" not in r.text and 'data-testid="tasks-empty"' in r.text


@with_dash()
async def test_task_list_filters_sort_and_paging_keep_the_url(dash: Dashboard) -> None:
    async with dash.worker("w1@host") as w:
        for i in range(7):
            await dash.run_task(w, f"t-{i}", "app.add", (i, "needle" if i % 2 else "hay"))
        r = await dash.client.get(
            "/tasks", params={"search": "needle", "limit": "2", "sort_by": "received"}
        )
        assert r.status_code == 200
        page = r.text
        assert "3 matching, 1–2 shown" in page
        assert page.count('data-testid="task-row"') == 2
        # the pager and the sort links keep the filter
        assert "search=needle" in page.split('data-testid="page-next"')[0].rsplit("href=", 1)[1]
        assert 'value="needle"' in page
        r = await dash.client.get("/tasks", params={"search": "-needle"})
        assert "4 matching" in r.text
        r = await dash.client.get("/tasks", params={"sort_by": "bogus"})
        assert r.status_code == 400 and 'data-testid="query-error"' in r.text


@with_dash()
async def test_hostile_values_are_escaped(dash: Dashboard) -> None:
    huge = "x" * 100_000
    async with dash.worker(f"{SCRIPT}@evil") as w:
        await dash.run_task(w, "t-xss", SCRIPT, (SCRIPT,), {"k": SCRIPT}, result=SCRIPT)
        # a huge argument as a worker's saferepr would not send it: straight on the bus
        await w.dispatcher.send("task-received", uuid="t-huge", name="app.huge", args=huge)
        await wait_until(lambda: dash.hub.state.task("t-huge") is not None, "t-huge")
        await dash.run_task(
            w, "t-fail", "app.fail", ("a",), fail=ValueError("<img src=x onerror=alert(1)>")
        )
        for path in ["/", "/tasks", "/task/t-xss", "/task/t-fail", "/tasks?search=%3Cscript"]:
            r = await dash.client.get(path)
            assert r.status_code == 200, path
            assert "<script>alert" not in r.text, path
            assert "<img src=x" not in r.text, path
        tasks = (await dash.client.get("/tasks")).text
        assert "&lt;script&gt;" in tasks
        assert huge not in tasks  # cells are shortened; the detail page has it all
        assert huge in (await dash.client.get("/task/t-huge")).text
        r = await dash.client.get("/worker/" + SCRIPT.replace("/", "%2F") + "@evil")
        assert r.status_code == 200 and "<script>alert" not in r.text


@with_dash()
async def test_odd_hostnames_render(dash: Dashboard) -> None:
    for hostname in ["wörker@höst", "a/b@c d", "\u202eevil@host", "emoji-🙂@host"]:
        async with EventDispatcher(dash.url, hostname=hostname) as d:
            await d.send("worker-online", freq=2.0)
        await wait_until(lambda h=hostname: dash.hub.state.worker(h) is not None, hostname)
    r = await dash.client.get("/")
    assert r.status_code == 200
    assert "wörker@höst" in r.text and "a/b@c d" in r.text
    # a lone surrogate (what a non-UTF-8 hostname can decode to) must not break a page
    dash.hub.state.apply(
        {"type": "worker-online", "hostname": "bad\udcffname@host", "timestamp": 1.0, "freq": 2.0}
    )
    for path in ["/", "/api/workers", "/metrics"]:
        assert (await dash.client.get(path)).status_code == 200, path


async def test_lost_broker_connection_is_shown_and_password_never() -> None:
    url = "amqp://guest:s3cret-pw@127.0.0.1:1//"  # nothing listens on port 1
    async with running_dashboard([url], basic_auth=["admin:pw"]) as dash:
        auth = ("admin", "pw")
        await wait_until(lambda: dash.hub.feeds[0].status != "connecting" or True, "feed")
        for path in ["/", "/tasks", "/healthz", "/api/workers", "/metrics"]:
            r = await dash.client.get(path, auth=auth)
            assert "s3cret-pw" not in r.text, path
        page = (await dash.client.get("/", auth=auth)).text
        assert 'data-testid="connection-banner"' in page
        assert "not connected" in page
        assert "amqp://guest:***@127.0.0.1:1//" in page
        r = await dash.client.get("/healthz")  # no auth needed
        assert r.status_code == 503
        assert r.json()["brokers"][0]["status"] in ("connecting", "disconnected")
        with anyio.fail_after(30):
            while dash.hub.feeds[0].status != "disconnected":
                await anyio.sleep(0.05)
        assert "s3cret-pw" not in (await dash.client.get("/healthz")).text


@with_dash(demo=True)
async def test_demo_is_labelled(dash: Dashboard) -> None:
    r = await dash.client.get("/")
    assert 'data-testid="demo-badge"' in r.text and "demo data" in r.text
