"""The ``aiocelev`` command: watch, record, replay and simulate Celery's event stream.

Run ``aiocelev --help`` (or ``python -m aiocelev --help``).  Subcommands:

* ``events``: print the stream, one line (or one JSON object) per event;
* ``top``: a live view of workers and tasks (needs the ``cli`` extra);
* ``demo``: simulated workers running realistic tasks;
* ``control`` / ``inspect``: every ``celery control`` / ``celery inspect`` command,
  each reply printed as it arrives;
* ``record`` / ``replay``: capture the stream to JSON Lines (or a task-history
  store) and publish it again;
* ``tasks``: query the task history of a store.

Exit status: ``0`` success, ``1`` runtime or broker error, ``2`` usage or
configuration error (bad option, unknown URL scheme), ``130`` / ``143`` stopped
by SIGINT (Ctrl-C) / SIGTERM after a clean shutdown.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from .._exceptions import MissingDependencyError
from .._link import ConnectionStatus
from .._state import ClusterState
from .._version import __version__
from . import _control, _dashboard, _demo, _events, _record, _tasks, _top
from ._common import DEFAULT_CONNECT_TIMEOUT, EXIT_USAGE, positive_float, run_command

__all__ = ["build_parser", "main", "render_top"]

_EPILOG = """\
The broker URL comes from --broker (before or after the command), else
$AIOCELEV_BROKER_URL, else amqp://guest:guest@localhost:5672// (demo: memory://).

exit status: 0 ok, 1 runtime or broker error, 2 usage error,
130/143 stopped by SIGINT/SIGTERM.
"""


class _Parser(argparse.ArgumentParser):
    """The top-level parser: options given before the command count as if given after it."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse, then merge the options given before the command into the command's."""
        parsed, extras = super().parse_known_args(args, namespace)
        _merge_global_options(parsed)
        return parsed, extras


def _merge_global_options(args: argparse.Namespace) -> None:
    """``aiocelev --broker URL events`` as ``aiocelev events --broker URL``.

    A value given after the command wins over one given before it.
    """
    values = vars(args)
    broker = values.pop("global_broker", None)
    timeout = values.pop("global_connect_timeout", None)
    verbose = values.pop("global_verbose", 0)
    if broker is not None and "broker" in values:
        if isinstance(values["broker"], list):  # a repeatable --broker (dashboard)
            if not values["broker"]:
                args.broker = [broker]
        elif values["broker"] is None:
            args.broker = broker
    if "connect_timeout" in values and values["connect_timeout"] is None:
        args.connect_timeout = timeout if timeout is not None else DEFAULT_CONNECT_TIMEOUT
    if verbose and "verbose" in values:
        args.verbose = (values["verbose"] or 0) + verbose


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``aiocelev`` command."""
    parser = _Parser(
        prog="aiocelev",
        description="Watch, record, replay and simulate Celery's monitoring event stream.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"aiocelev {__version__}")
    common = parser.add_argument_group(
        "options of every command (accepted before the command as well as after it)"
    )
    common.add_argument("-b", "--broker", dest="global_broker", metavar="URL", help="broker URL")
    common.add_argument(
        "--connect-timeout",
        dest="global_connect_timeout",
        type=positive_float,
        metavar="SECONDS",
        help=f"give up if the broker cannot be reached in this time (default: "
        f"{DEFAULT_CONNECT_TIMEOUT:g})",
    )
    common.add_argument(
        "-v",
        "--verbose",
        dest="global_verbose",
        action="count",
        default=0,
        help="log the library's warnings (-v) or debug messages (-vv) on stderr",
    )
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=argparse.ArgumentParser
    )
    for module in (_events, _top, _demo, _control, _record, _tasks, _dashboard):
        module.register(subparsers)
    return parser


def render_top(
    state: ClusterState,
    *,
    width: int = 120,
    height: int | None = None,
    now: float | None = None,
    selected: str | None = None,
    title: str = "aiocelev top",
    connection: ConnectionStatus | None = None,
) -> str:
    """One frame of ``aiocelev top`` for *state*, as plain text (needs the ``cli`` extra).

    :param width: the width of the frame in characters.
    :param height: the frame fits this many lines (``None``: as long as it takes).
    :param now: the epoch time ages are relative to (default: now).
    :param selected: the id of the task whose detail is shown (default: the newest).
    :param title: the first words of the header line.
    :param connection: a receiver's connection status, shown as a banner after a loss.
    :raises MissingDependencyError: rich is not installed.
    """
    try:
        from ._topview import render, to_text
    except ImportError as exc:
        raise MissingDependencyError(
            f"render_top needs rich ({exc.name or exc}): pip install 'aiocelev[cli]'"
        ) from exc
    frame = render(
        state,
        time.time() if now is None else now,
        selected,
        title=title,
        width=width,
        height=height,
        keys=False,
        connection=connection,
    )
    return to_text(frame, width, height)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``aiocelev`` command with *argv* (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return run_command(args.func, args)
