"""The ``aiocelev`` command: watch, record, replay and simulate Celery's event stream.

Run ``aiocelev --help`` (or ``python -m aiocelev --help``).  Subcommands:

* ``events``: print the stream, one line (or one JSON object) per event;
* ``top``: a live view of workers and tasks (needs the ``cli`` extra);
* ``demo``: simulated workers running realistic tasks;
* ``control`` / ``inspect``: every ``celery control`` / ``celery inspect`` command,
  each reply printed as it arrives;
* ``record`` / ``replay``: capture the stream to JSON Lines and publish it again.

Exit status: ``0`` success, ``1`` runtime or broker error, ``2`` usage or
configuration error (bad option, unknown URL scheme), ``130`` / ``143`` stopped
by SIGINT (Ctrl-C) / SIGTERM after a clean shutdown.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._version import __version__
from . import _control, _dashboard, _demo, _events, _record, _top
from ._common import EXIT_USAGE, run_command

__all__ = ["build_parser", "main"]

_EPILOG = """\
The broker URL comes from --broker (given after the subcommand), else
$AIOCELEV_BROKER_URL, else amqp://guest:guest@localhost:5672// (demo: memory://).

exit status: 0 ok, 1 runtime or broker error, 2 usage error,
130/143 stopped by SIGINT/SIGTERM.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``aiocelev`` command."""
    parser = argparse.ArgumentParser(
        prog="aiocelev",
        description="Watch, record, replay and simulate Celery's monitoring event stream.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"aiocelev {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (_events, _top, _demo, _control, _record, _dashboard):
        module.register(subparsers)
    return parser


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
