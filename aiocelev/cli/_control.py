"""``aiocelev control``: Celery remote-control commands about events, as ``celery control``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio

from .._url import mask_url, scheme_of
from ._common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    Context,
    Style,
    add_broker_options,
    diag,
    fail,
    positive_float,
    resolve_broker_url,
)
from ._record import connect_broker

__all__ = ["COMMANDS", "format_reply", "register", "run"]

#: CLI spelling -> Celery's remote-control method.
COMMANDS = {
    "enable-events": "enable_events",
    "disable-events": "disable_events",
    "heartbeat": "heartbeat",
}


def register(subparsers: Any) -> None:
    """Add the ``control`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "control",
        help="ask Celery workers to enable/disable task events or send a heartbeat",
        description=(
            "Broadcast a remote-control command to Celery workers, as 'celery control' "
            "does, and print the replies of the workers that answer within --timeout. "
            "Needs a broker with remote control (amqp://, redis://)."
        ),
    )
    parser.add_argument(
        "action",
        choices=sorted(COMMANDS),
        metavar="ACTION",
        help="one of: " + ", ".join(sorted(COMMANDS)),
    )
    parser.add_argument(
        "-d",
        "--destination",
        action="extend",
        nargs="+",
        metavar="NODE",
        help="only these workers (node names such as celery@host; default: all)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=1.0,
        metavar="SECONDS",
        help="how long to wait for replies (default: 1)",
    )
    parser.add_argument("--json", action="store_true", help="print the replies as one JSON list")
    add_broker_options(parser)
    parser.set_defaults(func=run)


def format_reply(node: str, reply: Any, style: Style) -> str:
    """``-> node: OK`` and the reply's text indented below, as ``celery control`` prints."""
    if isinstance(reply, dict) and "error" in reply and "ok" not in reply:
        status, body = style("ERROR", "31"), reply["error"]
    elif isinstance(reply, dict) and "ok" in reply:
        status, body = "OK", reply["ok"]
    else:
        status, body = "OK", reply
    if body is None:
        text = ""
    elif isinstance(body, str):
        text = body
    else:
        text = json.dumps(body, sort_keys=True, default=str)
    indented = "\n".join("    " + line for line in text.splitlines())
    head = f"{style('->', '1')} {style(node + ':', '1;36')} {status}"
    return f"{head}\n{indented}" if indented else head


async def run(args: argparse.Namespace, ctx: Context) -> int:
    """Run ``aiocelev control``."""
    url = resolve_broker_url(args.broker)
    method = COMMANDS[args.action]
    if scheme_of(url) == "memory":
        fail(
            "memory:// has no Celery workers to control; use an amqp:// or redis:// broker",
            EXIT_USAGE,
        )
    broker = await connect_broker(url, args.connect_timeout)
    try:
        broadcast = getattr(broker, "broadcast", None)
        if broadcast is None:
            fail(
                f"the broker adapter for {mask_url(url)} does not support remote control",
                EXIT_USAGE,
            )
        with ctx.interruptible():
            replies: list[dict[str, Any]] = await broadcast(
                method,
                {},
                destination=args.destination or None,
                reply=True,
                timeout=args.timeout,
            )
    finally:
        with anyio.CancelScope(shield=True):
            await broker.aclose()
    if ctx.interrupted:
        return EXIT_OK
    if args.json:
        sys.stdout.write(json.dumps(replies) + "\n")
    style = Style(sys.stdout)
    if not replies:
        diag(f"no workers replied within {args.timeout:g}s")
        return EXIT_ERROR
    if not args.json:
        for item in replies:
            for node, reply in item.items():
                sys.stdout.write(format_reply(node, reply, style) + "\n")
    sys.stdout.flush()
    return EXIT_OK
