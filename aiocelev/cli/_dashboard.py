"""``aiocelev dashboard``: the live web dashboard, HTTP API and Prometheus endpoint.

Serves :func:`aiocelev.dashboard.create_app` with uvicorn.  Needs the
``dashboard`` extra.  ``--demo`` runs on the in-process ``memory://`` broker
with the demo's simulated workers feeding it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any

import anyio

from .._url import mask_url
from ._common import (
    ENV_BROKER_URL,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    Context,
    diag,
    positive_float,
    positive_int,
)

__all__ = ["register", "run"]

#: Simulated workers and events/s of ``--demo``.
DEMO_WORKERS = 4
DEMO_RATE = 60.0


def register(subparsers: Any) -> None:
    """Add the ``dashboard`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "dashboard",
        help="live web dashboard, Flower-compatible HTTP API and /metrics",
        description=(
            "Serve a live web dashboard of the cluster (workers, tasks, task detail), "
            "Flower's read API under /api, Prometheus metrics with Flower's names at "
            "/metrics and /healthz. --broker may repeat: one view over every broker. "
            "--demo runs on memory:// with simulated workers."
        ),
    )
    parser.add_argument(
        "-b",
        "--broker",
        metavar="URL",
        action="append",
        default=[],
        help=f"broker URL; repeat for several brokers (default: ${ENV_BROKER_URL})",
    )
    parser.add_argument(
        "--address", default="127.0.0.1", help="address to bind (default: 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=5555, help="port (default: 5555)")
    parser.add_argument(
        "--url-prefix", default="", metavar="PATH", help="serve under this path (/flower)"
    )
    parser.add_argument("--read-only", action="store_true", help="disable every action")
    parser.add_argument(
        "--basic-auth",
        action="append",
        default=[],
        metavar="USER:PASS",
        help="require HTTP Basic auth; repeat for several users",
    )
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        help="accept 'Authorization: Bearer TOKEN' (default: $AIOCELEV_DASHBOARD_TOKEN)",
    )
    parser.add_argument(
        "--no-auth-for-actions",
        action="store_true",
        help="allow actions (revoke, shutdown...) without any configured authentication",
    )
    parser.add_argument(
        "--max-tasks", type=positive_int, default=10_000, help="tasks kept (default: 10000)"
    )
    parser.add_argument(
        "--inspect-timeout",
        type=positive_float,
        default=1.0,
        metavar="SECONDS",
        help="wait for workers' inspect replies (default: 1)",
    )
    parser.add_argument(
        "--purge-offline-workers",
        type=positive_float,
        metavar="SECONDS",
        help="drop the metrics of workers offline for longer than this",
    )
    parser.add_argument(
        "--broker-api",
        metavar="URL",
        default=None,
        help="RabbitMQ management API for the broker page (http://user:pass@host:15672/api/)",
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        default=None,
        help="task history: sqlite:///path.db or postgresql://... (restored at start, written live)",
    )
    parser.add_argument(
        "--demo", action="store_true", help="simulated workers on memory:// (demo data)"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log warnings (-v) or requests and debug messages (-vv) on stderr",
    )
    parser.set_defaults(func=run)


def _demo_simulation(workers: int, rate: float) -> Any:
    """``async fn(url, stop)`` running the demo's simulated workers."""

    async def simulation(url: str, stop: anyio.Event) -> None:
        from .._simulation import simulate_cluster

        async with simulate_cluster(url, workers=workers, rate=rate):
            await stop.wait()

    return simulation


async def run(args: argparse.Namespace, ctx: Context) -> int:
    """Run ``aiocelev dashboard``."""
    try:
        import uvicorn

        from ..dashboard import create_app
        from ..dashboard._gc import pace_gc
    except ImportError as exc:
        raise CommandError(
            f"the dashboard needs the 'dashboard' extra ({exc.name} is missing): "
            "pip install 'aiocelev[dashboard]'",
            EXIT_USAGE,
        ) from None
    brokers: list[str] = list(args.broker)
    if not brokers and not args.demo:
        env = os.environ.get(ENV_BROKER_URL)
        if not env:
            raise CommandError(
                "no broker: name one with --broker URL (repeatable), e.g. "
                "--broker amqp://localhost or --broker redis://localhost:6379/0, "
                f"or set ${ENV_BROKER_URL}; or try the simulated cluster with --demo",
                EXIT_USAGE,
            )
        brokers = [env]
    token = args.token or os.environ.get("AIOCELEV_DASHBOARD_TOKEN") or None
    app = create_app(
        brokers,
        read_only=args.read_only,
        basic_auth=args.basic_auth,
        token=token,
        max_tasks=args.max_tasks,
        url_prefix=args.url_prefix,
        demo=args.demo,
        inspect_timeout=args.inspect_timeout,
        actions_without_auth=args.no_auth_for_actions,
        purge_offline_workers=args.purge_offline_workers,
        broker_api=args.broker_api or os.environ.get("AIOCELEV_BROKER_API") or None,
        store=args.store or os.environ.get("AIOCELEV_STORE_URL") or None,
        simulation=_demo_simulation(DEMO_WORKERS, DEMO_RATE) if args.demo else None,
    )
    config = uvicorn.Config(
        app,
        host=args.address,
        port=args.port,
        log_level="debug" if args.verbose >= 2 else "warning",
        # Request lines carry query strings (?token=...): off unless asked for.
        access_log=args.verbose >= 2,
        timeout_graceful_shutdown=1,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    # The command's own signal handling (``_common.Context``) stops the server:
    # uvicorn must not replace the handlers.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    prefix = "/" + args.url_prefix.strip("/") if args.url_prefix.strip("/") else ""
    host = f"[{args.address}]" if ":" in args.address else args.address
    shown = ", ".join(mask_url(b) for b in brokers) if brokers else "memory:// (demo data)"
    diag(f"dashboard on http://{host}:{args.port}{prefix}/ for {shown}")
    if args.address not in ("127.0.0.1", "localhost", "::1") and not (args.basic_auth or token):
        diag("warning: listening beyond localhost without --basic-auth or --token")

    async def stop_on_signal() -> None:
        with ctx.interruptible():
            await anyio.sleep_forever()
        server.should_exit = True  # graceful: close connections, then the lifespan

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signal)
        tg.start_soon(pace_gc)  # this process is ours: see aiocelev.dashboard._gc
        await server.serve()
        tg.cancel_scope.cancel()
    if not server.started and not ctx.interrupted:
        raise CommandError(f"could not serve on {host}:{args.port}")
    return EXIT_OK
