"""kombu's Redis envelope, inside the Redis adapter: byte-exact wrapping, lenient unwrapping,
malformed envelopes reported (reason ``envelope``) instead of raised."""

from __future__ import annotations

import base64
import json
import pickle
import uuid
from typing import Any

import pytest

from aiocelev import DecodeError, IncomingMessage, OutgoingMessage
from aiocelev._codec import decode_message, encode_batch, encode_event
from aiocelev.brokers._redis_envelope import decode_envelope, encode_envelope, unwrap_envelope

from ..test_codec import EXAMPLE_EVENT, EXAMPLE_SINGLE, _SideEffect

# The worked example of the protocol reference, section 2.6.
EXAMPLE_TAG = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
EXAMPLE_ENVELOPE = (
    b'{"body": "W3siaG9zdG5hbWUiOiAiY2VsZXJ5QHdvcmtlcjEiLCAidXRjb2Zmc2V0IjogMCwgInBpZCI6IDQyNDIs'
    b"ICJjbG9jayI6IDE3LCAidXVpZCI6ICI1YjFkNGMyZS04ZjNhLTRhNTEtOWMzZS0wZDdlNmYxYTJiM2MiLCAicmVzdWx0"
    b"IjogIjQiLCAicnVudGltZSI6IDAuMDEyMywgInRpbWVzdGFtcCI6IDE3NjcyMjU2MDAuMTIzNDU2LCAidHlwZSI6ICJ0"
    b'YXNrLXN1Y2NlZWRlZCJ9XQ==", "content-encoding": "utf-8", "content-type": "application/json", '
    b'"headers": {"hostname": "celery@worker1"}, "properties": {"delivery_mode": 1, '
    b'"delivery_info": {"exchange": "celeryev", "routing_key": "task.multi"}, "priority": 0, '
    b'"body_encoding": "base64", "delivery_tag": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"}}'
)
EXAMPLE_SINGLE_B64 = (
    "eyJob3N0bmFtZSI6ICJjZWxlcnlAd29ya2VyMSIsICJ1dGNvZmZzZXQiOiAwLCAicGlkIjogNDI0MiwgImNsb2NrIjog"
    "MTcsICJ1dWlkIjogIjViMWQ0YzJlLThmM2EtNGE1MS05YzNlLTBkN2U2ZjFhMmIzYyIsICJyZXN1bHQiOiAiNCIsICJy"
    "dW50aW1lIjogMC4wMTIzLCAidGltZXN0YW1wIjogMTc2NzIyNTYwMC4xMjM0NTYsICJ0eXBlIjogInRhc2stc3VjY2Vl"
    "ZGVkIn0="
)


def _single(event: dict[str, Any]) -> OutgoingMessage:
    key = event["type"].replace("-", ".")
    return OutgoingMessage(key, encode_event(event), {"hostname": event["hostname"]})


def test_envelope_worked_example_is_byte_identical() -> None:
    message = OutgoingMessage(
        routing_key="task.multi",
        body=encode_batch([EXAMPLE_EVENT]),
        headers={"hostname": "celery@worker1"},
    )
    payload = encode_envelope(message, "celeryev", delivery_tag=EXAMPLE_TAG)
    assert payload == EXAMPLE_ENVELOPE
    assert len(payload) == 614


def test_envelope_single_form_body() -> None:
    payload = encode_envelope(_single(EXAMPLE_EVENT), "celeryev", delivery_tag=EXAMPLE_TAG)
    env = json.loads(payload)
    assert env["body"] == EXAMPLE_SINGLE_B64
    assert env["properties"]["delivery_info"] == {
        "exchange": "celeryev",
        "routing_key": "task.succeeded",
    }
    assert len(payload) == 614


def test_envelope_default_delivery_tag_is_fresh_uuid() -> None:
    message = _single(EXAMPLE_EVENT)
    tags = {
        json.loads(encode_envelope(message, "celeryev"))["properties"]["delivery_tag"]
        for _ in range(3)
    }
    assert len(tags) == 3
    for tag in tags:
        uuid.UUID(tag)


def test_envelope_round_trip() -> None:
    incoming = decode_envelope(encode_envelope(_single(EXAMPLE_EVENT), "celeryev"))
    assert incoming.routing_key == "task.succeeded"
    assert incoming.body == EXAMPLE_SINGLE
    assert incoming.content_type == "application/json"
    assert incoming.content_encoding == "utf-8"
    assert dict(incoming.headers) == {"hostname": "celery@worker1"}
    assert incoming.error is None


def test_unwrapped_worked_example_decodes_to_the_event() -> None:
    message = unwrap_envelope(EXAMPLE_ENVELOPE, "ignored.when.the.envelope.names.one")
    assert message.routing_key == "task.multi"
    assert message.body == b"[" + EXAMPLE_SINGLE + b"]"
    events, errors = decode_message(message)
    assert events == [EXAMPLE_EVENT]
    assert errors == []


def test_routing_key_from_the_channel_when_the_envelope_names_none() -> None:
    env = {"body": "e30=", "properties": {"body_encoding": "base64"}}
    assert unwrap_envelope(json.dumps(env).encode(), "worker.online").routing_key == (
        "worker.online"
    )
    env["properties"] = {"body_encoding": "base64", "delivery_info": {"routing_key": 5}}
    assert decode_envelope(json.dumps(env).encode()).routing_key == ""


@pytest.mark.parametrize("props", [{}, {"body_encoding": None}, {"body_encoding": "UTF-8"}])
def test_envelope_body_used_as_is_unless_an_encoding_is_named(props: dict[str, Any]) -> None:
    # kombu base64-decodes only when properties.body_encoding names a non-UTF-8 codec
    env = {"body": EXAMPLE_SINGLE.decode(), "content-type": "application/json", "properties": props}
    incoming = decode_envelope(json.dumps(env).encode())
    assert incoming.body == EXAMPLE_SINGLE
    events, _ = decode_message(unwrap_envelope(json.dumps(env).encode(), ""))
    assert events == [EXAMPLE_EVENT]


def test_envelope_utf8_body_encoding() -> None:
    env = {
        "body": EXAMPLE_SINGLE.decode(),
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "properties": {"body_encoding": "utf-8", "delivery_info": {"routing_key": "task.x"}},
    }
    incoming = decode_envelope(json.dumps(env).encode())
    assert incoming.body == EXAMPLE_SINGLE
    assert incoming.routing_key == "task.x"
    assert dict(incoming.headers) == {}  # headers may be absent


@pytest.mark.parametrize(
    "env",
    [
        # odd but accepted, as kombu would: wrong types where kombu does not look
        {"body": "e30=", "properties": {"body_encoding": "base64"}, "headers": [1]},
        {"body": "e30=", "properties": {"body_encoding": "base64"}, "content-type": 3},
        {"body": "e30=", "properties": {"body_encoding": "base64", "delivery_info": "x"}},
        # what only the general decoder holds: a lone surrogate escape, a huge number
        {"body": "e30=", "properties": {"body_encoding": "base64"}, "headers": {"h": "\ud800"}},
        {"body": "e30=", "properties": {"body_encoding": "base64"}, "headers": {"n": 10**40}},
    ],
)
def test_lenient_where_kombu_is(env: dict[str, Any]) -> None:
    payload = json.dumps(env).encode()
    incoming = decode_envelope(payload, "task.multi")
    assert incoming.body == b"{}"
    assert isinstance(incoming.headers, dict)
    assert incoming.content_type is None or isinstance(incoming.content_type, str)
    if env.get("headers") == {"n": 10**40}:
        assert incoming.headers == {"n": 10**40}


BROKEN_ENVELOPES = [
    b"not json",
    b"[1, 2]",
    b'"str"',
    json.dumps({"properties": {}}).encode(),  # no body
    json.dumps({"body": 3, "properties": {}}).encode(),
    json.dumps({"body": "e30="}).encode(),  # no properties
    json.dumps({"body": "e30=", "properties": []}).encode(),
    json.dumps({"body": "!!! not base64 !!!", "properties": {"body_encoding": "base64"}}).encode(),
    json.dumps({"body": "e30", "properties": {"body_encoding": "base64"}}).encode(),
    b"\xff\xfe",
    b"[" * 100_000,
]


@pytest.mark.parametrize("payload", BROKEN_ENVELOPES)
def test_broken_envelopes(payload: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode_envelope(payload)
    assert info.value.reason == "envelope"
    # what a subscription hands up: the raw bytes, the channel's key, and the error
    message = unwrap_envelope(payload, "task.started")
    assert message.body == payload and message.routing_key == "task.started"
    assert message.error is not None and message.error.reason == "envelope"
    with pytest.raises(DecodeError) as raised:
        decode_message(message)
    assert raised.value.reason == "envelope"


def test_envelope_with_pickle_content_type_is_refused() -> None:
    _SideEffect.triggered.clear()
    env = {
        "body": base64.b64encode(pickle.dumps(_SideEffect())).decode(),
        "content-type": "application/x-python-serialize",
        "content-encoding": "binary",
        "headers": {},
        "properties": {"body_encoding": "base64", "delivery_info": {"routing_key": "task.multi"}},
    }
    message = unwrap_envelope(json.dumps(env).encode(), "task.multi")
    assert message.error is None
    assert message.content_type == "application/x-python-serialize"
    with pytest.raises(DecodeError) as info:
        decode_message(message)
    assert info.value.reason == "content-type"
    assert _SideEffect.triggered == []


def test_too_large_body_inside_envelope() -> None:
    # The decoded body is what the receiver's size limit applies to.
    body = b"[" + b" " * 2000 + b"]"
    envelope = encode_envelope(OutgoingMessage("task.multi", body), "celeryev")
    message = unwrap_envelope(envelope, "task.multi")
    assert message.body == body
    with pytest.raises(DecodeError) as info:
        decode_message(message, max_size=len(body) - 1)
    assert info.value.reason == "too-large"
    assert decode_message(message, max_size=len(body)) == ([], [])


def test_an_unwrapped_message_is_an_incoming_message() -> None:
    assert isinstance(unwrap_envelope(EXAMPLE_ENVELOPE, ""), IncomingMessage)
