"""The JSON API: Flower's read endpoints and actions, ``/healthz`` and ``/metrics``.

Paths, parameters and response shapes follow Flower 2.2 (``flower/api/``);
answers may carry more keys than Flower's (``broker``, ``replies``), never
fewer.  Actions go through :class:`aiocelev.Control`; read-only mode and
authentication are enforced by :mod:`._security` before a handler runs.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aiocelev import AiocelevError, ControlReply, TaskState

from ._hub import Hub
from ._query import QueryError, TaskQuery, flower_task
from ._responses import Json
from ._urls import mask

__all__ = ["api_routes"]

_TRUE = frozenset({"1", "true", "yes", "on", "True"})


def hub_of(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


async def _params(request: Request) -> dict[str, str]:
    """Query parameters, plus the fields of a form-encoded or JSON POST body (Flower
    reads both; parsed here so no multipart library is needed)."""
    params = dict(request.query_params)
    if request.method == "POST":
        ctype = request.headers.get("content-type", "")
        body = await request.body()
        fields: dict[str, Any] = {}
        if ctype.startswith("application/x-www-form-urlencoded"):
            text = body.decode("utf-8", "replace")
            fields = {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}
        elif ctype.startswith("application/json") and body:
            try:
                decoded = json.loads(body)
            except ValueError:
                decoded = None
            if isinstance(decoded, dict):
                fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in decoded.items()}
        for key, value in fields.items():
            params.setdefault(key, value)
    return params


def _error(status: int, message: str) -> Json:
    return Json({"error": message}, status_code=status)


def _replies(replies: list[ControlReply]) -> list[dict[str, Any]]:
    return [{"node": r.node, "ok": r.ok, "payload": r.payload, "error": r.error} for r in replies]


# -- reads -----------------------------------------------------------------------


async def list_workers(request: Request) -> Response:
    """``GET /api/workers`` (``refresh``, ``workername``, ``status``), as Flower."""
    hub = hub_of(request)
    params = request.query_params
    workername = params.get("workername") or None
    if params.get("status", "") in _TRUE:
        return Json({name: w.alive for name, w in hub.state.workers.items()})
    if params.get("refresh", "") in _TRUE:
        await hub.inspect([workername] if workername else None)
    known = set(hub.state.workers) | set(hub.inspected)
    if workername is not None:
        if workername not in known:
            return _error(404, f"Unknown worker '{workername}'")
        return Json({workername: _worker_entry(hub, workername)})
    return Json({name: _worker_entry(hub, name) for name in sorted(known)})


def _worker_entry(hub: Hub, hostname: str) -> dict[str, Any]:
    entry = dict(hub.inspected.get(hostname, {}))
    entry["broker"] = hub.broker_of(hostname)
    return entry


def _task_broker(hub: Hub) -> Any:
    def broker_of(task: TaskState) -> str | None:
        return hub.task_broker(task.worker, task.client)

    return broker_of


async def list_tasks(request: Request) -> Response:
    """``GET /api/tasks`` with Flower's ``limit``, ``offset``, ``sort_by``, ``workername``,
    ``taskname``, ``state``, ``received_start``, ``received_end``, ``search``."""
    hub = hub_of(request)
    try:
        query = TaskQuery.from_params(request.query_params)
    except QueryError as exc:
        return _error(400, str(exc))
    broker_of = _task_broker(hub)
    _, page = query.run(hub.state, broker_of)
    return Json({t.uuid: flower_task(t, broker_of(t)) for t in page})


async def task_info(request: Request) -> Response:
    """``GET /api/task/info/<id>``."""
    hub = hub_of(request)
    task_id = request.path_params["task_id"]
    task = hub.state.task(task_id)
    if task is None:
        return _error(404, f"Unknown task '{task_id}'")
    return Json(flower_task(task, hub.task_broker(task.worker, task.client)))


async def task_types(request: Request) -> Response:
    """``GET /api/task/types``: ``{"task-types": [...]}``."""
    return Json({"task-types": sorted(hub_of(request).state.task_names())})


async def healthz(request: Request) -> Response:
    """200 while at least one broker is connected, else 503; the brokers' status either way."""
    hub = hub_of(request)
    body = {
        "status": "ok" if hub.connected else "unavailable",
        "brokers": [feed.to_dict() for feed in hub.feeds],
    }
    return Json(body, status_code=200 if hub.connected else 503)


async def metrics(request: Request) -> Response:
    """Prometheus exposition of Flower's series (offline workers purged first)."""
    hub = hub_of(request)
    hub.purge_offline_metrics()
    return Response(generate_latest(hub.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# -- actions ---------------------------------------------------------------------


async def _send(
    hub: Hub, hostname: str | None, method: str, *args: Any, **kw: Any
) -> list[ControlReply] | Json:
    try:
        return await hub.command(hostname, method, *args, **kw)
    except AiocelevError as exc:
        return _error(503, f"remote control failed: {mask(str(exc))}")


def _first_ok(replies: list[ControlReply], node: str | None) -> ControlReply | None:
    for reply in replies:
        if (node is None or reply.node == node) and reply.ok:
            return reply
    return None


def _failure(replies: list[ControlReply], what: str) -> Json:
    reasons = [str(r.error) for r in replies if not r.ok] or ["no reply"]
    return Json({"error": f"{what}: {reasons[0]}", "replies": _replies(replies)}, status_code=403)


def _known_worker(hub: Hub, name: str) -> bool:
    return name in hub.state.workers


async def revoke(request: Request) -> Response:
    """``POST /api/task/revoke/<id>?terminate=&signal=``."""
    hub = hub_of(request)
    task_id = request.path_params["task_id"]
    params = await _params(request)
    terminate = params.get("terminate", "") in _TRUE
    signal = params.get("signal") or "SIGTERM"
    task = hub.state.task(task_id)
    replies = (
        await _send(hub, None, "revoke", task_id, terminate=terminate, signal=signal)
        if task is None
        else await _send_to_task(hub, task, terminate, signal)
    )
    if isinstance(replies, Json):
        return replies
    return Json({"message": f"Revoked '{task_id}'", "replies": _replies(replies)})


async def _send_to_task(
    hub: Hub, task: TaskState, terminate: bool, signal: str
) -> list[ControlReply] | Json:
    # Revoke is broadcast (every worker must know the id), on the broker the task is on.
    feed = hub.feed_of(task.worker) or hub.feed_of(task.client)
    controls = [feed.control] if feed is not None else [f.control for f in hub.feeds]
    replies: list[ControlReply] = []
    try:
        for control in controls:
            replies.extend(
                await control.revoke(
                    task.uuid, terminate=terminate, signal=signal, timeout=hub.inspect_timeout
                )
            )
    except AiocelevError as exc:
        return _error(503, f"remote control failed: {mask(str(exc))}")
    return replies


async def _task_limit(request: Request, kind: str) -> Response:
    hub = hub_of(request)
    taskname = request.path_params["taskname"]
    params = await _params(request)
    workername = params.get("workername")
    if not workername:
        return _error(400, "Missing argument workername")
    if not _known_worker(hub, workername):
        return _error(404, f"Unknown worker '{workername}'")
    if kind == "rate":
        ratelimit = params.get("ratelimit")
        if not ratelimit:
            return _error(400, "Missing argument ratelimit")
        replies = await _send(hub, workername, "rate_limit", taskname, ratelimit)
        what = "Failed to set rate limit"
    else:
        try:
            soft = float(params["soft"]) if params.get("soft") else None
            hard = float(params["hard"]) if params.get("hard") else None
        except ValueError:
            return _error(400, "soft and hard must be numbers")
        replies = await _send(hub, workername, "time_limit", taskname, soft=soft, hard=hard)
        what = "Failed to set timeouts"
    if isinstance(replies, Json):
        return replies
    ok = _first_ok(replies, workername)
    if ok is None:
        return _failure(replies, what)
    return Json({"message": ok.payload.get("ok", ok.payload), "replies": _replies(replies)})


async def rate_limit(request: Request) -> Response:
    """``POST /api/task/rate-limit/<taskname>`` (``ratelimit``, ``workername``)."""
    return await _task_limit(request, "rate")


async def time_limit(request: Request) -> Response:
    """``POST /api/task/timeout/<taskname>`` (``soft``, ``hard``, ``workername``)."""
    return await _task_limit(request, "time")


async def _pool(request: Request, grow: bool) -> Response:
    hub = hub_of(request)
    worker = request.path_params["worker"]
    if not _known_worker(hub, worker):
        return _error(404, f"Unknown worker '{worker}'")
    params = await _params(request)
    try:
        n = int(params.get("n") or 1)
    except ValueError:
        return _error(400, "n must be an integer")
    replies = await _send(hub, worker, "pool_grow" if grow else "pool_shrink", n)
    if isinstance(replies, Json):
        return replies
    verb = "Growing" if grow else "Shrinking"
    if _first_ok(replies, worker) is None:
        return _failure(replies, f"Failed to {'grow' if grow else 'shrink'} '{worker}' pool")
    return Json(
        {"message": f"{verb} '{worker}' worker's pool by {n}", "replies": _replies(replies)}
    )


async def pool_grow(request: Request) -> Response:
    """``POST /api/worker/pool/grow/<worker>?n=``."""
    return await _pool(request, True)


async def pool_shrink(request: Request) -> Response:
    """``POST /api/worker/pool/shrink/<worker>?n=``."""
    return await _pool(request, False)


async def autoscale(request: Request) -> Response:
    """``POST /api/worker/pool/autoscale/<worker>?min=&max=`` (workers started with ``--autoscale``)."""
    hub = hub_of(request)
    worker = request.path_params["worker"]
    if not _known_worker(hub, worker):
        return _error(404, f"Unknown worker '{worker}'")
    params = await _params(request)
    try:
        low, high = int(params.get("min") or 0), int(params.get("max") or 0)
    except ValueError:
        return _error(400, "min and max must be integers")
    if low < 0 or high < low:
        return _error(400, "need 0 <= min <= max")
    replies = await _send(hub, worker, "autoscale", high, low)
    if isinstance(replies, Json):
        return replies
    if _first_ok(replies, worker) is None:
        return _failure(replies, f"Failed to autoscale '{worker}' worker")
    return Json(
        {
            "message": f"Autoscaling '{worker}' worker (min={low}, max={high})",
            "replies": _replies(replies),
        }
    )


async def _consumer(request: Request, add: bool) -> Response:
    hub = hub_of(request)
    worker = request.path_params["worker"]
    if not _known_worker(hub, worker):
        return _error(404, f"Unknown worker '{worker}'")
    params = await _params(request)
    queue = params.get("queue")
    if not queue:
        return _error(400, "Missing argument queue")
    if add:
        replies = await _send(hub, worker, "add_consumer", queue)
    else:
        replies = await _send(hub, worker, "cancel_consumer", queue)
    if isinstance(replies, Json):
        return replies
    ok = _first_ok(replies, worker)
    if ok is None:
        verb = "add" if add else "cancel"
        return _failure(replies, f"Failed to {verb} '{queue}' consumer of '{worker}' worker")
    request.app.state.queues.forget()
    return Json({"message": ok.payload.get("ok", ok.payload), "replies": _replies(replies)})


async def add_consumer(request: Request) -> Response:
    """``POST /api/worker/queue/add-consumer/<worker>?queue=``."""
    return await _consumer(request, True)


async def cancel_consumer(request: Request) -> Response:
    """``POST /api/worker/queue/cancel-consumer/<worker>?queue=``."""
    return await _consumer(request, False)


async def shutdown(request: Request) -> Response:
    """``POST /api/worker/shutdown/<worker>`` (workers do not reply to it)."""
    hub = hub_of(request)
    worker = request.path_params["worker"]
    if not _known_worker(hub, worker):
        return _error(404, f"Unknown worker '{worker}'")
    replies = await _send(hub, worker, "shutdown", reply=False)
    if isinstance(replies, Json):
        return replies
    return Json({"message": "Shutting down!"})


async def queues_length(request: Request) -> Response:
    """``GET /api/queues/length``, as Flower: ``{"active_queues": [{"name", "messages"}]}``.

    Each entry also says which ``broker`` it is on and its ``consumers`` where known.
    """
    rows, errors = await request.app.state.queues.rows()
    queues = [
        {
            "name": r["name"],
            "messages": r["messages"],
            "consumers": r["consumers"],
            "broker": r["broker"],
        }
        for r in rows
    ]
    return Json({"active_queues": queues, "errors": errors})


def api_routes() -> list[Route]:
    """Every JSON route (paths relative to the app's root)."""
    return [
        Route("/api/workers", list_workers),
        Route("/api/tasks", list_tasks),
        Route("/api/task/types", task_types),
        Route("/api/task/info/{task_id:path}", task_info),
        Route("/api/task/revoke/{task_id:path}", revoke, methods=["POST"]),
        Route("/api/task/rate-limit/{taskname:path}", rate_limit, methods=["POST"]),
        Route("/api/task/timeout/{taskname:path}", time_limit, methods=["POST"]),
        Route("/api/worker/pool/grow/{worker:path}", pool_grow, methods=["POST"]),
        Route("/api/worker/pool/shrink/{worker:path}", pool_shrink, methods=["POST"]),
        Route("/api/worker/pool/autoscale/{worker:path}", autoscale, methods=["POST"]),
        Route("/api/worker/queue/add-consumer/{worker:path}", add_consumer, methods=["POST"]),
        Route("/api/worker/queue/cancel-consumer/{worker:path}", cancel_consumer, methods=["POST"]),
        Route("/api/worker/shutdown/{worker:path}", shutdown, methods=["POST"]),
        Route("/api/queues/length", queues_length),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
    ]
