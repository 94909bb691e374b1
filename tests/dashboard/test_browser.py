"""The dashboard in a real browser: Playwright driving Debian's Chromium.

Per broker (RabbitMQ, Redis) one ``aiocelev dashboard`` process (with Basic auth, so the
page's actions are allowed) and one real ``celery worker -E`` (prefork, so it can terminate
a running task) serve every test of this module. Each test opens a fresh browser context and
waits on page conditions only. The pages must change by themselves (Server-Sent Events): a
marker set on ``window`` after the page loaded must survive, which proves that it was not
reloaded.

Without Chromium (``/usr/bin/chromium``, or ``$AIOCELEV_TEST_CHROMIUM``) or Playwright these
tests skip, and fail with CI=true; unreachable brokers do the same (``tests/conftest.py``).
Screenshots of the RabbitMQ run are written to ``docs/img/``.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from .._helpers import read_output
from ..conftest import AMQP_URL, IN_CI, REDIS_URL, require_broker
from ..interop._common import ROOT, Worker, stop_process

pytestmark = [pytest.mark.browser, pytest.mark.celery, pytest.mark.timeout(120)]

CHROMIUM = os.environ.get("AIOCELEV_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
AIOCELEV = str(Path(sys.executable).with_name("aiocelev"))
SCREENSHOTS = ROOT / "docs" / "img"
#: The broker whose run writes the screenshots.
SCREENSHOT_BROKER = "amqp"

#: Generous: a real worker on a shared broker, and a page that is pushed every 0.5 s.
LIVE = 45_000
#: Set on ``window`` after a page loaded; still there means the page was never reloaded.
MARK = "__aiocelevNoReload"


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the browser tests must run)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Stack:
    """A dashboard process and a real worker on one broker, and a Celery client."""

    def __init__(self, kind: str, url: str) -> None:
        from celery import Celery

        self.kind = kind
        self.url = url
        self.user = "admin"
        self.password = secrets.token_urlsafe(12)
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.server: subprocess.Popen[bytes] | None = None
        self.worker = Worker(url, events=True, pool="prefork", prefix="aiocelev-browser")
        self.client = Celery("aiocelev_browser_client", broker=url, set_as_current=False)
        self.client.conf.task_send_sent_event = True

    @property
    def node(self) -> str:
        return self.worker.nodename

    def start_server(self) -> None:
        cmd = [
            AIOCELEV, "dashboard", "--broker", self.url, "--port", str(self.port),
            "--basic-auth", f"{self.user}:{self.password}", "--inspect-timeout", "2",
        ]  # fmt: skip
        self.server = subprocess.Popen(
            cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                break
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the dashboard did not come up:\n{self.output()}")

    def start_worker(self) -> None:
        """Start the worker once (the first test that needs it opens its page first)."""
        if self.worker.proc is None:
            self.worker.start()

    def send(self, name: str, *args: Any, **options: Any) -> str:
        options.setdefault("queue", self.worker.queue)
        return str(self.client.send_task(name, args=args, **options).id)

    def output(self) -> str:
        return read_output(self.log)[-4000:]

    def close(self) -> None:
        try:
            self.worker.stop()
        finally:
            try:
                if self.server is not None:
                    stop_process(self.server)
            finally:
                self.log.close()
                self.worker.log.close()
                try:
                    with self.client.connection_for_write() as conn:
                        conn.default_channel.queue_delete(self.worker.queue)
                finally:
                    self.client.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("amqp", marks=pytest.mark.amqp),
        pytest.param("redis", marks=pytest.mark.redis),
    ],
)
def stack(request: pytest.FixtureRequest, browser: Any) -> Iterator[Stack]:
    # The availability check of the amqp_url / redis_url fixtures (skip, or fail with CI=true),
    # called directly: those fixtures are function-scoped and this one serves the module.
    kind = request.param
    require_broker(kind)
    s = Stack(kind, AMQP_URL if kind == "amqp" else REDIS_URL)
    try:
        s.start_server()
        yield s
    finally:
        s.close()


@pytest.fixture
def page(browser: Any, stack: Stack) -> Iterator[Any]:
    context = browser.new_context(
        base_url=stack.base,
        http_credentials={"username": stack.user, "password": stack.password},
        viewport={"width": 1400, "height": 850},
    )
    context.set_default_timeout(LIVE)
    pg = context.new_page()
    pg.on("dialog", lambda dialog: dialog.accept())  # the actions' confirm()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield pg
    finally:
        context.close()
    assert not errors, f"script errors in the page: {errors}"


def _open(page: Any, path: str) -> None:
    """Open *path*, wait until its live stream is connected, and mark the window."""
    from playwright.sync_api import expect

    page.goto(path)
    expect(page.get_by_test_id("live-state")).to_have_text("live")
    page.evaluate(f"window.{MARK} = true")


def _not_reloaded(page: Any) -> None:
    assert page.evaluate(f"window.{MARK}") is True, "the page was reloaded"


def _row(page: Any, task_id: str) -> Any:
    return page.locator(f'[data-testid=task-row][data-task="{task_id}"]')


def _screenshot(page: Any, stack: Stack, name: str, height: int = 850) -> None:
    """Save the visible page as ``docs/img/dashboard-<name>.png`` (the footer is fixed, so a
    taller viewport rather than a full-page capture)."""
    if stack.kind != SCREENSHOT_BROKER:
        return
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": height})
    page.wait_for_function(
        "h => window.innerHeight === h && document.querySelector('footer').getBoundingClientRect()"
        ".bottom === h",
        arg=height,
    )
    try:
        page.screenshot(path=str(SCREENSHOTS / f"dashboard-{name}.png"))
    finally:
        page.set_viewport_size(size)


def _tasks_of(stack: Stack, **params: str) -> str:
    query = "&".join(f"{k}={quote(v)}" for k, v in {"worker": stack.node, **params}.items())
    return f"/tasks?{query}"


def test_worker_appears_without_reload(page: Any, stack: Stack) -> None:
    from playwright.sync_api import expect

    _open(page, "/")
    stack.start_worker()
    row = page.locator(f'[data-testid=worker-row][data-worker="{stack.node}"]')
    try:
        expect(row).to_have_attribute("data-status", "online", timeout=LIVE)
    except AssertionError:
        raise AssertionError(f"worker not shown online; worker:\n{stack.worker.output()}") from None
    expect(row.get_by_test_id("worker-status")).to_have_text("online")
    expect(row.get_by_test_id("worker-software")).to_contain_text("py-celery")
    _not_reloaded(page)


def test_task_states_appear_without_reload(page: Any, stack: Stack) -> None:
    from playwright.sync_api import expect

    stack.start_worker()
    _open(page, _tasks_of(stack))
    ok = stack.send("interop.add", 2, 3)
    bad = stack.send("interop.boom", 7)
    expect(_row(page, ok)).to_have_attribute("data-state", "SUCCESS", timeout=LIVE)
    expect(_row(page, ok).get_by_test_id("task-state")).to_have_text("SUCCESS")
    expect(_row(page, ok).get_by_test_id("task-result")).to_have_text("5")
    expect(_row(page, bad)).to_have_attribute("data-state", "FAILURE", timeout=LIVE)
    expect(_row(page, bad).get_by_test_id("task-result")).to_contain_text("bad value 7")
    _not_reloaded(page)

    # The workers page counts them (also live), and its totals link to filtered lists.
    _open(page, "/")
    row = page.locator(f'[data-testid=worker-row][data-worker="{stack.node}"]')
    expect(row.get_by_test_id("worker-failed")).not_to_have_text("0")
    expect(row.get_by_test_id("worker-processed")).not_to_have_text("0")  # next heartbeat
    _screenshot(page, stack, "workers")
    row.get_by_test_id("worker-failed").click()
    expect(page).to_have_url(f"{stack.base}{_tasks_of(stack, state='FAILURE')}")
    expect(_row(page, bad)).to_be_visible()
    expect(_row(page, ok)).to_have_count(0)


def test_filters_and_search(page: Any, stack: Stack) -> None:
    from playwright.sync_api import expect

    stack.start_worker()
    tag = uuid.uuid4().hex[:10]
    _open(page, _tasks_of(stack))
    a = stack.send("interop.add", f"{tag}alpha", "1")
    b = stack.send("interop.add", f"{tag}beta", "2")
    c = stack.send("interop.boom", f"{tag}gamma")
    expect(_row(page, a)).to_have_attribute("data-state", "SUCCESS", timeout=LIVE)
    expect(_row(page, b)).to_have_attribute("data-state", "SUCCESS", timeout=LIVE)
    expect(_row(page, c)).to_have_attribute("data-state", "FAILURE", timeout=LIVE)
    _not_reloaded(page)
    rows = page.get_by_test_id("task-row")

    # State filter (the form keeps the worker filter).
    page.get_by_test_id("filter-state").select_option("FAILURE")
    page.get_by_test_id("filter-apply").click()
    expect(page).to_have_url(re.compile(r"[?&]state=FAILURE"))
    expect(_row(page, c)).to_be_visible()
    expect(_row(page, a)).to_have_count(0)
    for state in rows.evaluate_all("rs => rs.map(r => r.dataset.state)"):
        assert state == "FAILURE"

    # Name filter.
    page.get_by_test_id("filter-state").select_option("")
    page.get_by_test_id("filter-name").select_option("interop.add")
    page.get_by_test_id("filter-apply").click()
    expect(page).to_have_url(re.compile(r"[?&]name=interop.add"))
    assert "state=FAILURE" not in page.url
    expect(_row(page, a)).to_be_visible()
    expect(_row(page, c)).to_have_count(0)
    for name in rows.get_by_test_id("task-name").all_inner_texts():
        assert name == "interop.add"

    # Search, with negation; the URL keeps it.
    page.get_by_test_id("filter-name").select_option("")
    search = page.get_by_test_id("filter-search")
    search.fill(tag)
    page.get_by_test_id("filter-apply").click()
    expect(rows).to_have_count(3)
    expect(page.get_by_test_id("tasks-summary")).to_contain_text("3 matching")
    search.fill(f"{tag} -{tag}beta")
    page.get_by_test_id("filter-apply").click()
    expect(rows).to_have_count(2)
    expect(_row(page, b)).to_have_count(0)
    expect(_row(page, a)).to_be_visible()
    expect(_row(page, c)).to_be_visible()
    assert "search=" in page.url
    search.fill(f"{tag} -exception:bad")
    page.get_by_test_id("filter-apply").click()
    expect(rows).to_have_count(2)
    expect(_row(page, c)).to_have_count(0)
    search.fill(f"args:{tag}gamma")
    page.get_by_test_id("filter-apply").click()
    expect(rows).to_have_count(1)
    expect(_row(page, c)).to_be_visible()

    page.get_by_test_id("filter-reset").click()
    expect(page).to_have_url(f"{stack.base}/tasks")
    expect(page.get_by_test_id("filter-search")).to_have_value("")


def test_task_detail(page: Any, stack: Stack) -> None:
    from playwright.sync_api import expect

    stack.start_worker()
    _open(page, _tasks_of(stack))
    bad = stack.send("interop.boom", {"user": "ada", "retry": False})
    row = _row(page, bad)
    expect(row).to_have_attribute("data-state", "FAILURE", timeout=LIVE)
    row.get_by_test_id("task-link").click()

    expect(page).to_have_url(f"{stack.base}/task/{bad}")
    expect(page.get_by_test_id("task-uuid")).to_have_text(bad)
    expect(page.get_by_test_id("task-name")).to_have_text("interop.boom")
    expect(page.get_by_test_id("task-state")).to_have_text("FAILURE")
    expect(page.get_by_test_id("field-worker")).to_have_text(stack.node)
    expect(page.get_by_test_id("field-args")).to_contain_text("'user': 'ada'")
    expect(page.get_by_test_id("field-exception")).to_contain_text("bad value")
    expect(page.get_by_test_id("task-traceback")).to_contain_text("ValueError")
    timeline = page.get_by_test_id("task-timeline")
    for event in ("task-received", "task-started", "task-failed"):
        expect(timeline.locator(f'[data-event="{event}"]')).to_have_count(1)
    expect(page.get_by_test_id("task-actions")).to_have_count(0)  # finished: no revoke
    _screenshot(page, stack, "task", height=1060)

    # The worker's page, with its remote-control replies.
    page.get_by_test_id("field-worker").get_by_role("link").click()
    expect(page.get_by_test_id("worker-name")).to_contain_text(stack.node)
    expect(page.get_by_test_id("worker-registered")).to_contain_text("interop.hold")
    expect(page.get_by_test_id("worker-pool")).to_contain_text("max-concurrency")
    _screenshot(page, stack, "worker")

    # The broker page: the queue the worker consumes, measured on its broker.
    page.get_by_test_id("nav-broker").click()
    queue_row = page.locator(f'[data-testid=queue-row][data-queue="{stack.worker.queue}"]')
    expect(queue_row).to_be_visible(timeout=LIVE)
    expect(queue_row.get_by_test_id("queue-messages")).to_have_text("0")
    if stack.kind == "amqp":
        expect(queue_row.get_by_test_id("queue-consumers")).to_have_text("1")
    _screenshot(page, stack, "broker")


def test_revoke_running_task(page: Any, stack: Stack) -> None:
    from playwright.sync_api import expect

    stack.start_worker()
    _open(page, _tasks_of(stack))
    task_id = stack.send("interop.slow", 60)
    row = _row(page, task_id)
    expect(row).to_have_attribute("data-state", "STARTED", timeout=LIVE)
    row.get_by_test_id("task-link").click()

    expect(page.get_by_test_id("task-state")).to_have_text("STARTED")
    page.evaluate(f"window.{MARK} = true")
    page.get_by_test_id("terminate-signal").select_option("SIGTERM")
    page.get_by_test_id("terminate").click()  # confirm() is accepted
    result = page.get_by_test_id("action-result")
    expect(result).to_contain_text(f"Revoked '{task_id}'")
    expect(result).to_contain_text(f"{stack.node}: OK")
    expect(page.get_by_test_id("task-state")).to_have_text("REVOKED", timeout=LIVE)
    expect(
        page.get_by_test_id("task-timeline").locator('[data-event="task-revoked"]')
    ).to_have_count(1)
    expect(page.get_by_test_id("task-actions")).to_have_count(0)
    _not_reloaded(page)


def test_hostile_content_is_escaped(page: Any, stack: Stack) -> None:
    from playwright.sync_api import expect

    stack.start_worker()
    script = "<script>window.__pwned=1</script>"
    img = "<img src=x onerror=window.__pwned=2>"
    _open(page, _tasks_of(stack))
    hostile = stack.send("interop.add", script, img)
    huge_arg = "<b>" + "A" * 60_000 + "</b>"
    # Celery cuts argsrepr to 1 KiB by default: give the whole repr so the event carries it
    # (argsrepr travels in the message headers, which must fit in one AMQP frame: 128 KiB).
    huge = stack.send("interop.add", huge_arg, "!", argsrepr=repr((huge_arg, "!")))
    expect(_row(page, hostile)).to_have_attribute("data-state", "SUCCESS", timeout=LIVE)
    expect(_row(page, huge)).to_have_attribute("data-state", "SUCCESS", timeout=LIVE)
    _not_reloaded(page)

    live = page.get_by_test_id("live")
    expect(_row(page, hostile).get_by_test_id("task-args")).to_contain_text(script)
    expect(_row(page, hostile).get_by_test_id("task-result")).to_contain_text(script + img)
    assert live.locator("script, img, b").count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert len(_row(page, huge).get_by_test_id("task-args").inner_text()) < 2_000  # shortened

    _row(page, hostile).get_by_test_id("task-link").click()
    expect(page.get_by_test_id("field-args")).to_contain_text(script)
    expect(page.get_by_test_id("field-kwargs")).to_have_text("{}")
    assert live.locator("script, img, b").count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"

    page.goto(f"/task/{huge}")
    expect(page.get_by_test_id("task-state")).to_have_text("SUCCESS")
    args = page.get_by_test_id("field-args").inner_text()
    assert len(args) > 60_000 and args.startswith("('<b>AAA")
    assert live.locator("script, img, b").count() == 0

    # Still usable: navigate and filter.
    page.get_by_test_id("nav-tasks").click()
    page.get_by_test_id("filter-search").fill("__pwned")
    page.get_by_test_id("filter-apply").click()
    expect(_row(page, hostile)).to_be_visible()
    expect(_row(page, huge)).to_have_count(0)
    expect(page.get_by_test_id("live-state")).to_have_text("live")
    assert page.evaluate("typeof window.__pwned") == "undefined"
    page.goto(_tasks_of(stack))
    expect(_row(page, huge)).to_be_visible()
    _screenshot(page, stack, "tasks")
