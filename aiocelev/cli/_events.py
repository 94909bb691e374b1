"""``aiocelev events``: print the event stream, like ``celery events --dump``."""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from typing import IO, Any

import anyio

from .._codec import dumps
from .._events import Event
from ._common import (
    EXIT_OK,
    Context,
    Style,
    add_broker_options,
    add_event_source_options,
    diag,
    format_timestamp,
    listening_line,
    open_receiver,
)

__all__ = ["EventFormatter", "human_type", "register", "run"]

_HUMAN_TYPES = {
    "worker-online": "started",
    "worker-heartbeat": "heartbeat",
    "worker-offline": "shutdown",
}

# Fields shown in a line's prefix, or not at all (``--json`` shows everything).
_PREFIX_FIELDS = frozenset({"type", "hostname", "timestamp", "local_received", "pid", "utcoffset"})
# Task fields folded into "name(uuid) args=... kwargs=...".
_TASK_HEAD_FIELDS = frozenset({"uuid", "name", "args", "kwargs"})

_TYPE_COLOURS = {
    "task-succeeded": "32",
    "task-failed": "31",
    "task-rejected": "31",
    "task-revoked": "33",
    "task-retried": "33",
    "worker-offline": "31",
    "worker-online": "32",
}


def human_type(type_: str) -> str:
    """The words ``celery events --dump`` uses for an event type."""
    type_ = type_.lower()
    return _HUMAN_TYPES.get(type_) or type_.replace("-", " ")


def _value(value: Any) -> str:
    """A field value on one line: strings as is unless they span lines."""
    if isinstance(value, str):
        if any(ch in value for ch in "\n\r\t") or not value:
            return repr(value)
        return value
    if isinstance(value, (dict, list)):
        return dumps(value)
    return str(value)


class EventFormatter:
    """Format events as ``<hostname> [<UTC time>] <human type>: k=v, …`` lines.

    Task events show ``name(uuid)`` (the name is remembered from the task's
    ``task-received`` / ``task-sent`` event, as Celery's dumper does).  To keep
    lines readable, fields whose value is null, the sender's ``pid`` and
    ``utcoffset``, and a ``root_id`` equal to the task's own id are left out.

    :param style: colours the hostname and type when enabled.
    :param names: how many task names to remember.
    """

    def __init__(self, style: Style | None = None, names: int = 4096) -> None:
        self._style = style
        self._names: OrderedDict[str, str] = OrderedDict()
        self._max_names = names

    def _remember(self, uuid: str, name: str) -> None:
        self._names[uuid] = name
        self._names.move_to_end(uuid)
        while len(self._names) > self._max_names:
            self._names.popitem(last=False)

    def format(self, event: Event | dict[str, Any]) -> str:
        """One line for *event* (no trailing newline)."""
        fields = event.to_dict() if isinstance(event, Event) else dict(event)
        type_ = str(fields.get("type", "?"))
        hostname = str(fields.get("hostname", "?"))
        when = format_timestamp(fields.get("timestamp"))
        head = head_id = ""
        skip = _PREFIX_FIELDS
        if type_.startswith("task-") and "uuid" in fields:
            uuid = head_id = str(fields["uuid"])
            name = fields.get("name")
            if isinstance(name, str):
                self._remember(uuid, name)
            else:
                name = self._names.get(uuid, "")
            head = f"{name}({uuid})" if name else uuid
            if "args" in fields or "kwargs" in fields:
                head += f" args={_value(fields.get('args'))} kwargs={_value(fields.get('kwargs'))}"
            skip = _PREFIX_FIELDS | _TASK_HEAD_FIELDS
        rest = ", ".join(
            f"{key}={_value(value)}"
            for key, value in sorted(fields.items())
            if key not in skip and value is not None and not (key == "root_id" and value == head_id)
        )
        human = human_type(type_)
        style = self._style
        if style is not None and style.enabled:
            hostname = style(hostname, "1;36")
            human = style(human, _TYPE_COLOURS.get(type_, "1"))
        body = " ".join(part for part in (head, rest) if part)
        return f"{hostname} [{when}] {human}{': ' + body if body else ''}"


def register(subparsers: Any) -> None:
    """Add the ``events`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "events",
        help="print the event stream, one line (or JSON object) per event",
        description=(
            "Print every event on the bus, one readable line per event (like "
            "'celery events --dump'), or with --json one JSON object per line: the "
            "event's full wire dict plus local_received. Diagnostics go to stderr."
        ),
    )
    add_event_source_options(parser)
    parser.add_argument(
        "--json", action="store_true", help="print each event's wire dict as one JSON line"
    )
    add_broker_options(parser)
    parser.set_defaults(func=run)


async def run(args: argparse.Namespace, ctx: Context) -> int:
    """Run ``aiocelev events``."""
    out: IO[str] = sys.stdout
    formatter = EventFormatter(Style(out))
    receiver, check = open_receiver(args)
    count = 0
    async with receiver:
        diag(listening_line(receiver, args))
        with ctx.interruptible(), anyio.move_on_after(args.timeout):
            async for event in receiver:
                if check is not None and not check(event.routing_key):
                    continue
                line = dumps(event.to_dict()) if args.json else formatter.format(event)
                out.write(line + "\n")
                out.flush()
                count += 1
                if args.limit is not None and count >= args.limit:
                    break
    return EXIT_OK
