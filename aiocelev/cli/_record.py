"""``aiocelev record`` / ``aiocelev replay``: the event stream to JSON Lines and back."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

import anyio

from .._codec import dumps
from .._dispatcher import EventDispatcher
from .._url import mask_url
from ._common import (
    EXIT_OK,
    EXIT_USAGE,
    Context,
    MalformedReporter,
    add_broker_options,
    add_event_source_options,
    binding_keys,
    check_filters,
    connect_broker,
    diag,
    event_source,
    fail,
    listening_line,
    non_negative_float,
    positive_float,
    positive_int,
    resolve_broker_url,
    take_file_after_filters,
)

__all__ = ["iter_recording", "register", "run_record", "run_replay"]


def register(subparsers: Any) -> None:
    """Add the ``record`` and ``replay`` subcommands."""
    record: argparse.ArgumentParser = subparsers.add_parser(
        "record",
        help="capture the event stream to a JSON Lines file",
        description=(
            "Write every event to FILE, one JSON object per line (the full wire dict, "
            "local_received included), until --limit, --timeout or Ctrl-C. "
            "FILE '-' is stdout. Every line is flushed as it is written. "
            "With --store URL instead of FILE, keep the task history in a database "
            "(sqlite:///path.db or postgresql://...): one row per task and per worker, "
            "written in batches; on a RabbitMQ durable queue (--broker "
            "'amqp://...//?queue_name=NAME&durable=1') a message is acknowledged only "
            "once its events are committed, so a crash loses nothing."
        ),
    )
    record.add_argument(
        "file",
        metavar="FILE",
        nargs="?",
        help="output file ('-' for stdout); it may also come after --filter's keys",
    )
    record.add_argument(
        "-a", "--append", action="store_true", help="append to FILE instead of replacing it"
    )
    store = record.add_argument_group("task history store (instead of FILE)")
    store.add_argument(
        "--store",
        metavar="URL",
        help="write into this store: sqlite:///path.db, postgresql://user@host/db",
    )
    store.add_argument(
        "--max-age",
        type=positive_float,
        metavar="SECONDS",
        help="delete stored tasks older than this, in the background",
    )
    store.add_argument(
        "--max-rows",
        type=positive_int,
        metavar="N",
        help="keep at most N stored tasks (the oldest go first)",
    )
    store.add_argument(
        "--events-log", action="store_true", help="also keep every event in the store's raw log"
    )
    add_event_source_options(record)
    add_broker_options(record)
    record.set_defaults(func=run_record)

    replay: argparse.ArgumentParser = subparsers.add_parser(
        "replay",
        help="publish a recorded JSON Lines file again, with its original timing",
        description=(
            "Publish every event of FILE (written by 'aiocelev record' or 'aiocelev "
            "events --json') unchanged, except local_received, which a receiver sets. "
            "The gaps between events (their local_received, else timestamp) are kept, "
            "divided by --speed. FILE '-' is stdin."
        ),
    )
    replay.add_argument("file", metavar="FILE", help="input file ('-' for stdin)")
    replay.add_argument(
        "-s",
        "--speed",
        type=non_negative_float,
        default=1.0,
        metavar="X",
        help="replay X times faster (default: 1; 0: as fast as possible)",
    )
    replay.add_argument(
        "--retime",
        action="store_true",
        help="stamp each event with the time it is sent (workers then look alive to a "
        "monitor) instead of its recorded timestamp",
    )
    add_broker_options(replay)
    replay.set_defaults(func=run_replay)


async def run_record(args: argparse.Namespace, ctx: Context) -> int:
    """Run ``aiocelev record``."""
    if args.store is not None:
        if args.file is not None:
            fail("give FILE or --store, not both", EXIT_USAGE)
        return await _record_store(args, ctx)
    take_file_after_filters(args)
    count = 0
    async with event_source(args) as (receiver, check):
        out = _open_output(args.file, args.append)
        try:
            diag(f"{listening_line(receiver, args, 'recording')} to {args.file}")
            with ctx.interruptible(), anyio.move_on_after(args.timeout):
                async for event in receiver:
                    if check is not None and not check(event.routing_key):
                        continue
                    out.write(dumps(event.to_dict()) + "\n")
                    out.flush()
                    count += 1
                    if args.limit is not None and count >= args.limit:
                        break
        finally:
            if out is not sys.stdout:
                out.close()
    diag(f"recorded {count} event{'' if count == 1 else 's'} to {args.file}")
    return EXIT_OK


async def _record_store(args: argparse.Namespace, ctx: Context) -> int:
    """``aiocelev record --store URL``: the stream into a task-history store."""
    from ..store import Ingest, open_store

    check_filters(args.filter or ())
    url = resolve_broker_url(args.broker)
    keys, check = binding_keys(args.filter)
    count = 0
    async with open_store(args.store, event_log=args.events_log) as store:
        broker = await connect_broker(url, args.connect_timeout)
        ingest = Ingest(
            broker,
            store,
            routing_keys=keys,
            connect_timeout=args.connect_timeout,
            on_error=MalformedReporter(),
            max_age=args.max_age,
            max_rows=args.max_rows,
        )
        try:
            async with ingest:
                diag(f"{listening_line(ingest.receiver, args, 'recording')} into {store.url}")
                with ctx.interruptible(), anyio.move_on_after(args.timeout):
                    count = await ingest.run(
                        limit=args.limit,
                        check=None if check is None else (lambda e: check(e.routing_key)),
                    )
        finally:
            with anyio.CancelScope(shield=True):
                await broker.aclose()
        stats = ingest.statistics()
    gaps = (
        f", {stats.gaps} broker reconnect(s): events published meanwhile may be missing"
        if stats.gaps
        else ""
    )
    diag(
        f"recorded {count} event{'' if count == 1 else 's'} into {store.url} "
        f"({stats.committed} committed{gaps})"
    )
    return EXIT_OK


def _open_output(path: str, append: bool) -> IO[str]:
    if path == "-":
        return sys.stdout
    try:
        return open(path, "a" if append else "w", encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")


def _open_input(path: str) -> IO[str]:
    # Local files are read and written synchronously, line by line: a line is
    # small and a thread hop per line would cost more than it saves.
    if path == "-":
        return sys.stdin
    try:
        return open(path, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")


def iter_recording(lines: IO[str], source: str) -> Iterator[dict[str, Any]]:
    """The events of a JSON Lines recording; bad lines are reported on stderr and skipped."""
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        try:
            data = json.loads(text)
        except ValueError as exc:
            diag(f"{source}:{number}: skipped: not JSON ({exc})")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            diag(f"{source}:{number}: skipped: not an event (no string 'type')")
            continue
        yield data


def _when(data: dict[str, Any]) -> float | None:
    for key in ("local_received", "timestamp"):
        value = data.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


async def run_replay(args: argparse.Namespace, ctx: Context) -> int:
    """Run ``aiocelev replay``."""
    source = "<stdin>" if args.file == "-" else args.file
    stream = _open_input(args.file)
    url = resolve_broker_url(args.broker)
    sent = 0
    try:
        broker = await connect_broker(url, args.connect_timeout)
        try:
            async with EventDispatcher(broker, hostname=None) as dispatcher:
                retimed = ", timestamps of now" if args.retime else ""
                diag(f"replaying {source} to {mask_url(url)} (speed {args.speed:g}{retimed})")
                first: float | None = None
                start = anyio.current_time()
                with ctx.interruptible():
                    for data in iter_recording(stream, source):
                        when = _when(data)
                        if args.speed > 0 and when is not None:
                            if first is None:
                                first = when
                            delay = start + (when - first) / args.speed - anyio.current_time()
                            if delay > 0:
                                await anyio.sleep(delay)
                        data.pop("local_received", None)
                        if args.retime:
                            data["timestamp"] = time.time()
                        await dispatcher.send_event(data)
                        sent += 1
                    await dispatcher.flush()
            dropped = dispatcher.statistics().dropped
        finally:
            with anyio.CancelScope(shield=True):
                await broker.aclose()
    finally:
        if stream is not sys.stdin:
            stream.close()
    diag(f"replayed {sent} event{'' if sent == 1 else 's'} from {source}")
    if dropped:
        fail(f"{dropped} events could not be delivered to {mask_url(url)}")
    return EXIT_OK
