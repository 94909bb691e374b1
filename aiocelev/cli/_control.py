"""``aiocelev control`` and ``aiocelev inspect``: Celery's remote control, replies as they arrive."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from .._control import ControlReply
from .._control_client import Control
from .._url import scheme_of
from ._common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    Context,
    Style,
    add_broker_options,
    connect_broker,
    diag,
    positive_float,
    resolve_broker_url,
)

__all__ = ["CONTROL", "INSPECT", "Command", "compile_arguments", "format_reply", "register"]


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "y", "on"):
        return True
    if value in ("0", "false", "no", "n", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _key_values(items: Sequence[str]) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {item!r}")
        previous = headers.get(key)
        if previous is None:
            headers[key] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            headers[key] = [previous, value]
    return headers


@dataclass(frozen=True)
class Command:
    """One remote-control command as the CLI takes it (Celery's ``Panel`` signature)."""

    name: str
    help: str
    args: tuple[tuple[str, Callable[[str], Any]], ...] = ()
    """Positional arguments in order: ``(name, converter)``; trailing ones are optional."""
    required: int = 0
    """How many of *args* must be given."""
    variadic: str | None = None
    """Name of the list argument that takes the rest."""
    signature: str = ""


CONTROL: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "add_consumer",
            "start consuming from a queue",
            (("queue", str), ("exchange", str), ("exchange_type", str), ("routing_key", str)),
            1,
            signature="QUEUE [EXCHANGE [TYPE [ROUTING_KEY]]]",
        ),
        Command(
            "autoscale",
            "set the autoscaler's bounds",
            (("max", int), ("min", int)),
            2,
            signature="MAX MIN",
        ),  # fmt: skip
        Command(
            "cancel_consumer",
            "stop consuming from a queue",
            (("queue", str),),
            1,
            signature="QUEUE",
        ),  # fmt: skip
        Command("disable_events", "stop sending task events"),
        Command("enable_events", "send task events"),
        Command("heartbeat", "send a worker-heartbeat now"),
        Command("pool_grow", "add pool processes", (("n", int),), signature="[N=1]"),
        Command("pool_shrink", "remove pool processes", (("n", int),), signature="[N=1]"),
        Command(
            "rate_limit",
            "set a task's rate limit (e.g. 10/m; 0 removes it)",
            (("task_name", str), ("rate_limit", str)),
            2,
            signature="TASK_NAME RATE_LIMIT",
        ),
        Command(
            "revoke",
            "revoke tasks by id (--terminate to kill running ones)",
            variadic="task_id",
            signature="ID [ID ...]",
        ),  # fmt: skip
        Command(
            "revoke_by_stamped_headers",
            "revoke tasks by stamped headers",
            variadic="headers",
            signature="KEY=VALUE [KEY=VALUE ...]",
        ),
        Command("shutdown", "stop the workers"),
        Command(
            "terminate",
            "revoke and kill running tasks with a signal",
            (("signal", str),),
            1,
            variadic="task_id",
            signature="SIGNAL ID [ID ...]",
        ),  # fmt: skip
        Command(
            "time_limit",
            "set a task's soft and hard time limits (seconds)",
            (("task_name", str), ("soft", float), ("hard", float)),
            2,
            signature="TASK_NAME SOFT [HARD]",
        ),
    )
}

INSPECT: dict[str, Command] = {
    c.name: c
    for c in (
        Command("active", "tasks being executed"),
        Command("active_queues", "queues being consumed from"),
        Command("clock", "the nodes' logical clocks"),
        Command(
            "conf",
            "configuration",
            (("with_defaults", _bool),),
            signature="[INCLUDE_DEFAULTS=false]",
        ),  # fmt: skip
        Command("ping", "ping the workers"),
        Command(
            "query_task", "what the nodes know of task ids", variadic="ids", signature="ID [ID ...]"
        ),  # fmt: skip
        Command(
            "registered", "registered tasks", variadic="taskinfoitems", signature="[ATTR ...]"
        ),  # fmt: skip
        Command("report", "bug-report information"),
        Command("reserved", "tasks reserved, not yet executing"),
        Command("revoked", "revoked task ids"),
        Command("scheduled", "tasks with an ETA or countdown"),
        Command("stats", "worker statistics"),
    )
}


def compile_arguments(command: Command, values: Sequence[str]) -> dict[str, Any]:
    """The ``arguments`` of a request from the command line, as Celery's CLI builds them.

    :raises CommandError: too few, too many or badly typed arguments (exit status 2).
    """
    usage = f"usage: {command.name} {command.signature}".rstrip()
    values = list(values)
    if len(values) < command.required:
        raise CommandError(f"{command.name} needs more arguments ({usage})", EXIT_USAGE)
    arguments: dict[str, Any] = {}
    positional = values[: len(command.args)]
    rest = values[len(command.args) :]
    if rest and command.variadic is None:
        raise CommandError(
            f"{command.name} takes at most {len(command.args)} ({usage})", EXIT_USAGE
        )
    for (name, convert), text in zip(command.args, positional, strict=False):
        try:
            arguments[name] = convert(text)
        except ValueError as exc:
            raise CommandError(f"{command.name}: bad {name} {text!r}: {exc}", EXIT_USAGE) from None
    if command.variadic is not None:
        if command.variadic == "headers":
            try:
                arguments["headers"] = _key_values(rest)
            except ValueError as exc:
                raise CommandError(f"{command.name}: {exc}", EXIT_USAGE) from None
        else:
            arguments[command.variadic] = rest
    return arguments


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-d",
        "--destination",
        action="extend",
        nargs="+",
        metavar="NODE",
        help="only these workers (node names such as celery@host; default: all)",
    )
    parser.add_argument(
        "-t",
        "--timeout",
        type=positive_float,
        default=1.0,
        metavar="SECONDS",
        help="how long to wait for replies (default: 1)",
    )
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="stop after N replies")
    parser.add_argument(
        "-j", "--json", action="store_true", help="print one JSON object per reply, as they arrive"
    )
    add_broker_options(parser)


def register(subparsers: Any) -> None:
    """Add the ``control`` and ``inspect`` subcommands."""
    for kind, table, verb in (
        ("control", CONTROL, "change"),
        ("inspect", INSPECT, "inspect"),
    ):
        listing = "\n".join(f"  {c.name:<26} {c.signature:<28} {c.help}" for c in table.values())
        parser: argparse.ArgumentParser = subparsers.add_parser(
            kind,
            help=f"{verb} Celery workers by remote control, as 'celery {kind}'",
            description=(
                f"Broadcast a remote-control command to Celery workers, as 'celery {kind}' "
                "does, and print each reply the moment it arrives. Waiting ends after "
                "--timeout, after --limit replies, or when every --destination node answered."
            ),
            epilog="commands:\n" + listing,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument("name", metavar="COMMAND", help="the command (see below)")
        parser.add_argument("arguments", nargs="*", metavar="ARG", help="its arguments")
        if kind == "control":
            parser.add_argument(
                "--terminate",
                action="store_true",
                help="revoke: also kill the task if it is running",
            )
            parser.add_argument(
                "--signal", default=None, metavar="SIG", help="revoke --terminate: signal (TERM)"
            )
        _add_common(parser)
        parser.set_defaults(func=run, kind=kind)


def _pretty(value: Any) -> str:
    """A reply's value as ``celery inspect`` shows it: lists as bullets, objects as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if not value:
            return "- empty -"
        return "\n".join(
            f"* {item if isinstance(item, str) else json.dumps(item, sort_keys=True, default=str)}"
            for item in value
        )
    return json.dumps(value, indent=4, sort_keys=True, default=str)


def format_reply(node: str, reply: Any, style: Style) -> str:
    """``-> node: OK`` and the reply's text indented below, as ``celery control`` prints."""
    if isinstance(reply, dict) and "error" in reply and "ok" not in reply:
        status, body = style("ERROR", "31"), reply["error"]
    elif isinstance(reply, dict) and "ok" in reply and len(reply) == 1:
        status, body = "OK", reply["ok"]
    else:
        status, body = "OK", reply
    indented = "\n".join("    " + line for line in _pretty(body).splitlines())
    head = f"{style('->', '1')} {style(node + ':', '1;36')} {status}"
    return f"{head}\n{indented}" if indented else head


def _lookup(kind: str, name: str) -> Command:
    table = CONTROL if kind == "control" else INSPECT
    key = name.replace("-", "_")
    command = table.get(key)
    if command is not None:
        return command
    other = INSPECT if kind == "control" else CONTROL
    if key in other:
        other_kind = "inspect" if kind == "control" else "control"
        article = "an" if other_kind == "inspect" else "a"
        raise CommandError(
            f"{name!r} is {article} {other_kind} command: aiocelev {other_kind} {key}", EXIT_USAGE
        )
    near = difflib.get_close_matches(key, list(table), n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]!r}?" if near else f"; one of: {', '.join(table)}"
    raise CommandError(f"unknown {kind} command {name!r}{hint}", EXIT_USAGE)


def _print(reply: ControlReply, as_json: bool, style: Style) -> None:
    if as_json:
        sys.stdout.write(json.dumps(reply.as_dict(), default=str) + "\n")
    else:
        sys.stdout.write(format_reply(reply.node, reply.payload, style) + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace, ctx: Context) -> int:
    """Run ``aiocelev control`` / ``aiocelev inspect``."""
    command = _lookup(args.kind, args.name)
    arguments = compile_arguments(command, args.arguments)
    if args.kind == "control" and command.name == "revoke":
        if args.terminate:
            arguments["terminate"] = True
        if args.signal is not None:
            arguments["signal"] = args.signal
    elif args.kind == "control" and (args.terminate or args.signal):
        raise CommandError("--terminate and --signal go with revoke", EXIT_USAGE)
    if args.limit is not None and args.limit < 1:
        raise CommandError("--limit must be at least 1", EXIT_USAGE)
    url = resolve_broker_url(args.broker)
    if scheme_of(url) == "memory":
        raise CommandError(
            "memory:// has no Celery workers to control; use an amqp:// or redis:// broker",
            EXIT_USAGE,
        )
    broker = await connect_broker(url, args.connect_timeout)
    style = Style(sys.stdout)
    received = 0
    missing: list[str] = []
    try:
        control = Control(broker, timeout=args.timeout)
        with ctx.interruptible():
            async with control.broadcast(
                command.name,
                arguments,
                destination=args.destination or None,
                timeout=args.timeout,
                limit=args.limit,
            ) as replies:
                async for reply in replies:
                    received += 1
                    _print(reply, args.json, style)
                missing = replies.missing
    finally:
        with anyio.CancelScope(shield=True):
            await broker.aclose()
    if ctx.interrupted:
        diag(f"interrupted: {received} {'reply' if received == 1 else 'replies'} received")
        return EXIT_OK  # the runner turns the signal into 130 / 143
    if command.name == "shutdown" and received == 0:
        diag("shutdown sent (workers do not reply to it)")
        return EXIT_OK
    if received == 0:
        diag(f"no workers replied within {args.timeout:g}s")
        return EXIT_ERROR
    if missing:
        diag(f"no reply from {', '.join(missing)} within {args.timeout:g}s")
    return EXIT_OK
