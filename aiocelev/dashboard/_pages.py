"""Server-rendered pages: workers, worker detail, tasks, task detail.

Every page has a live region (``#live``): a request with the
``X-Aiocelev-Fragment: 1`` header gets only that region, which the page's
script fetches again when the SSE stream announces a new version.  Templates
are autoescaped: every value from events is text, never markup.
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aiocelev import TaskState, WorkerState
from aiocelev.store import QueryError as StoreQueryError, StoreError

from ._api import hub_of
from ._hub import Hub
from ._query import PAGE_SORT_KEYS, QueryError, TaskQuery
from ._responses import Html
from ._urls import mask

logger = logging.getLogger("aiocelev.dashboard")

#: Final task states (``TaskState.ready``).
READY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})

__all__ = ["page_routes"]

FRAGMENT_HEADER = "x-aiocelev-fragment"
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
#: Characters of args/kwargs/result shown in a table cell (the detail page shows all).
CELL_CHARS = 120
#: Security headers of every page: no inline script, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
TASK_STATES = (
    "PENDING",
    "RECEIVED",
    "STARTED",
    "SUCCESS",
    "FAILURE",
    "RETRY",
    "REVOKED",
    "REJECTED",
)
#: (field, event) pairs of a task's timeline, in the order they normally happen.
TIMELINE = (
    ("sent", "task-sent"),
    ("received", "task-received"),
    ("started", "task-started"),
    ("retried", "task-retried"),
    ("rejected", "task-rejected"),
    ("revoked", "task-revoked"),
    ("failed", "task-failed"),
    ("succeeded", "task-succeeded"),
)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else repr(value)


def _ts(value: Any) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return ""
    try:
        dt = datetime.fromtimestamp(value, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return ""
    return dt.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _clock(value: Any) -> str:
    """The time of day of an epoch value (table cells; the full date is in ``_ts``)."""
    full = _ts(value)
    return full[11:23] if full else ""


def _age(value: Any) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return ""
    delta = max(time.time() - value, 0.0)
    if delta < 60:
        return f"{delta:.1f} s ago"
    if delta < 3600:
        return f"{delta / 60:.0f} min ago"
    return f"{delta / 3600:.1f} h ago"


def _short(value: Any, limit: int = CELL_CHARS) -> str:
    text = _text(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _seg(value: Any) -> str:
    """A path segment (hostnames and ids may hold anything)."""
    return quote(_text(value), safe="@", errors="replace")


def _qs(params: dict[str, Any]) -> str:
    clean = {k: _text(v) for k, v in params.items() if v not in (None, "")}
    return urlencode({k: v.encode("utf-8", "replace") for k, v in clean.items()})


def _pretty(value: Any) -> str:
    try:
        return json.dumps(value, indent=2, sort_keys=True, default=repr, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, int | float) and math.isfinite(value):
        return f"{value:.{digits}f}"
    return ""


_env = Environment(
    loader=PackageLoader("aiocelev.dashboard", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(
    ts=_ts, clock=_clock, age=_age, short=_short, seg=_seg, qs=_qs, pretty=_pretty, num=_num
)
_env.globals["TASK_STATES"] = TASK_STATES


def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    """Render *template* (or only its live region, for the page script)."""
    hub = hub_of(request)
    fragment = request.headers.get(FRAGMENT_HEADER) == "1"
    config = request.app.state.config
    html = _env.get_template(template).render(
        base=request.scope.get("root_path", ""),
        fragment=fragment,
        hub=hub,
        feeds=hub.feeds,
        connected=hub.connected,
        all_connected=hub.all_connected,
        demo=config.demo,
        read_only=config.read_only,
        version=hub.version,
        path=request.url.path,
        now=time.time(),
        **context,
    )
    return Html(html, status_code=status, headers=SECURITY_HEADERS)


# -- workers ------------------------------------------------------------------------


def _worker_row(hub: Hub, w: WorkerState) -> dict[str, Any]:
    counts = w.event_counts
    return {
        "hostname": w.hostname,
        "status": hub.worker_status(w.hostname),
        "heartbeat": w.last_heartbeat or w.last_seen,
        "active": w.active,
        "processed": w.processed,
        "succeeded": counts.get("task-succeeded", 0),
        "failed": counts.get("task-failed", 0),
        "retried": counts.get("task-retried", 0),
        "loadavg": w.loadavg,
        "software": " ".join(_text(x) for x in (w.sw_ident, w.sw_ver, w.sw_sys) if x),
        "broker": hub.broker_of(w.hostname),
        "pid": w.pid,
        "freq": w.freq,
    }


async def workers_page(request: Request) -> Response:
    """The workers table, with totals linking to filtered task lists."""
    hub = hub_of(request)
    rows = [_worker_row(hub, w) for w in sorted(hub.state.workers.values(), key=_by_host)]
    totals = {
        key: sum(r[key] or 0 for r in rows)
        for key in ("active", "processed", "succeeded", "failed", "retried")
    }
    online = sum(1 for r in rows if r["status"] == "online")
    return render(request, "workers.html", rows=rows, totals=totals, online=online, page="workers")


def _by_host(w: WorkerState) -> str:
    return w.hostname


async def worker_page(request: Request) -> Response:
    """One worker: its events' fields and its remote-control inspect replies."""
    hub = hub_of(request)
    hostname = request.path_params["hostname"]
    worker = hub.state.worker(hostname)
    fragment = request.headers.get(FRAGMENT_HEADER) == "1"
    if not fragment and request.query_params.get("inspect", "1") != "0":
        await hub.inspect([hostname])
    info = hub.inspected.get(hostname)
    if worker is None and info is None:
        return render(request, "missing.html", status=404, what="worker", name=hostname)
    row = _worker_row(hub, worker) if worker is not None else None
    recent = hub.state.tasks_by_worker(hostname, limit=10) if worker is not None else []
    return render(
        request,
        "worker.html",
        hostname=hostname,
        w=worker,
        row=row,
        info=info or {},
        recent=recent,
        page="workers",
    )


# -- tasks --------------------------------------------------------------------------

_FILTER_KEYS = (
    "state",
    "name",
    "worker",
    "broker",
    "received_start",
    "received_end",
    "started_start",
    "started_end",
    "search",
    "sort_by",
    "limit",
)


class StoredTask(SimpleNamespace):
    """A task read from the store, with the attributes the templates use of a ``TaskState``."""

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__(**fields)
        self.fields = {k: v for k, v in fields.items() if k != "broker"}
        self.ready = fields.get("state") in READY_STATES
        self.children = list(fields.get("children") or [])

    def to_dict(self) -> dict[str, Any]:
        """The stored fields, shaped as :meth:`TaskState.to_dict`."""
        return dict(self.fields)


async def _history_page(request: Request, hub: Hub, params: dict[str, str]) -> Response:
    """``/tasks?source=history``: the store's tasks, newest first, paged by cursor."""
    assert hub.store is not None
    limit = PAGE_SIZE
    kept = {k: params[k] for k in _FILTER_KEYS if params.get(k) and k != "sort_by"}
    wanted = {k: v for k, v in kept.items() if k != "limit"}
    error = None
    tasks: list[StoredTask] = []
    total = 0
    next_cursor = None
    try:
        if params.get("limit"):
            limit = max(1, min(int(params["limit"]), MAX_PAGE_SIZE))
        page = await hub.store.query(wanted, cursor=params.get("cursor") or None, limit=limit)
        total = await hub.store.count(wanted)
        tasks = [StoredTask(d) for d in page.tasks]
        next_cursor = page.cursor
    except (ValueError, StoreQueryError) as exc:
        error = str(exc)
    except StoreError as exc:
        error = f"the store cannot be read: {mask(str(exc))}"
    return render(
        request,
        "tasks.html",
        tasks=tasks,
        broker_of=lambda t: getattr(t, "broker", None),
        total=total,
        offset=0,
        limit=limit,
        kept=dict(kept, source="history"),
        params=params,
        prev_offset=None,
        next_offset=None,
        history=True,
        first_page=not params.get("cursor"),
        next_cursor=next_cursor,
        static_page=True,
        error=error,
        names=sorted(hub.state.task_names()),
        workers=sorted(hub.state.workers),
        sort_by="",
        page="tasks",
        status=400 if error else 200,
    )


async def tasks_page(request: Request) -> Response:
    """Tasks with server-side filters, search, sort and paging; the URL keeps them.

    With a store, ``source=history`` searches the whole stored history instead of memory.
    """
    hub = hub_of(request)
    params = dict(request.query_params)
    if params.get("source") == "history" and hub.store is not None:
        return await _history_page(request, hub, params)
    error = None
    try:
        query = TaskQuery.from_params(
            params, sort_keys=PAGE_SORT_KEYS, default_limit=PAGE_SIZE, max_limit=MAX_PAGE_SIZE
        )
    except QueryError as exc:
        error = str(exc)
        query = TaskQuery(limit=PAGE_SIZE)

    def broker_of(task: TaskState) -> str | None:
        return hub.task_broker(task.worker, task.client)

    total, page_tasks = query.run(hub.state, broker_of)
    limit = query.limit or PAGE_SIZE
    kept = {k: params[k] for k in _FILTER_KEYS if params.get(k)}
    prev_offset = query.offset - limit if query.offset > 0 else None
    next_offset = query.offset + limit if query.offset + limit < total else None
    return render(
        request,
        "tasks.html",
        tasks=page_tasks,
        broker_of=broker_of,
        total=total,
        offset=query.offset,
        limit=limit,
        kept=kept,
        params=params,
        prev_offset=max(prev_offset, 0) if prev_offset is not None else None,
        next_offset=next_offset,
        error=error,
        names=sorted(hub.state.task_names()),
        workers=sorted(hub.state.workers),
        sort_by=query.sort_by or "",
        page="tasks",
        status=400 if error else 200,
    )


async def task_page(request: Request) -> Response:
    """One task: every field, its timeline, traceback, family and retries."""
    hub = hub_of(request)
    task_id = request.path_params["task_id"]
    task: TaskState | StoredTask | None = hub.state.task(task_id)
    stored_broker = None
    if task is None and hub.store is not None:
        try:
            found = await hub.store.get(task_id)
        except StoreError as exc:
            logger.warning("dashboard: reading task %s from the store: %s", task_id, exc)
            found = None
        if found is not None:
            task = StoredTask(found)
            stored_broker = found.get("broker")
    if task is None:
        return render(request, "missing.html", status=404, what="task", name=task_id)
    timeline = sorted(
        (
            (getattr(task, attr), event)
            for attr, event in TIMELINE
            if isinstance(getattr(task, attr), int | float)
        ),
        key=lambda pair: pair[0],
    )
    first = timeline[0][0] if timeline else None
    fields = task.to_dict()
    return render(
        request,
        "task.html",
        t=task,
        fields=fields,
        timeline=timeline,
        first=first,
        children=task.children,
        known=hub.state.tasks,
        broker=stored_broker or hub.task_broker(task.worker, task.client),
        from_store=isinstance(task, StoredTask),
        page="tasks",
    )


# -- broker -------------------------------------------------------------------------


async def broker_page(request: Request) -> Response:
    """Queue depths and consumers on every broker (see ``_queues``)."""
    board = request.app.state.queues
    rows, errors = await board.rows()
    return render(
        request,
        "broker.html",
        rows=rows,
        errors=errors,
        broker_api=board.broker_api is not None,
        page="broker",
    )


async def index(request: Request) -> Response:
    """``/`` is the workers page."""
    return await workers_page(request)


def page_routes() -> list[Route]:
    """Every HTML route."""
    return [
        Route("/", index),
        Route("/workers", workers_page),
        Route("/worker/{hostname:path}", worker_page),
        Route("/tasks", tasks_page),
        Route("/task/{task_id:path}", task_page),
        Route("/broker", broker_page),
    ]
