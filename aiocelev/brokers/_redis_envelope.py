"""kombu's virtual-transport envelope: what a message looks like on Redis.

kombu's Redis transport does not send a message body as it is: it wraps it in
a JSON object (``body`` in base64, ``content-type``, ``content-encoding``,
``headers`` and ``properties`` with ``delivery_info``), and that object is what
``PUBLISH`` (events, remote-control requests) and ``LPUSH`` (remote-control
replies) carry.  This module is the only place that knows the framing: the
adapter hands plain bodies up and takes plain bodies down.

Decoding is done once, with msgspec into a typed structure (fast path); an
envelope the fast path does not accept is decoded again by the general JSON
decoder, only to tell exactly what is wrong with it (or to accept what the
fast path cannot represent, such as lone surrogate escapes in headers).
"""

from __future__ import annotations

import base64
import binascii
import sys
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from .._codec import dumps, loads
from .._exceptions import DecodeError
from .._message import IncomingMessage, OutgoingMessage, incoming_message

__all__ = ["decode_envelope", "encode_envelope", "unwrap_envelope"]

#: The reason a message with a malformed envelope is counted under.
ENVELOPE_REASON = "envelope"

if sys.version_info >= (3, 11):

    def _b64decode_stdlib(text: str | bytes | memoryview) -> bytes:
        return binascii.a2b_base64(text, strict_mode=True)

else:  # pragma: no cover - Python 3.10

    def _b64decode_stdlib(text: str | bytes | memoryview) -> bytes:
        return base64.b64decode(text, validate=True)


def _simd_b64decode() -> Callable[[str | bytes | memoryview], bytes] | None:
    """pybase64's SIMD decoder with validation, if installed (the ``redis`` extra has it).

    About 15 times faster than the standard library on an event batch's
    body.  What it accepts, the strict standard decoder accepts too, with the
    same bytes; it refuses a few odd strings the standard decoder takes (a
    ``=`` after a complete quantum), so a refusal is decided by the standard
    decoder: the outcome is always exactly ``a2b_base64(strict_mode=True)``'s
    (tests/brokers/test_redis_envelope_base64.py).
    """
    try:
        from pybase64 import b64decode
    except ImportError:  # pragma: no cover - the redis extra installs it
        return None

    def decode(text: str | bytes | memoryview) -> bytes:
        try:
            return b64decode(text, validate=True)
        except ValueError:  # binascii.Error included
            return _b64decode_stdlib(text)

    return decode


#: Decodes a base64 body strictly: pybase64 when installed, else the standard library.
_b64decode: Callable[[str | bytes | memoryview], bytes] = _simd_b64decode() or _b64decode_stdlib


def encode_envelope(
    message: OutgoingMessage, exchange: str, delivery_tag: str | None = None
) -> bytes:
    """Wrap *message* in kombu's envelope, byte for byte as kombu's Redis transport does.

    :param exchange: the exchange named in ``properties.delivery_info``.
    :param delivery_tag: defaults to a fresh uuid4 string, as kombu's.
    """
    envelope = {
        "body": base64.b64encode(message.body).decode("ascii"),
        "content-encoding": message.content_encoding,
        "content-type": message.content_type,
        "headers": dict(message.headers),
        "properties": {
            "delivery_mode": message.delivery_mode,
            "delivery_info": {"exchange": exchange, "routing_key": message.routing_key},
            "priority": message.priority,
            "body_encoding": "base64",
            "delivery_tag": delivery_tag if delivery_tag is not None else str(uuid.uuid4()),
        },
    }
    return dumps(envelope).encode("ascii")


# -- decoding -----------------------------------------------------------------------


class _Properties(msgspec.Struct):
    body_encoding: Any = None
    delivery_info: Any = None


class _Fields(msgspec.Struct, kw_only=True):
    """What an envelope holds besides its body."""

    properties: _Properties
    headers: Any = None
    content_type: Any = msgspec.field(default=None, name="content-type")
    content_encoding: Any = msgspec.field(default=None, name="content-encoding")


class _Envelope(_Fields, kw_only=True):
    body: str


_decode_fast: Callable[[bytes], _Envelope] = msgspec.json.Decoder(_Envelope).decode


def _message(body: str, env: _Fields, routing_key: str) -> IncomingMessage:
    # As kombu: base64 only when a body encoding other than UTF-8 is named.
    if _is_base64(env.properties.body_encoding):
        try:
            raw = _b64decode(body)
        except (binascii.Error, ValueError) as exc:
            raise DecodeError(
                ENVELOPE_REASON, f"Redis envelope body is not base64: {exc}"
            ) from None
    else:
        raw = body.encode("utf-8", "surrogatepass")
    return _incoming(raw, env, routing_key)


def _is_base64(body_encoding: Any) -> bool:
    return bool(body_encoding) and not (
        type(body_encoding) is str and body_encoding.lower() == "utf-8"
    )


def _incoming(raw: bytes, env: _Fields, routing_key: str) -> IncomingMessage:
    delivery_info = env.properties.delivery_info
    if type(delivery_info) is dict:
        key = delivery_info.get("routing_key")
        if type(key) is str:
            routing_key = key
    content_type, content_encoding, headers = env.content_type, env.content_encoding, env.headers
    return incoming_message(
        routing_key,
        raw,
        content_type if type(content_type) is str else None,
        content_encoding if type(content_encoding) is str else None,
        headers if type(headers) is dict else {},
    )


# kombu writes the body first: ``{"body": "<base64>", "content-encoding": ...}``.
_BODY_PREFIX = b'{"body": "'
_BODY_AT = len(_BODY_PREFIX)
_JSON_SPACE = b" \t\r\n"


class _Rest(_Fields, kw_only=True):
    """The envelope without its leading body (a second ``body`` key is noticed)."""

    body: Any = msgspec.UNSET


_decode_rest: Callable[[bytes], _Rest] = msgspec.json.Decoder(_Rest).decode


def _decode_kombu_layout(payload: bytes, routing_key: str) -> IncomingMessage | None:
    """kombu's layout with a base64 body, decoded without reading the body as a JSON string.

    The body (most of the payload) is sliced out between its quotes and
    handed to the base64 decoder as bytes; only the rest is parsed as JSON.
    ``None`` when anything differs from that layout (another key order,
    another body encoding, a second ``body``, a body base64 refuses, escapes
    and non-ASCII bytes included, JSON that does not parse): the general
    decoder then decides, so what is accepted and what is refused, and why,
    is exactly as without this path.
    """
    end = payload.find(b'"', _BODY_AT)
    if end < 0:
        return None
    # Not copied; base64 refuses what a JSON string would escape, and non-ASCII.
    body = memoryview(payload)[_BODY_AT:end]
    after = payload[end + 1 :].lstrip(_JSON_SPACE)
    if after[:1] == b",":
        after = after[1:]  # the rest as an object of its own: "{" + its keys
    elif after[:1] != b"}":
        return None
    try:
        env = _decode_rest(b"{" + after)
    except (msgspec.MsgspecError, ValueError, RecursionError):
        return None
    if env.body is not msgspec.UNSET or not _is_base64(env.properties.body_encoding):
        return None
    try:
        raw = _b64decode(body)
    except (binascii.Error, ValueError):
        return None
    return _incoming(raw, env, routing_key)


def _decode_slow(payload: bytes, routing_key: str) -> IncomingMessage:
    """The general decoder: exact errors, and what the typed fast path cannot hold."""
    try:
        env = loads(payload)
    except DecodeError as exc:
        raise DecodeError(ENVELOPE_REASON, f"Redis envelope is not JSON: {exc.detail}") from None
    if type(env) is not dict:
        raise DecodeError(ENVELOPE_REASON, "Redis envelope is not a JSON object")
    body = env.get("body")
    props = env.get("properties")
    if type(body) is not str:
        raise DecodeError(ENVELOPE_REASON, "Redis envelope has no string 'body'")
    if type(props) is not dict:
        raise DecodeError(ENVELOPE_REASON, "Redis envelope has no 'properties' object")
    fields = _Fields(
        properties=_Properties(
            body_encoding=props.get("body_encoding"), delivery_info=props.get("delivery_info")
        ),
        headers=env.get("headers"),
        content_type=env.get("content-type"),
        content_encoding=env.get("content-encoding"),
    )
    return _message(body, fields, routing_key)


def decode_envelope(payload: bytes, routing_key: str = "") -> IncomingMessage:
    """Unwrap one envelope: the message with its own body, headers and routing key.

    :param routing_key: used when the envelope names none (``delivery_info``).
    :raises DecodeError: reason ``envelope`` when the envelope is malformed.
    """
    if payload.startswith(_BODY_PREFIX):
        message = _decode_kombu_layout(payload, routing_key)
        if message is not None:
            return message
    return _decode_general(payload, routing_key)


def _decode_general(payload: bytes, routing_key: str) -> IncomingMessage:
    """:func:`decode_envelope` for any layout: a typed decode, else the general decoder."""
    try:
        env = _decode_fast(payload)
    except (msgspec.MsgspecError, ValueError, RecursionError):
        return _decode_slow(payload, routing_key)
    return _message(env.body, env, routing_key)


def unwrap_envelope(payload: bytes, routing_key: str) -> IncomingMessage:
    """Like :func:`decode_envelope`, but never raises.

    A malformed envelope gives a message whose :attr:`~IncomingMessage.error`
    says why (reason ``envelope``), with the raw payload as body and
    *routing_key*: the receiver counts and reports it, and the stream goes on.
    """
    try:
        return decode_envelope(payload, routing_key)
    except DecodeError as exc:
        return IncomingMessage(
            routing_key=routing_key,
            body=payload,
            content_type=None,
            content_encoding=None,
            error=exc,
        )
