"""How an instrumented worker answers remote control: the command handlers and the pidbox loop.

Handlers use only the public API of :class:`~aiocelev.WorkerInstrument`; their
replies have the shape a Celery worker's have, so ``celery inspect``, Flower and
:class:`~aiocelev.Control` read them alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio

from ._backoff import Backoff
from ._control import ControlRequest
from ._exceptions import AiocelevError, BrokerError, ClosedError
from .brokers._control import ControlSubscription, ControlTransport

if TYPE_CHECKING:
    from ._worker import WorkerInstrument

__all__ = ["DEFAULT_HANDLERS", "ControlHandler", "handle_request", "serve_control"]

logger = logging.getLogger("aiocelev.worker")

#: A control command handler: ``await handler(worker, **arguments)`` returns the reply payload.
ControlHandler = Callable[..., Awaitable[Any]]


def _ok(value: Any) -> dict[str, Any]:
    return {"ok": value}


def _id_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value]
    return [str(value)]


async def ping(worker: WorkerInstrument, **_: Any) -> Any:
    return _ok("pong")


async def enable_events(worker: WorkerInstrument, **_: Any) -> Any:
    groups = worker.dispatcher.groups
    if groups is not None and "task" not in groups:
        groups.add("task")
        logger.info("%s: task events enabled by remote control", worker.hostname)
        return _ok("task events enabled")
    return _ok("task events already enabled")


async def disable_events(worker: WorkerInstrument, **_: Any) -> Any:
    dispatcher = worker.dispatcher
    if dispatcher.groups is None:
        # Unrestricted: keep every group but "task" that this node sends itself.
        dispatcher.groups = {"worker"}
    elif "task" in dispatcher.groups:
        dispatcher.groups.discard("task")
    else:
        return _ok("task events already disabled")
    logger.info("%s: task events disabled by remote control", worker.hostname)
    return _ok("task events disabled")


async def heartbeat(worker: WorkerInstrument, **_: Any) -> Any:
    await worker.heartbeat()
    return None


def _rusage() -> dict[str, Any] | str:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return "N/A"
    usage = resource.getrusage(resource.RUSAGE_SELF)
    names = (
        "utime", "stime", "maxrss", "ixrss", "idrss", "isrss", "minflt", "majflt",
        "nswap", "inblock", "oublock", "msgsnd", "msgrcv", "nsignals", "nvcsw", "nivcsw",
    )  # fmt: skip
    return {name: getattr(usage, f"ru_{name}") for name in names}


async def stats(worker: WorkerInstrument, **_: Any) -> Any:
    # The shape of a Celery worker's ``stats`` reply, with what an asyncio node knows.
    return {
        "total": dict(worker.totals),
        "pid": worker.dispatcher.pid,
        "clock": str(worker.dispatcher.clock.value),
        "uptime": round(worker.uptime),
        "pool": {"implementation": "asyncio", "running": worker.active},
        "broker": {"url": worker.dispatcher.broker.url},
        "prefetch_count": None,
        "rusage": _rusage(),
        "sw_ident": worker.sw_ident,
        "sw_ver": worker.sw_ver,
    }


async def active(worker: WorkerInstrument, **_: Any) -> Any:
    return [scope.info() for scope in worker.running_tasks]


async def registered(worker: WorkerInstrument, **_: Any) -> Any:
    return sorted(worker.registered_tasks)


async def revoked(worker: WorkerInstrument, **_: Any) -> Any:
    return sorted(worker.revoked_ids)


async def query_task(worker: WorkerInstrument, ids: Any = None, **_: Any) -> Any:
    wanted = set(_id_list(ids))
    return {
        scope.uuid: ["active", scope.info()]
        for scope in worker.running_tasks
        if scope.uuid in wanted
    }


async def revoke(
    worker: WorkerInstrument,
    task_id: Any = None,
    terminate: bool = False,
    signal: str | int | None = None,
    **_: Any,
) -> Any:
    ids = _id_list(task_id)
    terminated = await worker.revoke(ids, terminate=bool(terminate), signal=signal)
    if terminate:
        if not terminated:
            return _ok("terminate: tasks unknown")
        return _ok("terminate: " + ", ".join(terminated))
    return _ok(f"tasks {', '.join(ids)} flagged as revoked")


async def clock(worker: WorkerInstrument, **_: Any) -> Any:
    return {"clock": worker.dispatcher.clock.value}


async def shutdown(worker: WorkerInstrument, **_: Any) -> Any:
    logger.warning("%s: got shutdown from remote", worker.hostname)
    worker.request_shutdown()
    return None


async def _empty_list(worker: WorkerInstrument, **_: Any) -> Any:
    return []


async def _empty_dict(worker: WorkerInstrument, **_: Any) -> Any:
    return {}


#: The commands an instrumented node answers by default.
DEFAULT_HANDLERS: Mapping[str, ControlHandler] = {
    "ping": ping,
    "enable_events": enable_events,
    "disable_events": disable_events,
    "heartbeat": heartbeat,
    "revoke": revoke,
    "shutdown": shutdown,
    # Read-only inspection (``celery inspect ...``, Flower's worker page).
    "stats": stats,
    "active": active,
    "registered": registered,
    "revoked": revoked,
    "query_task": query_task,
    "clock": clock,
    "reserved": _empty_list,
    "scheduled": _empty_list,
    "active_queues": _empty_list,
    "conf": _empty_dict,
}

#: Commands a Celery worker does not answer (it stops, or fires and forgets).
_NO_REPLY = frozenset({"shutdown"})


async def handle_request(
    worker: WorkerInstrument,
    handlers: Mapping[str, ControlHandler],
    transport: ControlTransport,
    request: ControlRequest,
) -> None:
    """Run the handler for *request* if it is for this node, and reply when asked."""
    if not request.addressed_to(worker.hostname):
        return
    if request.expired(time.time()):
        logger.debug("%s: ignoring expired command %r", worker.hostname, request.method)
        return
    handler = handlers.get(request.method)
    if handler is None:
        # Not a command this node implements: stay silent (the caller's
        # timeout covers us) rather than send an error Flower cannot render.
        logger.debug("%s: ignoring remote-control command %r", worker.hostname, request.method)
        return
    try:
        payload = await handler(worker, **request.arguments)
    except AiocelevError as exc:
        payload = {"error": f"{type(exc).__name__}: {exc}"}
    except TypeError as exc:
        payload = {"error": f"bad arguments for {request.method!r}: {exc}"}
    except Exception as exc:
        logger.exception("%s: remote-control command %r failed", worker.hostname, request.method)
        payload = {"error": repr(exc)}
    if not request.wants_reply or request.method in _NO_REPLY:
        return
    try:
        await transport.reply(request, worker.hostname, payload)
    except AiocelevError as exc:
        logger.warning("%s: reply to %r not sent: %s", worker.hostname, request.method, exc)


async def serve_control(
    worker: WorkerInstrument,
    handlers: Mapping[str, ControlHandler],
    transport: ControlTransport,
    subscription: ControlSubscription | None,
    live: anyio.Event,
    shield_timeout: float,
) -> None:
    """Consume the node's pidbox and answer requests until cancelled; resubscribe after losses."""
    backoff = Backoff(initial=0.5, maximum=10.0)
    while True:
        if subscription is None:
            try:
                subscription = await transport.consume_control(worker.hostname)
            except ClosedError:
                return
            except BrokerError as exc:
                delay = backoff.next_delay()
                logger.debug(
                    "%s: pidbox unavailable (%s); retry in %.1fs", worker.hostname, exc, delay
                )
                await anyio.sleep(delay)
                continue
            backoff.reset()
            if not live.is_set():
                logger.info("%s: answering remote control", worker.hostname)
                live.set()
        try:
            async for request in subscription:
                await handle_request(worker, handlers, transport, request)
            return  # the subscription was closed under us (broker closed)
        except ClosedError:
            return
        except BrokerError as exc:
            logger.warning("%s: pidbox consumer failed (%s); resubscribing", worker.hostname, exc)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(shield_timeout):
                try:
                    await subscription.aclose()
                except AiocelevError as exc:  # pragma: no cover - defensive
                    logger.debug("ignoring error closing the pidbox consumer: %s", exc)
        subscription = None
        await anyio.sleep(backoff.next_delay())
