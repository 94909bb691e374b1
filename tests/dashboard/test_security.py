"""Authentication, read-only mode, actions needing auth, CSRF, url prefix, mounting."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from aiocelev import ConfigurationError
from aiocelev.dashboard import create_app

from .conftest import Dashboard, running_dashboard, with_dash


@with_dash(basic_auth=["alice:wonder", ("bob", "builder")], token="t0ken")
async def test_basic_and_bearer_auth(dash: Dashboard) -> None:
    c = dash.client
    r = await c.get("/")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert (await c.get("/", auth=("alice", "wonder"))).status_code == 200
    assert (await c.get("/api/tasks", auth=("bob", "builder"))).status_code == 200
    assert (await c.get("/", auth=("alice", "nope"))).status_code == 401
    bearer = {"Authorization": "Bearer t0ken"}
    assert (await c.get("/metrics", headers=bearer)).status_code == 200
    assert (await c.get("/metrics", headers={"Authorization": "Bearer x"})).status_code == 401
    assert (await c.get("/healthz")).status_code == 200  # probes need no credentials
    # ?token= once sets an HttpOnly cookie for the browser
    r = await c.get("/", params={"token": "t0ken"})
    assert r.status_code == 200 and "HttpOnly" in r.headers["set-cookie"]
    assert (await c.get("/tasks")).status_code == 200  # the cookie now


async def test_actions_need_auth_unless_allowed() -> None:
    async with running_dashboard() as dash:
        r = await dash.client.post("/api/task/revoke/x")
        assert r.status_code == 403 and "authentication" in r.json()["error"]
        assert (await dash.client.get("/api/tasks")).status_code == 200  # reads stay open
    async with running_dashboard(basic_auth=["a:b"]) as dash:
        r = await dash.client.post("/api/task/revoke/x", auth=("a", "b"))
        assert r.status_code == 200


@with_dash(read_only=True, basic_auth=["a:b"])
async def test_read_only_refuses_every_action(dash: Dashboard) -> None:
    for path in [
        "/api/task/revoke/x",
        "/api/task/rate-limit/app.add",
        "/api/task/timeout/app.add",
        "/api/worker/pool/grow/w",
        "/api/worker/pool/shrink/w",
        "/api/worker/shutdown/w",
    ]:
        r = await dash.client.post(path, auth=("a", "b"))
        assert r.status_code == 403 and "Read only" in r.json()["error"], path
    page = (await dash.client.get("/", auth=("a", "b"))).text
    assert 'data-testid="read-only-badge"' in page


@with_dash(basic_auth=["a:b"])
async def test_browser_posts_need_same_origin_and_the_action_header(dash: Dashboard) -> None:
    c, auth = dash.client, ("a", "b")
    cross = {"Origin": "http://evil.example", "X-Aiocelev-Action": "1"}
    assert (await c.post("/api/task/revoke/x", auth=auth, headers=cross)).status_code == 403
    site = {"Sec-Fetch-Site": "cross-site", "X-Aiocelev-Action": "1"}
    assert (await c.post("/api/task/revoke/x", auth=auth, headers=site)).status_code == 403
    form = {"Origin": "http://dash.test"}  # a same-origin form post without the header
    assert (await c.post("/api/task/revoke/x", auth=auth, headers=form)).status_code == 403
    page = {"Origin": "http://dash.test", "Sec-Fetch-Site": "same-origin", "X-Aiocelev-Action": "1"}
    assert (await c.post("/api/task/revoke/x", auth=auth, headers=page)).status_code == 200
    # scripts (no browser headers) authenticate and post as they do against Flower
    assert (await c.post("/api/task/revoke/x", auth=auth)).status_code == 200


async def test_url_prefix_and_mounting() -> None:
    async with running_dashboard(url_prefix="/flower/") as dash:
        r = await dash.client.get("/flower/workers")
        assert r.status_code == 200 and 'href="/flower/tasks"' in r.text
        assert (await dash.client.get("/flower/static/dashboard.js")).status_code == 200
        assert (await dash.client.get("/workers")).status_code == 404
    dashboard = create_app(["memory://mounted"])
    parent = Starlette(routes=[Mount("/celery", app=dashboard)])
    async with dashboard.router.lifespan_context(dashboard):
        transport = httpx.ASGITransport(app=parent)
        async with httpx.AsyncClient(transport=transport, base_url="http://p") as client:
            r = await client.get("/celery/tasks")
            assert r.status_code == 200 and 'href="/celery/workers"' in r.text
            assert (await client.get("/celery/healthz")).status_code in (200, 503)


def test_configuration_errors() -> None:
    with pytest.raises(ConfigurationError):
        create_app([])
    with pytest.raises(ConfigurationError):
        create_app(["memory://"], basic_auth=["no-colon"])
    with pytest.raises(ConfigurationError):
        create_app(["memory://"], max_tasks=0)
    assert create_app([], demo=True).state.hub.feeds[0].label.startswith("memory://")
