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
    event_source,
    format_timestamp,
    listening_line,
)

__all__ = ["EventFormatter", "human_type", "register", "run"]

_HUMAN_TYPES = {
    "worker-online": "started",
    "worker-heartbeat": "heartbeat",
    "worker-offline": "shutdown",
}

# Fields shown in a line's prefix, or not at all (``--json`` shows everything).
_PREFIX_FIELDS = frozenset({"type", "hostname", "timestamp", "local_received", "pid", "utcoffset"})
# Events that name a task (learnt even when a filter hides them).
_NAMING_TYPES = frozenset({"task-received", "task-sent"})
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

    Task events show ``name(uuid) args=… kwargs=…``: as Celery's dumper does,
    the name and arguments are remembered from the task's ``task-received`` /
    ``task-sent`` event and shown on its later events too (``task-started``,
    ``task-succeeded``…).  To keep lines readable, fields whose value is null,
    the sender's ``pid`` and ``utcoffset``, and a ``root_id`` equal to the
    task's own id are left out.  A traceback follows its event's line as
    indented lines (the event then spans several lines).

    :param style: colours the hostname and type when enabled.
    :param names: how many tasks' names to remember.
    """

    def __init__(self, style: Style | None = None, names: int = 4096) -> None:
        self._style = style
        self._heads: OrderedDict[str, str] = OrderedDict()
        self._max_names = names

    def learn(self, event: Event | dict[str, Any]) -> None:
        """Remember the task name and arguments *event* carries, without printing it.

        Called for events a filter hides, so that the events it shows still
        name their task.
        """
        fields = event.to_dict() if isinstance(event, Event) else event
        self._head(fields)

    def _head(self, fields: dict[str, Any]) -> str:
        uuid = str(fields["uuid"])
        name = fields.get("name")
        if isinstance(name, str) and name:
            head = f"{name}({uuid})"
            if "args" in fields or "kwargs" in fields:
                head += f" args={_value(fields.get('args'))} kwargs={_value(fields.get('kwargs'))}"
            self._heads[uuid] = head
            self._heads.move_to_end(uuid)
            while len(self._heads) > self._max_names:
                self._heads.popitem(last=False)
            return head
        return self._heads.get(uuid, uuid)

    def format(self, event: Event | dict[str, Any]) -> str:
        """The text of *event*: one line, then its traceback's lines if it has one."""
        fields = event.to_dict() if isinstance(event, Event) else dict(event)
        type_ = str(fields.get("type", "?"))
        hostname = str(fields.get("hostname", "?"))
        when = format_timestamp(fields.get("timestamp"))
        head = head_id = ""
        skip = _PREFIX_FIELDS
        if type_.startswith("task-") and "uuid" in fields:
            head_id = str(fields["uuid"])
            head = self._head(fields)
            skip = _PREFIX_FIELDS | _TASK_HEAD_FIELDS
        traceback = fields.get("traceback")
        block = isinstance(traceback, str) and "\n" in traceback.strip()
        rest = ", ".join(
            f"{key}={_value(value)}"
            for key, value in sorted(fields.items())
            if key not in skip
            and value is not None
            and not (key == "root_id" and value == head_id)
            and not (key == "traceback" and block)
        )
        human = human_type(type_)
        style = self._style
        colour = style is not None and style.enabled
        if style is not None and colour:
            hostname = style(hostname, "1;36")
            human = style(human, _TYPE_COLOURS.get(type_, "1"))
        body = " ".join(part for part in (head, rest) if part)
        line = f"{hostname} [{when}] {human}{': ' + body if body else ''}"
        if block:
            assert isinstance(traceback, str)
            lines = [_INDENT + text for text in traceback.rstrip().splitlines()]
            text = "\n".join(lines)
            line += "\n" + (style(text, "2") if style is not None and colour else text)
        return line


#: Where the lines of a traceback start.
_INDENT = "    "


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
    count = 0
    async with event_source(args, names=not args.json) as (receiver, check):
        diag(listening_line(receiver, args))
        with ctx.interruptible(), anyio.move_on_after(args.timeout):
            async for event in receiver:
                if check is not None and not check(event.routing_key):
                    if not args.json and event.type in _NAMING_TYPES:
                        formatter.learn(event)
                    continue
                line = dumps(event.to_dict()) if args.json else formatter.format(event)
                out.write(line + "\n")
                out.flush()
                count += 1
                if args.limit is not None and count >= args.limit:
                    break
    return EXIT_OK
