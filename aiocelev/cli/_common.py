"""What the ``aiocelev`` subcommands share: options, broker URL and connection, event
source, errors, signals, output.

Subcommand modules import from here, never from each other.
"""

from __future__ import annotations

import argparse
import difflib
import fnmatch
import logging
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from datetime import datetime, timezone
from typing import IO, Any, NoReturn

import anyio
import anyio.abc

from .._exceptions import (
    AiocelevError,
    BrokerError,
    ConfigurationError,
    DecodeError,
    MissingDependencyError,
)
from .._link import ConnectionStatus
from .._message import IncomingMessage
from .._receiver import EventReceiver
from .._url import mask_url, scheme_of
from ..brokers import Broker, open_broker
from ..brokers._topic import compile_bindings

__all__ = [
    "DEFAULT_BROKER_URL",
    "DEFAULT_CONNECT_TIMEOUT",
    "ENV_BROKER_URL",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_USAGE",
    "CELERY_KEYS",
    "CommandError",
    "ConnectionReporter",
    "Context",
    "MalformedReporter",
    "Style",
    "add_broker_options",
    "add_event_source_options",
    "binding_keys",
    "broker_reason",
    "check_filters",
    "connect_broker",
    "connection_line",
    "diag",
    "event_source",
    "format_duration",
    "format_timestamp",
    "listening_line",
    "open_receiver",
    "require_rich",
    "resolve_broker_url",
    "run_command",
    "take_file_after_filters",
]

#: Celery's own default broker URL (``broker_url`` unset).
DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672//"
#: Seconds a command waits for the broker to answer (``--connect-timeout``).
DEFAULT_CONNECT_TIMEOUT = 3.0
#: The environment variable naming the broker when ``--broker`` is not given.
ENV_BROKER_URL = "AIOCELEV_BROKER_URL"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM

PROG = "aiocelev"


class CommandError(Exception):
    """A failure the command explains in one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class _Terminated(BaseException):
    """SIGTERM arrived before the event loop's own handler was installed."""


def diag(message: str) -> None:
    """Print one diagnostic line on stderr (passwords in URLs masked)."""
    try:
        sys.stderr.write(f"{PROG}: {mask_url(message)}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed: nothing sensible left to do
        pass


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Stop the command with a one-line error and exit status *code*."""
    raise CommandError(message, code)


def resolve_broker_url(given: str | None, default: str = DEFAULT_BROKER_URL) -> str:
    """``--broker``, else ``$AIOCELEV_BROKER_URL``, else *default*."""
    if given:
        return given
    return os.environ.get(ENV_BROKER_URL) or default


def add_broker_options(
    parser: argparse.ArgumentParser, *, default_hint: str = DEFAULT_BROKER_URL
) -> None:
    """The options every subcommand accepts: ``--broker``, ``--connect-timeout``, ``-v``."""
    group = parser.add_argument_group("broker")
    group.add_argument(
        "-b",
        "--broker",
        metavar="URL",
        help=f"broker URL (default: ${ENV_BROKER_URL}, else {default_hint})",
    )
    group.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=None,  # DEFAULT_CONNECT_TIMEOUT, unless given before the command
        metavar="SECONDS",
        help=f"give up if the broker cannot be reached within this time "
        f"(default: {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log the library's warnings (-v) or debug messages (-vv) on stderr",
    )


def add_event_source_options(parser: argparse.ArgumentParser) -> None:
    """``--filter``, ``--limit``, ``--timeout`` (shared by ``events`` and ``record``)."""
    parser.add_argument(
        "-f",
        "--filter",
        action="extend",
        nargs="+",
        metavar="ROUTING_KEY",
        help="only events matching these binding keys, e.g. 'task.#' 'worker.heartbeat' "
        "(default: '#', every event)",
    )
    parser.add_argument("-n", "--limit", type=positive_int, metavar="N", help="exit after N events")
    parser.add_argument(
        "-t",
        "--timeout",
        type=non_negative_float,
        metavar="SECONDS",
        help="exit after this many seconds (default: run until interrupted)",
    )


def take_file_after_filters(args: argparse.Namespace) -> None:
    """``record --filter KEY ... FILE``: the FILE that ``--filter`` took as its last key.

    ``--filter`` takes one or more keys, so a FILE written after them is read
    as one more key; when FILE is missing, the last key is the FILE.

    :raises CommandError: no FILE at all (exit status 2).
    """
    if args.file is None and args.filter:
        args.file = args.filter.pop()
    if args.file is None:
        fail(f"{args.command} needs FILE ('-' for stdout)", EXIT_USAGE)


def positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a number >= 0."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def format_timestamp(value: Any) -> str:
    """An epoch timestamp as a UTC date and time (``?`` when it is not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "?"
    try:
        return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f UTC")
    except (OverflowError, OSError, ValueError):
        return "?"


def require_rich(command: str, alternative: str = "") -> None:
    """Fail with one line when rich (the ``cli`` extra) is missing."""
    try:
        import rich  # noqa: F401
    except ImportError:
        fail(
            f"'aiocelev {command}' needs rich for its terminal view: "
            f"pip install 'aiocelev[cli]'{alternative}",
            EXIT_ERROR,
        )


def broker_reason(exc: BaseException) -> str:
    """Why a broker operation failed, in a few words and without the broker's URL.

    The first :attr:`~aiocelev.BrokerError.reason` along the chain of causes,
    else the error's own message.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BrokerError) and current.reason:
            return current.reason
        current = current.__cause__ or current.__context__
    return str(exc) or type(exc).__name__


async def connect_broker(url: str, timeout: float) -> Broker:
    """Open and connect the broker at *url*, or fail with one line.

    A broker that answers with an error (refused connection, refused login,
    unknown vhost...) fails at once with its reason; one that does not answer
    fails after *timeout* seconds.
    """
    broker = open_broker(url)
    try:
        with anyio.fail_after(timeout):
            await broker.connect()
    except TimeoutError:
        reason = f"no answer within {timeout:g}s (--connect-timeout)"
    except BrokerError as exc:
        reason = broker_reason(exc)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await broker.aclose()
        raise
    else:
        return broker
    with anyio.CancelScope(shield=True):
        await broker.aclose()
    fail(f"cannot connect to {mask_url(url)}: {reason}")


class MalformedReporter:
    """The receiver's ``on_error``: one diagnostic line per malformed message.

    After the first ``first`` lines only every ``every``-th message is reported
    (with the running count), so a flood does not drown the terminal.
    """

    def __init__(self, first: int = 20, every: int = 1000) -> None:
        self.count = 0
        self._first = first
        self._every = every

    def __call__(self, error: DecodeError, message: IncomingMessage) -> None:
        self.count += 1
        if self.count > self._first and self.count % self._every:
            return
        detail = error.detail if len(error.detail) <= 200 else error.detail[:197] + "..."
        total = f" ({self.count} so far)" if self.count > self._first else ""
        diag(
            f"skipped a malformed message (routing key {message.routing_key!r}): "
            f"{error.reason}: {detail}{total}"
        )


#: The routing key of every event Celery sends: its type with ``.`` for ``-``.
CELERY_KEYS = (
    "task.sent",
    "task.received",
    "task.started",
    "task.succeeded",
    "task.failed",
    "task.retried",
    "task.rejected",
    "task.revoked",
    "worker.online",
    "worker.heartbeat",
    "worker.offline",
)
#: Events that carry a task's name (kept for ``events``' text lines even when filtered out).
NAME_KEYS = ("task.received", "task.sent")
_WORD = re.compile(r"[a-z0-9_]+")


def _suggest(key: str) -> list[str]:
    """Celery keys (or patterns) *key* was probably meant to be."""
    fixed = re.sub(r"[-.]+", ".", key.strip().lower()).strip(".")
    words = fixed.split(".")
    if any(("*" in w or "#" in w) and w not in ("*", "#") for w in words):
        pattern = fixed.replace("#", "*")
        hits = [k for k in CELERY_KEYS if fnmatch.fnmatchcase(k, pattern)]
        if hits:
            return hits if len(hits) <= 3 else [f"{words[0].strip('*#')}.#"]
    if fixed in CELERY_KEYS or (fixed and all(_WORD.fullmatch(w) or w in "*#" for w in words)):
        return [fixed]
    return difflib.get_close_matches(fixed, CELERY_KEYS, n=1, cutoff=0.6)


def _did_you_mean(key: str) -> str:
    hints = _suggest(key)
    return f"; did you mean {' or '.join(hints)}?" if hints else ""


def check_filters(keys: Sequence[str]) -> None:
    """Reject binding keys that can never match an event, or say what they probably meant.

    A key is words joined by dots; a word is lower-case letters, digits and
    ``_``, or a whole-word wildcard (``*`` one word, ``#`` any number).
    Well-formed keys that match none of Celery's events are kept (custom events
    exist) with a note on stderr when they look like a typo.

    :raises CommandError: a malformed key (exit status 2).
    """
    for key in keys:
        words = key.split(".")
        if not key.strip():
            problem = "an empty key matches no event ('#' matches every event)"
        elif any(not w for w in words):
            problem = "a key has no empty words"
        elif any(("*" in w or "#" in w) and w not in ("*", "#") for w in words):
            problem = "'*' and '#' stand for whole words only"
        elif "-" in key:
            problem = "routing keys use '.' where event types use '-'"
        elif key != key.lower():
            problem = "event routing keys are lower case"
        elif not all(_WORD.fullmatch(w) or w in ("*", "#") for w in words):
            problem = "a word is letters, digits and '_', or a wildcard ('*' or '#')"
        else:
            matcher = compile_bindings([key])
            if not any(matcher(k) for k in CELERY_KEYS):
                hints = difflib.get_close_matches(key, CELERY_KEYS, n=1, cutoff=0.75)
                if hints:
                    diag(
                        f"note: --filter {key!r} matches no Celery event (custom events only); "
                        f"did you mean {hints[0]}?"
                    )
            continue
        fail(f"--filter {key!r}: {problem}{_did_you_mean(key)}", EXIT_USAGE)


def binding_keys(
    filters: Sequence[str] | None, *, names: bool = False
) -> tuple[tuple[str, ...], Callable[[str], bool] | None]:
    """The keys to bind for *filters*, and the per-event check they need (``None``: none).

    Workers batch task events into ``<group>.multi`` messages, whose routing key
    says nothing about the events inside: a filter like ``task.succeeded``
    therefore also binds ``task.multi``, and each event is then checked against
    the filters by the routing key it would have on its own.

    :param names: also bind the events that carry task names (``task-received``,
        ``task-sent``), so that a text formatter learns names of events it shows;
        the check still rejects them when *filters* do not match them.
    """
    keys = tuple(filters or ("#",))
    if "#" in keys:
        return ("#",), None
    check = compile_bindings(keys)
    extra: list[str] = []
    wanted = [*keys, *(k for k in NAME_KEYS if names and not check(k))]
    for key in wanted:
        first = key.split(".", 1)[0]
        multi = "#" if first == "#" else f"{first}.multi"
        for needed in (key, multi):
            if needed not in keys and needed not in extra:
                extra.append(needed)
    return (*keys, *extra), check


def open_receiver(
    args: argparse.Namespace,
    broker: Broker | None = None,
    *,
    names: bool = False,
    on_connection: Callable[[ConnectionStatus], None] | None = None,
) -> tuple[EventReceiver, Callable[[str], bool] | None]:
    """An :class:`EventReceiver` for the command's broker, filters and connect timeout.

    Also returns the check events must pass (see :func:`binding_keys`).

    :param broker: a connected broker (see :func:`connect_broker`); else the URL's.
    :param names: also receive the events that name tasks (see :func:`binding_keys`).
    :param on_connection: the receiver's ``on_connection`` callback.
    """
    check_filters(args.filter or ())
    keys, check = binding_keys(args.filter, names=names)
    receiver = EventReceiver(
        broker if broker is not None else resolve_broker_url(args.broker),
        routing_keys=keys,
        connect_timeout=args.connect_timeout,
        on_error=MalformedReporter(),
        on_connection=on_connection,
    )
    return receiver, check


@asynccontextmanager
async def event_source(
    args: argparse.Namespace, *, names: bool = False, report: bool = True
) -> AsyncIterator[tuple[EventReceiver, Callable[[str], bool] | None]]:
    """Connect to the command's broker and subscribe: ``(receiver, check)``.

    Every failure to start is one line (:class:`CommandError`): a malformed
    ``--filter`` (exit status 2), an unreachable broker, a refused subscription.

    :param names: see :func:`binding_keys`.
    :param report: say on stderr each time the connection is lost and back
        (see :class:`ConnectionReporter`).
    """
    check_filters(args.filter or ())
    url = resolve_broker_url(args.broker)
    broker = await connect_broker(url, args.connect_timeout)
    try:
        receiver, check = open_receiver(
            args, broker, names=names, on_connection=ConnectionReporter() if report else None
        )
        async with AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(receiver)
            except BrokerError as exc:
                fail(f"cannot subscribe to {mask_url(url)}: {broker_reason(exc)}")
            yield receiver, check
    finally:
        with anyio.CancelScope(shield=True):
            await broker.aclose()


class ConnectionReporter:
    """A receiver's ``on_connection``: one line on stderr per loss and per recovery."""

    def __call__(self, status: ConnectionStatus) -> None:
        diag(connection_line(status))


def connection_line(status: ConnectionStatus) -> str:
    """``disconnected from URL, reconnecting (gap #n): reason`` or ``reconnected to URL after Xs``."""
    if not status.connected:
        reason = f": {status.reason}" if status.reason else ""
        return f"disconnected from {status.broker}, reconnecting (gap #{status.gaps}){reason}"
    gap = f" after {format_duration(status.last_gap)}" if status.last_gap is not None else ""
    return f"reconnected to {status.broker}{gap} (gap #{status.gaps})"


def format_duration(seconds: float) -> str:
    """A duration as ``0.42s``, ``12.3s``, ``4m05s`` or ``2h03m``."""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def listening_line(
    receiver: EventReceiver, args: argparse.Namespace, doing: str = "listening on"
) -> str:
    """The diagnostic line saying what a command listens to (``listening on URL (...)``)."""
    keys = " ".join(args.filter or ("#",))
    url = receiver.broker.url
    line = f"{doing} {mask_url(url)} (events matching: {keys})"
    if scheme_of(url) == "memory":
        line += "; memory:// is local to this process: use a real broker to watch other processes"
    return line


class Style:
    """ANSI colours, only when the stream is a terminal and ``NO_COLOR`` is unset."""

    def __init__(self, stream: IO[str]) -> None:
        self.enabled = _wants_colour(stream)

    def __call__(self, text: str, code: str) -> str:
        """*text* wrapped in the SGR *code* (e.g. ``"1;36"``) when colour is on."""
        if not self.enabled:
            return text
        return f"\x1b[{code}m{text}\x1b[0m"


def _wants_colour(stream: IO[str]) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def configure_logging(verbosity: int) -> Callable[[], None]:
    """Send log records to stderr only on request (``-v``: warnings, ``-vv``: debug).

    The commands report what matters themselves, one line per problem, so by
    default nothing is logged: neither the library's retry notices nor the
    messages of the broker client libraries.  Returns a function that puts the
    logging configuration back as it was (``main()`` may run inside a program).
    """
    root = logging.getLogger()
    ours = logging.getLogger("aiocelev")
    saved = (root.level, ours.level)
    handler: logging.Handler
    if verbosity <= 0:
        handler = logging.NullHandler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_MaskingFormatter(f"{PROG}: %(name)s: %(levelname)s: %(message)s"))
    root.addHandler(handler)
    if verbosity >= 2:
        root.setLevel(logging.INFO)
        ours.setLevel(logging.DEBUG)
    else:
        root.setLevel(logging.WARNING)

    def restore() -> None:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        ours.setLevel(saved[1])

    return restore


class _MaskingFormatter(logging.Formatter):
    """Mask passwords in URLs of every log line."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_url(super().format(record))


class Context:
    """Handed to a running command: where to stop when a signal arrives.

    A command wraps its main loop in :meth:`interruptible`; SIGINT or SIGTERM
    then cancels that loop (the command still cleans up and may print a
    summary).  Without such a scope, the whole command is cancelled.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._scopes: list[anyio.CancelScope] = []
        self._root: anyio.CancelScope | None = None

    @property
    def interrupted(self) -> bool:
        """Whether a signal asked the command to stop."""
        return self.signum is not None

    @contextmanager
    def interruptible(self) -> Iterator[anyio.CancelScope]:
        """A cancel scope that a signal cancels (entered right away)."""
        with anyio.CancelScope() as scope:
            if self.signum is not None:
                scope.cancel()
            self._scopes.append(scope)
            try:
                yield scope
            finally:
                self._scopes.remove(scope)

    def _on_signal(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum
            if self._scopes:
                for scope in self._scopes:
                    scope.cancel()
                return
        # No interruptible loop, or a second signal: stop everything.
        if self._root is not None:
            self._root.cancel()


CommandFn = Callable[[argparse.Namespace, Context], Awaitable[int]]


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


async def _supervise(fn: CommandFn, args: argparse.Namespace, ctx: Context) -> int:
    result = EXIT_OK
    error: BaseException | None = None

    async def watch(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()
                async for signum in signals:
                    ctx._on_signal(int(signum))
        except (NotImplementedError, RuntimeError, ValueError):
            # e.g. Windows: Ctrl-C then arrives as KeyboardInterrupt.
            task_status.started()

    async def command() -> None:
        nonlocal result, error
        try:
            result = await fn(args, ctx)
        except Exception as exc:
            error = exc
        finally:
            tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        ctx._root = tg.cancel_scope
        if _in_main_thread():
            await tg.start(watch, name="aiocelev signal watcher")
        tg.start_soon(command, name=f"aiocelev {args.command}")
    if error is not None:
        raise _unwrap(error)
    if ctx.signum is not None:
        return 128 + ctx.signum
    return result


def _unwrap(exc: BaseException) -> BaseException:
    """The single error inside (nested) exception groups, else *exc* itself."""
    while True:
        inner = getattr(exc, "exceptions", None)
        if not isinstance(inner, tuple) or len(inner) != 1:
            return exc
        exc = inner[0]


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated()


def run_command(fn: CommandFn, args: argparse.Namespace) -> int:
    """Run an async command; turn errors and signals into one line and an exit status.

    * ``0``: done; ``1``: runtime or broker error; ``2``: usage or configuration error;
    * ``130`` / ``143``: stopped by SIGINT (Ctrl-C) / SIGTERM, after a clean shutdown.
    """
    restore_logging = configure_logging(getattr(args, "verbose", 0))
    ctx = Context()
    previous: Any = None
    main_thread = _in_main_thread()
    if main_thread:
        # Until the event loop installs its handler, SIGTERM unwinds like Ctrl-C.
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return anyio.run(_supervise, fn, args, ctx)
    except KeyboardInterrupt:
        return EXIT_SIGINT
    except _Terminated:
        return EXIT_SIGTERM
    except CommandError as exc:
        diag(f"error: {exc}")
        return exc.code
    except MissingDependencyError as exc:
        diag(f"error: {exc}")
        return EXIT_ERROR
    except ConfigurationError as exc:
        diag(f"error: {exc}")
        return EXIT_USAGE
    except (AiocelevError, BrokerError) as exc:
        diag(f"error: {exc}")
        return EXIT_ERROR
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_OK
    except OSError as exc:
        diag(f"error: {exc}")
        return EXIT_ERROR
    except Exception as exc:
        # A bug, not a user error: one line, the traceback only on request (-vv).
        if getattr(args, "verbose", 0) >= 2:
            traceback.print_exc()
        diag(f"error: unexpected {type(exc).__name__}: {exc} (run with -vv for details)")
        return EXIT_ERROR
    finally:
        restore_logging()
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _silence_stdout() -> None:
    """After a broken pipe (``aiocelev events | head``), stop Python's flush at exit failing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
