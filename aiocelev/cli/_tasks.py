"""``aiocelev tasks``: query the task history kept by ``aiocelev record --store``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .._codec import dumps
from ._common import EXIT_OK, EXIT_USAGE, Context, Style, diag, fail, format_timestamp, positive_int

__all__ = ["ENV_STORE_URL", "register", "run_tasks"]

#: The environment variable naming the store when ``--store`` is not given.
ENV_STORE_URL = "AIOCELEV_STORE_URL"

_COLOURS = {"SUCCESS": "32", "FAILURE": "1;31", "RETRY": "33", "REVOKED": "35", "STARTED": "36"}


def register(subparsers: Any) -> None:
    """Add the ``tasks`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "tasks",
        help="query the task history of a store (see 'record --store')",
        description=(
            "Print the stored tasks matching the filters, newest first, one page at a time. "
            'SEARCH terms use the dashboard\'s language: words or "quoted phrases" match '
            "args, kwargs, result or exception (case-insensitive substrings), -term "
            "excludes, field:value looks in one field (args, kwargs, result, exception, "
            "name, state, worker, uuid, traceback). Times are epoch seconds, "
            "'YYYY-MM-DD HH:MM' (local time) or ISO 8601."
        ),
    )
    parser.add_argument(
        "search",
        nargs="*",
        metavar="SEARCH",
        help="search terms (put a -term excluding something after '--', or use --search)",
    )
    parser.add_argument("--search", dest="search_text", metavar="TEXT", help="search terms")
    parser.add_argument("--store", metavar="URL", help=f"the store (default: ${ENV_STORE_URL})")
    parser.add_argument("-s", "--state", help="only tasks in this state (FAILURE, SUCCESS...)")
    parser.add_argument("--name", help="only tasks of this name")
    parser.add_argument("-w", "--worker", help="only tasks of this worker (hostname)")
    parser.add_argument("--since", metavar="TIME", help="received at or after TIME")
    parser.add_argument("--until", metavar="TIME", help="received at or before TIME")
    parser.add_argument("--started-since", metavar="TIME", help="started at or after TIME")
    parser.add_argument("--started-until", metavar="TIME", help="started at or before TIME")
    parser.add_argument("--uuid", help="print this one task in full (JSON with --json)")
    parser.add_argument(
        "-n", "--limit", type=positive_int, default=50, metavar="N", help="tasks per page (50)"
    )
    parser.add_argument("--cursor", help="the page after this cursor (printed on stderr)")
    parser.add_argument(
        "--count", action="store_true", help="print the number of matching tasks only"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per task")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log the library's warnings"
    )
    parser.set_defaults(func=run_tasks)


def _params(args: argparse.Namespace) -> dict[str, str]:
    params = {
        "state": args.state,
        "name": args.name,
        "worker": args.worker,
        "received_start": args.since,
        "received_end": args.until,
        "started_start": args.started_since,
        "started_end": args.started_until,
        "search": " ".join(
            [_quote(term) for term in args.search]
            + ([args.search_text] if args.search_text else [])
        )
        or None,
    }
    return {k: v for k, v in params.items() if v is not None}


def _quote(term: str) -> str:
    if not any(c.isspace() for c in term):
        return term
    negate = "-" if term.startswith("-") else ""
    body = term[1:] if negate else term
    return negate + '"' + body.replace('"', '\\"') + '"'


def _line(task: dict[str, Any], style: Style) -> str:
    state = task["state"]
    when = format_timestamp(task["timestamp"])
    detail = ""
    if state == "FAILURE" or state == "RETRY":
        detail = f" {task['exception']}"
    elif state == "SUCCESS":
        runtime = task["runtime"]
        rt = f" in {runtime:.3f}s" if isinstance(runtime, (int, float)) else ""
        detail = f" -> {task['result']}{rt}"
    text = (
        f"{when}  {style(f'{state:<8}', _COLOURS.get(state, '0'))}  {task['name']}"
        f"[{task['uuid']}]{' ' + task['args'] if isinstance(task['args'], str) else ''}"
        f"  @{task['worker']}{detail}"
    )
    return text.replace("\n", "\\n")


async def run_tasks(args: argparse.Namespace, ctx: Context) -> int:
    """Run ``aiocelev tasks``."""
    from ..store import open_store

    url = args.store or os.environ.get(ENV_STORE_URL)
    if not url:
        fail(f"give --store URL (or set ${ENV_STORE_URL})", EXIT_USAGE)
    out = sys.stdout
    style = Style(out)
    async with open_store(url) as store:
        if args.uuid is not None:
            task = await store.get(args.uuid)
            if task is None:
                fail(f"no task {args.uuid!r} in {store.url}")
            out.write((dumps(task) if args.json else _detail(task)) + "\n")
            return EXIT_OK
        params = _params(args)
        if args.count:
            out.write(f"{await store.count(params)}\n")
            return EXIT_OK
        page = await store.query(params, cursor=args.cursor, limit=args.limit)
        for task in page.tasks:
            out.write((dumps(task) if args.json else _line(task, style)) + "\n")
        out.flush()
    if page.cursor is not None:
        diag(f"more: add --cursor {page.cursor}")
    return EXIT_OK


def _detail(task: dict[str, Any]) -> str:
    lines = []
    for key, value in task.items():
        if value is None or value == [] or value == {}:
            continue
        if key in ("sent", "received", "started", "succeeded", "failed", "retried", "revoked",
                   "rejected", "timestamp"):  # fmt: skip
            value = f"{format_timestamp(value)} ({value})"
        text = value if isinstance(value, str) else repr(value)
        lines.append(f"{key:>12}: {text}")
    return "\n".join(lines)
