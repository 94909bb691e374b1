"""The wire codec: events <-> message bodies.

Encoding reproduces what Celery (kombu's JSON serializer) puts on the wire:
``json.dumps`` with its default ``", "`` / ``": "`` separators, ASCII escaping,
keys in insertion order.  Decoding uses msgspec's JSON decoder on the hot path:
as fast as any, and exact for integers of any size, as Celery's decoder is.
Only JSON is ever deserialised: any other content type is refused with
:class:`~aiocelev.DecodeError` before its body is looked at.  Broker framing
(kombu's Redis envelope) is the adapters' business: bodies arrive here plain.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from ._events import Event
from ._exceptions import DecodeError
from ._message import IncomingMessage

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "decode_message",
    "dumps",
    "dumps_plain",
    "element_error",
    "encode_batch",
    "encode_event",
    "loads",
    "not_an_event",
    "parse_message",
    "plain_values",
    "validate_event",
]

#: Default limit on one message body, in bytes (a Celery batch of 24 failures with
#: long tracebacks stays far below it).
DEFAULT_MAX_MESSAGE_SIZE = 8 * 1024 * 1024

_ACCEPTED_CONTENT_TYPES = frozenset({"application/json", "", None})
_ACCEPTED_ENCODINGS = frozenset({"utf-8", "utf8", "UTF-8", "", None})


def _kombu_default(obj: Any) -> Any:
    """Encode the non-JSON types kombu >= 5.3 knows, the way it does."""
    if isinstance(obj, datetime.datetime):
        return {"__type__": "datetime", "__value__": obj.isoformat()}
    if isinstance(obj, datetime.date):
        return {"__type__": "date", "__value__": obj.isoformat()}
    if isinstance(obj, datetime.time):
        return {"__type__": "time", "__value__": obj.isoformat()}
    if isinstance(obj, decimal.Decimal):
        return {"__type__": "decimal", "__value__": str(obj)}
    if isinstance(obj, uuid.UUID):
        return {"__type__": "uuid", "__value__": {"hex": obj.hex}}
    if isinstance(obj, (bytes, bytearray, memoryview)):
        raw = bytes(obj)
        try:
            return {"__type__": "bytes", "__value__": raw.decode("utf-8")}
        except UnicodeDecodeError:
            return {"__type__": "base64", "__value__": base64.b64encode(raw).decode("ascii")}
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    json_method = getattr(obj, "__json__", None)
    if callable(json_method):
        return json_method()
    raise TypeError(f"Object of type {obj.__class__.__name__} is not JSON serializable")


_encoder = json.JSONEncoder(default=_kombu_default)


def _make_fast_dumps() -> Callable[[Any], str]:
    """``_encoder.encode`` without building a new C encoder on every call.

    ``JSONEncoder.encode`` creates its C iterencoder per call, which is a large
    share of encoding one small event.  The C encoder built once here, with the
    same settings (kombu's separators, ASCII escapes, ``_kombu_default``), gives
    the same bytes.  Without a C accelerator, fall back to ``encode``.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has it
        return _encoder.encode
    try:
        iterencode = make(
            None,  # no circular-reference markers: a cycle ends in RecursionError
            _kombu_default,
            json.encoder.encode_basestring_ascii,
            None,
            ": ",
            ", ",
            False,
            False,
            True,
        )
    except TypeError:  # pragma: no cover - a future signature change
        return _encoder.encode
    plain = (str, int, float)
    join = "".join

    def fast_dumps(obj: Any) -> str:
        if isinstance(obj, plain) or obj is None or obj is True or obj is False:
            return _encoder.encode(obj)
        if type(obj) is dict and _plain_tree(obj, 0):
            # msgspec writes such a tree exactly as kombu does (see dumps_plain),
            # several times faster: e.g. kombu's Redis envelope of a large batch.
            try:
                out = _dumps_plain_dict(obj)
            except UnicodeEncodeError:
                pass  # a lone surrogate: the standard library escapes it, as kombu's
            else:
                if out.isascii() and b"\x7f" not in out:
                    return out.decode("ascii")
        try:
            return join(iterencode(obj, 0))
        except RecursionError:
            raise ValueError("Circular reference detected") from None

    return fast_dumps


dumps: Callable[[Any], str] = _make_fast_dumps()
"""Serialise exactly as kombu's JSON serializer does (a ``str``)."""

_msgspec_encode = msgspec.json.Encoder().encode
_msgspec_format = msgspec.json.format
_INT_MIN, _INT_MAX = -(2**63), 2**64


def plain_values(values: Iterable[Any]) -> bool:
    """Whether every value is one :func:`dumps_plain` writes exactly as kombu does.

    Strings, bools, ``None``, 64-bit integers, floats written without an exponent
    (zero, or a magnitude in ``[1e-4, 1e16)``), and lists or tuples of those.
    Anything else (nested objects, datetimes, floats like ``1e-05``) goes through
    :func:`dumps`.  Inlined type tests: this runs for every event sent.
    """
    for v in values:
        t = type(v)
        if t is str or t is bool or v is None:
            continue
        if t is int:
            if _INT_MIN <= v < _INT_MAX:
                continue
            return False
        if t is float:
            if v == 0.0 or 1e-4 <= (v if v > 0.0 else -v) < 1e16:
                continue
            return False
        if t is list or t is tuple:
            for x in v:
                tx = type(x)
                if tx is str or tx is bool or x is None:
                    continue
                if tx is int:
                    if _INT_MIN <= x < _INT_MAX:
                        continue
                    return False
                if tx is float:
                    if x == 0.0 or 1e-4 <= (x if x > 0.0 else -x) < 1e16:
                        continue
                    return False
                return False
            continue
        return False
    return True


#: Deepest nesting of dicts and lists :func:`dumps` writes with msgspec (a cycle
#: ends there and takes the standard library's path, which reports it).
_MAX_PLAIN_DEPTH = 16


def _plain_tree(obj: Any, depth: int) -> bool:
    """Whether *obj*, a dict, list or tuple, holds only plain values at any depth.

    Plain as in :func:`plain_values`, with dicts (string keys only) and lists
    nested up to :data:`_MAX_PLAIN_DEPTH` deep.
    """
    if depth > _MAX_PLAIN_DEPTH:
        return False
    if type(obj) is dict:
        for k in obj:
            if type(k) is not str:
                return False
        values: Iterable[Any] = obj.values()
    else:
        values = obj
    for v in values:
        t = type(v)
        if t is str or t is bool or v is None:
            continue
        if t is int:
            if _INT_MIN <= v < _INT_MAX:
                continue
            return False
        if t is float:
            if v == 0.0 or 1e-4 <= (v if v > 0.0 else -v) < 1e16:
                continue
            return False
        if (t is dict or t is list or t is tuple) and _plain_tree(v, depth + 1):
            continue
        return False
    return True


def _dumps_plain_dict(obj: dict[str, Any]) -> bytes:
    """A dict of plain trees in kombu's layout, member by member.

    A scalar's compact JSON is already kombu's, so only nested dicts and lists
    go through msgspec's formatter: a long string (a base64 body) is then
    scanned once, not once more by the formatter.  May not be ASCII (the
    caller checks).
    """
    parts = []
    for k, v in obj.items():
        t = type(v)
        if t is dict or t is list or t is tuple:
            value = _msgspec_format(_msgspec_encode(v), indent=0)
        else:
            value = _msgspec_encode(v)
        parts.append(_msgspec_encode(k) + b": " + value)
    return b"{" + b", ".join(parts) + b"}"


def dumps_plain(obj: Any) -> bytes:
    """Serialise plain values (see :func:`plain_values`) to kombu's exact bytes, fast.

    msgspec's encoder plus its one-line formatter give the standard library's
    ``", "`` / ``": "`` layout at a fraction of the cost; output that is not pure
    ASCII or holds a DEL character (which kombu escapes) is written again by
    :func:`dumps`, and so is a string holding a lone surrogate (which msgspec
    cannot encode and kombu escapes).
    """
    try:
        out = _msgspec_format(_msgspec_encode(obj), indent=0)
    except UnicodeEncodeError:
        return dumps(obj).encode("ascii")
    if out.isascii() and b"\x7f" not in out:
        return out
    return dumps(obj).encode("ascii")


def encode_event(event: Mapping[str, Any] | Event) -> bytes:
    """The body of a single-event message."""
    data = event._fields if isinstance(event, Event) else event
    return dumps(data).encode("ascii")


def encode_batch(events: Iterable[Mapping[str, Any] | Event]) -> bytes:
    """The body of a batched (``<group>.multi``) message: a JSON array."""
    return dumps([e._fields if isinstance(e, Event) else e for e in events]).encode("ascii")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_decode = msgspec.json.Decoder().decode


def _may_have_surrogate_escape(body: bytes | bytearray | str) -> bool:
    """Whether *body* contains a ``\\uD...`` escape (a UTF-16 surrogate, maybe a lone one)."""
    if isinstance(body, str):
        return "\\ud" in body or "\\uD" in body
    return b"\\ud" in body or b"\\uD" in body


def loads(body: bytes | str) -> Any:
    """Parse JSON (only JSON), raising :class:`DecodeError` with reason ``json`` or ``encoding``.

    Integers of any size keep their exact value, as in Celery's decoder.
    """
    try:
        return _decode(body)
    except UnicodeDecodeError as exc:
        raise DecodeError("encoding", f"body is not valid UTF-8: {exc}") from None
    except RecursionError:
        raise DecodeError("json", "body is not valid JSON: nested too deeply") from None
    except msgspec.ValidationError:
        pass  # a number beyond float range (1e400): valid JSON, let the standard library decide
    except msgspec.DecodeError as exc:
        if isinstance(body, (bytes, bytearray)):
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as uexc:
                raise DecodeError("encoding", f"body is not valid UTF-8: {uexc}") from None
        if not _may_have_surrogate_escape(body):
            raise DecodeError("json", f"body is not valid JSON: {exc}") from None
        # Lone surrogate escapes ("\ud800") are valid JSON that msgspec refuses;
        # Celery's decoder keeps them (e.g. file names decoded with surrogateescape).
    try:
        text = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise DecodeError("json", f"body is not valid JSON: {exc}") from None


def validate_event(obj: Any) -> str | None:
    """Why *obj* is not an event dict, or ``None`` when it is one.

    An event is a JSON object with a string ``type``, a string ``hostname`` and
    a numeric ``timestamp`` (what Celery's own receiver and ``State`` need).
    """
    if type(obj) is not dict:
        return f"expected a JSON object, got {type(obj).__name__}"
    type_ = obj.get("type")
    if type(type_) is not str or not type_:
        return "event has no string 'type'"
    if type(obj.get("hostname")) is not str:
        return f"{type_} event has no string 'hostname'"
    ts = obj.get("timestamp")
    if type(ts) is not float and type(ts) is not int:
        return f"{type_} event has no numeric 'timestamp'"
    return None


_MAX_DISTINCT_ERRORS = 64
_MORE_ERRORS = "batch element is not an event (many elements of this batch are not events)"


def parse_message(message: IncomingMessage, *, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> Any:
    """The parsed JSON body of *message*, after the checks of the message as a whole.

    What :func:`decode_message` does before it looks at the events: the
    adapter's framing error, the size limit, the content type and encoding.

    :raises DecodeError: when the message as a whole cannot be decoded.
    """
    if message.error is not None:
        # the adapter could not take the broker's framing apart
        raise message.error
    body = message.body
    if len(body) > max_size:
        raise DecodeError("too-large", f"message of {len(body)} bytes exceeds {max_size}")
    if message.content_type not in _ACCEPTED_CONTENT_TYPES:
        raise DecodeError(
            "content-type",
            f"refusing to deserialise content type {message.content_type!r}: only JSON is accepted",
        )
    if message.content_encoding not in _ACCEPTED_ENCODINGS:
        raise DecodeError("content-type", f"refusing content encoding {message.content_encoding!r}")
    return loads(body)


def element_error(why: str, errors: dict[str, DecodeError]) -> DecodeError:
    """The error for a batch element that is not an event, shared per reason in *errors*.

    One error object per distinct reason, and a shared one past a few dozen: a
    hostile batch of millions of scalars must not cost an object each.
    """
    error = errors.get(why)
    if error is None:
        if len(errors) >= _MAX_DISTINCT_ERRORS:
            why = _MORE_ERRORS
            error = errors.get(why)
        if error is None:
            error = errors[why] = DecodeError("not-an-event", why)
    return error


def not_an_event(obj: Any) -> DecodeError:
    """The error for a message whose body is neither an event nor an array."""
    return DecodeError("not-an-event", f"expected a JSON object or array, got {type(obj).__name__}")


def decode_message(
    message: IncomingMessage, *, max_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> tuple[list[dict[str, Any]], list[DecodeError]]:
    """Decode a message into wire dicts.

    Returns the valid event dicts in order, and one :class:`DecodeError` per
    element of a batch that is not an event (the valid ones are still returned;
    elements failing for the same reason share one error object).

    :raises DecodeError: when the message as a whole cannot be decoded.
    """
    obj = parse_message(message, max_size=max_size)
    if type(obj) is dict:
        why = validate_event(obj)
        if why is not None:
            raise DecodeError("not-an-event", why)
        return [obj], []
    if type(obj) is list:
        good: list[dict[str, Any]] = []
        bad: list[DecodeError] = []
        errors: dict[str, DecodeError] = {}
        for item in obj:
            why = validate_event(item)
            if why is None:
                good.append(item)
                continue
            bad.append(element_error(why, errors))
        return good, bad
    raise not_an_event(obj)
