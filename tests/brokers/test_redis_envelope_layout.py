"""The kombu-layout fast path of the Redis envelope decoder changes no outcome.

An envelope laid out as kombu writes it (``{"body": "<base64>", ...}``) is
decoded without reading its body as a JSON string; anything else goes to the
general decoder.  For any payload, laid out that way or nearly, the result
(the message, or the error's reason and text) must be the general decoder's.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import given, settings, strategies as st

from aiocelev._exceptions import DecodeError
from aiocelev._message import IncomingMessage, OutgoingMessage
from aiocelev.brokers import _redis_envelope as envelope
from aiocelev.brokers._redis_envelope import decode_envelope, encode_envelope


def _outcome(decode: Any, payload: bytes) -> Any:
    try:
        message: IncomingMessage = decode(payload, "from.channel")
    except DecodeError as exc:
        return ("error", exc.reason, exc.detail)
    return (
        message.routing_key,
        message.body,
        message.content_type,
        message.content_encoding,
        dict(message.headers),
    )


def _same(payload: bytes) -> None:
    assert _outcome(decode_envelope, payload) == _outcome(envelope._decode_general, payload)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)

_bodies = st.one_of(
    st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
    st.text(max_size=20),  # not base64, escapes, non-ASCII, quotes
    st.sampled_from(["", "=", "QQ", "QQ==", "QQ==QQ==", "Q Q==", "QQ==\n", 'a"b', "a\\\\b"]),
)

_encodings = st.sampled_from(["base64", "BASE64", "utf-8", "UTF-8", "", None, 0, 1, ["base64"]])


@st.composite
def _envelopes(draw: st.DrawFn) -> bytes:
    env: dict[str, Any] = {"body": draw(_bodies)}
    if draw(st.booleans()):
        env["content-encoding"] = draw(st.sampled_from(["utf-8", "binary", None, 3]))
    if draw(st.booleans()):
        env["content-type"] = draw(st.sampled_from(["application/json", None, 1]))
    if draw(st.booleans()):
        env["headers"] = draw(st.one_of(st.dictionaries(st.text(max_size=4), _json), _json))
    props: dict[str, Any] = {}
    if draw(st.booleans()):
        props["body_encoding"] = draw(_encodings)
    if draw(st.booleans()):
        props["delivery_info"] = draw(
            st.one_of(
                st.fixed_dictionaries(
                    {"exchange": st.just("celeryev"), "routing_key": st.text(max_size=12) | _json}
                ),
                _json,
            )
        )
    if draw(st.booleans()):
        env["properties"] = props
    elif draw(st.booleans()):
        env["properties"] = draw(_json)
    if draw(st.booleans()):
        env["extra"] = draw(_json)
    separators = draw(st.sampled_from([(", ", ": "), (",", ":"), (" , ", " : ")]))
    text = json.dumps(env, separators=separators, ensure_ascii=draw(st.booleans()))
    payload = text.encode("utf-8", "surrogatepass")
    # A few corruptions: a duplicate body, a trailing comma, truncation, bytes spliced in.
    kind = draw(st.sampled_from(["none"] * 6 + ["dup", "comma", "cut", "splice"]))
    if kind == "dup" and payload.endswith(b"}"):
        payload = payload[:-1] + b', "body": ' + json.dumps(draw(_bodies)).encode() + b"}"
    elif kind == "comma" and payload.endswith(b"}"):
        payload = payload[:-1] + draw(st.sampled_from([b",}", b", }", b",\n}"]))
    elif kind in ("cut", "splice"):
        payload = _cut_or_splice(draw, payload, kind, 3)
    return payload


def _cut_or_splice(draw: st.DrawFn, payload: bytes, kind: str, most: int) -> bytes:
    """*payload* truncated ("cut") or with 1 to *most* bytes spliced in ("splice")."""
    if kind == "cut":
        return payload[: draw(st.integers(0, len(payload)))]
    at = draw(st.integers(0, len(payload)))
    return payload[:at] + draw(st.binary(min_size=1, max_size=most)) + payload[at:]


@settings(max_examples=1500, deadline=None)
@given(_envelopes())
def test_the_fast_path_decides_as_the_general_decoder(payload: bytes) -> None:
    _same(payload)


@st.composite
def _kombu_like(draw: st.DrawFn) -> bytes:
    """What the fast path takes, then one change that may or may not break it."""
    props = {
        "delivery_mode": 1,
        "delivery_info": {"exchange": "celeryev", "routing_key": draw(st.text(max_size=6))},
        "priority": 0,
        "body_encoding": draw(st.sampled_from(["base64", "base64", "utf-8", None])),
        "delivery_tag": "t",
    }
    body = base64.b64encode(draw(st.binary(max_size=30))).decode()
    payload = json.dumps(
        {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": draw(st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)),
            "properties": props,
        }
    ).encode()
    change = draw(
        st.sampled_from(["none", "dup", "dup-null", "comma", "only-body", "cut", "splice"])
    )
    if change == "dup":
        payload = payload[:-1] + b', "body": "' + base64.b64encode(b"other") + b'"}'
    elif change == "dup-null":
        payload = payload[:-1] + b', "body": null}'
    elif change == "comma":
        payload = payload[:-1] + draw(st.sampled_from([b",}", b", }", b",,}"]))
    elif change == "only-body":
        payload = b'{"body": "' + body.encode() + draw(st.sampled_from([b'"}', b'",}', b'" , }']))
    elif change in ("cut", "splice"):
        payload = _cut_or_splice(draw, payload, change, 2)
    return payload


@settings(max_examples=800, deadline=None)
@given(_kombu_like())
def test_near_kombu_envelopes_decide_as_the_general_decoder(payload: bytes) -> None:
    _same(payload)


def test_a_second_body_is_left_to_the_general_decoder() -> None:
    first, second = base64.b64encode(b"first").decode(), base64.b64encode(b"second").decode()
    payload = (
        f'{{"body": "{first}", "properties": {{"body_encoding": "base64"}}, "body": "{second}"}}'
    ).encode()
    _same(payload)


@given(st.binary(max_size=40))
def test_arbitrary_bytes_after_the_prefix(tail: bytes) -> None:
    _same(b'{"body": "' + tail)


def test_kombu_envelopes_take_the_fast_path(monkeypatch: Any) -> None:
    # What the adapter and kombu write is decoded without the general decoder.
    payload = encode_envelope(OutgoingMessage("task.multi", b'[{"type": "x"}]'), "celeryev")

    def refuse(*_args: Any) -> Any:
        raise AssertionError("the general decoder was used")

    monkeypatch.setattr(envelope, "_decode_general", refuse)
    message = decode_envelope(payload, "")
    assert message.body == b'[{"type": "x"}]'
    assert message.routing_key == "task.multi"
