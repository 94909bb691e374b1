"""The wire codec: Celery-exact encoding, JSON-only decoding, kombu's Redis envelope."""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import pickle
import uuid
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st
from kombu.serialization import dumps as kombu_serialize
from kombu.utils.json import dumps as kombu_dumps

from aiocelev import DecodeError, Event, IncomingMessage, OutgoingMessage
from aiocelev._codec import (
    DEFAULT_MAX_MESSAGE_SIZE,
    batch_message,
    decode_envelope,
    decode_message,
    dumps,
    encode_batch,
    encode_envelope,
    encode_event,
    event_message,
    loads,
    validate_event,
)
from aiocelev._message import KOMBU_ENVELOPE

# The worked example of the protocol reference, section 2.6.
EXAMPLE_EVENT: dict[str, Any] = {
    "hostname": "celery@worker1",
    "utcoffset": 0,
    "pid": 4242,
    "clock": 17,
    "uuid": "5b1d4c2e-8f3a-4a51-9c3e-0d7e6f1a2b3c",
    "result": "4",
    "runtime": 0.0123,
    "timestamp": 1767225600.123456,
    "type": "task-succeeded",
}
EXAMPLE_SINGLE = (
    b'{"hostname": "celery@worker1", "utcoffset": 0, "pid": 4242, "clock": 17, '
    b'"uuid": "5b1d4c2e-8f3a-4a51-9c3e-0d7e6f1a2b3c", "result": "4", "runtime": 0.0123, '
    b'"timestamp": 1767225600.123456, "type": "task-succeeded"}'
)
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


def ev(type_: str = "task-started", **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"hostname": "h@x", "utcoffset": 0, "pid": 1, "clock": 1}
    data.update(extra)
    data["timestamp"] = 1.5
    data["type"] = type_
    return data


def msg(body: bytes, **kw: Any) -> IncomingMessage:
    return IncomingMessage(routing_key=kw.pop("routing_key", "task.multi"), body=body, **kw)


class _SideEffect:
    """Unpickling this would record that it happened."""

    triggered: list[str] = []

    def __reduce__(self) -> tuple[Any, ...]:
        return (_SideEffect.triggered.append, ("unpickled!",))


# -- encoding ------------------------------------------------------------------


def test_worked_example_single_and_batch_bytes() -> None:
    assert encode_event(EXAMPLE_EVENT) == EXAMPLE_SINGLE
    assert len(EXAMPLE_SINGLE) == 212
    batch = encode_batch([EXAMPLE_EVENT])
    assert batch == b"[" + EXAMPLE_SINGLE + b"]"
    assert len(batch) == 214
    assert encode_event(Event.from_dict(EXAMPLE_EVENT)) == EXAMPLE_SINGLE
    assert encode_batch([Event.from_dict(EXAMPLE_EVENT)]) == batch


CELERY_LIKE_VALUES: list[Any] = [
    EXAMPLE_EVENT,
    ev("task-received", uuid="u", name="tasks.add", args="(1, 'é☃')", kwargs="{}", eta=None),
    ev("worker-heartbeat", freq=2.0, active=0, processed=12, loadavg=[0.1, 0.25, 1.0]),
    ev(
        "task-progress",
        when=datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.timezone.utc),
        day=datetime.date(2026, 1, 2),
        at=datetime.time(1, 2, 3),
        amount=decimal.Decimal("1.10"),
        id=uuid.UUID(int=5),
        raw=b"abc",
        blob=b"\xff\x00",
        pair=(1, 2),
        huge=10**30,
        nested={"a": [1, {"b": None, "c": True}]},
        text='\u0000\n\t"\\ \U0001f600',
        float_=1e300,
    ),
]


@pytest.mark.parametrize("value", CELERY_LIKE_VALUES)
def test_encoding_is_byte_identical_to_kombu(value: dict[str, Any]) -> None:
    content_type, encoding, body = kombu_serialize(value, serializer="json")
    assert (content_type, encoding) == ("application/json", "utf-8")
    assert encode_event(value) == body.encode("utf-8")
    assert dumps(value) == kombu_dumps(value)
    listed = [value, value]
    _, _, batch = kombu_serialize(listed, serializer="json")
    assert encode_batch(listed) == batch.encode("utf-8")


def test_encoding_is_ascii() -> None:
    body = encode_event(ev(text="日本語 é"))
    body.decode("ascii")  # must not raise
    assert b"\\u65e5" in body


def test_non_json_values_raise_type_error() -> None:
    with pytest.raises(TypeError):
        encode_event(ev(bad=object()))


def test_object_with_json_method() -> None:
    class Custom:
        def __json__(self) -> dict[str, int]:
            return {"x": 1}

    value = ev(custom=Custom())
    assert encode_event(value) == kombu_dumps(value).encode()


@pytest.mark.parametrize(
    ("type_", "key"),
    [
        ("task-succeeded", "task.succeeded"),
        ("worker-heartbeat", "worker.heartbeat"),
        ("worker-elect-ack", "worker.elect.ack"),
        ("task-progress", "task.progress"),
    ],
)
def test_single_event_message_routing(type_: str, key: str) -> None:
    data = ev(type_)
    message = event_message(data)
    assert message.routing_key == key
    assert message.body == encode_event(data)
    assert dict(message.headers) == {"hostname": "h@x"}
    assert message.content_type == "application/json"
    assert message.content_encoding == "utf-8"
    assert message.delivery_mode == 1
    assert message.priority == 0
    assert event_message(Event.from_dict(data)) == message


def test_batch_message_on_group_multi() -> None:
    events = [ev("task-started", uuid=str(i)) for i in range(3)]
    message = batch_message("task", events, "celery@w1")
    assert message.routing_key == "task.multi"
    assert message.body == encode_batch(events)
    assert json.loads(message.body) == events
    assert dict(message.headers) == {"hostname": "celery@w1"}


# -- envelope ------------------------------------------------------------------


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
    message = event_message(EXAMPLE_EVENT)
    payload = encode_envelope(message, "celeryev", delivery_tag=EXAMPLE_TAG)
    env = json.loads(payload)
    assert env["body"] == EXAMPLE_SINGLE_B64
    assert env["properties"]["delivery_info"] == {
        "exchange": "celeryev",
        "routing_key": "task.succeeded",
    }
    assert len(payload) == 614


def test_envelope_default_delivery_tag_is_fresh_uuid() -> None:
    message = event_message(EXAMPLE_EVENT)
    tags = {
        json.loads(encode_envelope(message, "celeryev"))["properties"]["delivery_tag"]
        for _ in range(3)
    }
    assert len(tags) == 3
    for tag in tags:
        uuid.UUID(tag)


def test_envelope_round_trip() -> None:
    message = event_message(EXAMPLE_EVENT)
    incoming = decode_envelope(encode_envelope(message, "celeryev"))
    assert incoming.routing_key == "task.succeeded"
    assert incoming.body == EXAMPLE_SINGLE
    assert incoming.content_type == "application/json"
    assert incoming.content_encoding == "utf-8"
    assert dict(incoming.headers) == {"hostname": "celery@worker1"}


def test_decode_message_unwraps_envelope() -> None:
    payload = encode_envelope(batch_message("task", [EXAMPLE_EVENT], "celery@worker1"), "celeryev")
    events, errors = decode_message(msg(payload, content_type=KOMBU_ENVELOPE, routing_key=""))
    assert events == [EXAMPLE_EVENT]
    assert errors == []


@pytest.mark.parametrize("props", [{}, {"body_encoding": None}, {"body_encoding": "UTF-8"}])
def test_envelope_body_used_as_is_unless_an_encoding_is_named(props: dict[str, Any]) -> None:
    # kombu base64-decodes only when properties.body_encoding names a non-UTF-8 codec
    env = {"body": EXAMPLE_SINGLE.decode(), "content-type": "application/json", "properties": props}
    incoming = decode_envelope(json.dumps(env).encode())
    assert incoming.body == EXAMPLE_SINGLE
    events, _ = decode_message(msg(json.dumps(env).encode(), content_type=KOMBU_ENVELOPE))
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
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'"str"',
        json.dumps({"properties": {}}).encode(),  # no body
        json.dumps({"body": 3, "properties": {}}).encode(),
        json.dumps({"body": "e30="}).encode(),  # no properties
        json.dumps({"body": "e30=", "properties": []}).encode(),
        json.dumps(
            {"body": "!!! not base64 !!!", "properties": {"body_encoding": "base64"}}
        ).encode(),
        json.dumps({"body": "e30", "properties": {"body_encoding": "base64"}}).encode(),
        b"\xff\xfe",
    ],
)
def test_broken_envelopes(payload: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode_envelope(payload)
    assert info.value.reason == "envelope"
    with pytest.raises(DecodeError) as info:
        decode_message(msg(payload, content_type=KOMBU_ENVELOPE))
    assert info.value.reason == "envelope"


def test_envelope_with_pickle_content_type_is_refused() -> None:
    _SideEffect.triggered.clear()
    env = {
        "body": base64.b64encode(pickle.dumps(_SideEffect())).decode(),
        "content-type": "application/x-python-serialize",
        "content-encoding": "binary",
        "headers": {},
        "properties": {"body_encoding": "base64", "delivery_info": {"routing_key": "task.multi"}},
    }
    with pytest.raises(DecodeError) as info:
        decode_message(msg(json.dumps(env).encode(), content_type=KOMBU_ENVELOPE))
    assert info.value.reason == "content-type"
    assert _SideEffect.triggered == []


# -- decoding ------------------------------------------------------------------


def test_decode_single_dict() -> None:
    events, errors = decode_message(msg(EXAMPLE_SINGLE, routing_key="task.succeeded"))
    assert events == [EXAMPLE_EVENT]
    assert list(events[0]) == list(EXAMPLE_EVENT)  # order kept
    assert errors == []


def test_decode_array_in_order() -> None:
    batch = [ev(uuid=str(i)) for i in range(5)]
    events, errors = decode_message(msg(encode_batch(batch)))
    assert events == batch
    assert errors == []


def test_decode_empty_array() -> None:
    assert decode_message(msg(b"[]")) == ([], [])


@pytest.mark.parametrize("content_type", [None, "", "application/json"])
def test_json_content_types_accepted(content_type: str | None) -> None:
    events, _ = decode_message(msg(EXAMPLE_SINGLE, content_type=content_type))
    assert events == [EXAMPLE_EVENT]


@pytest.mark.parametrize(
    ("content_type", "encoding"),
    [
        ("application/x-python-serialize", "binary"),
        ("application/x-yaml", "utf-8"),
        ("application/x-msgpack", "binary"),
        ("text/plain", "utf-8"),
        ("application/data", "binary"),
    ],
)
def test_non_json_content_types_refused_and_never_deserialised(
    content_type: str, encoding: str
) -> None:
    _SideEffect.triggered.clear()
    body = pickle.dumps(_SideEffect())
    with pytest.raises(DecodeError) as info:
        decode_message(msg(body, content_type=content_type, content_encoding=encoding))
    assert info.value.reason == "content-type"
    assert _SideEffect.triggered == []
    # Even a body that happens to be valid JSON is refused under a foreign content type.
    with pytest.raises(DecodeError) as info:
        decode_message(msg(EXAMPLE_SINGLE, content_type=content_type))
    assert info.value.reason == "content-type"


def test_non_utf8_content_encoding_refused() -> None:
    with pytest.raises(DecodeError) as info:
        decode_message(msg(EXAMPLE_SINGLE, content_encoding="binary"))
    assert info.value.reason == "content-type"


def test_invalid_utf8() -> None:
    for body in (b"\xff\xfe", b'{"type": "\xff", "hostname": "h", "timestamp": 1}'):
        with pytest.raises(DecodeError) as info:
            decode_message(msg(body))
        assert info.value.reason == "encoding"


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"not json", b'{"a": NaN}', b"[Infinity]", b"{'single': 1}", b"[1,]", b"\x00"],
)
def test_non_json(body: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode_message(msg(body))
    assert info.value.reason == "json"


@pytest.mark.parametrize("body", [b"3", b"1.5", b'"text"', b"null", b"true", b"false"])
def test_scalars_are_not_events(body: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode_message(msg(body))
    assert info.value.reason == "not-an-event"


def test_arrays_with_non_objects_keep_valid_elements() -> None:
    good1, good2 = ev(uuid="1"), ev(uuid="2")
    body = json.dumps([good1, 1, "x", None, [good1], {"type": "task-x"}, good2]).encode()
    events, errors = decode_message(msg(body))
    assert events == [good1, good2]
    assert len(errors) == 5
    assert all(isinstance(e, DecodeError) and e.reason == "not-an-event" for e in errors)


@pytest.mark.parametrize(
    "data",
    [
        {"hostname": "h", "timestamp": 1.0},  # no type
        {"type": "", "hostname": "h", "timestamp": 1.0},
        {"type": 5, "hostname": "h", "timestamp": 1.0},
        {"type": "task-x", "timestamp": 1.0},  # no hostname
        {"type": "task-x", "hostname": None, "timestamp": 1.0},
        {"type": "task-x", "hostname": "h"},  # no timestamp
        {"type": "task-x", "hostname": "h", "timestamp": "1.0"},
        {"type": "task-x", "hostname": "h", "timestamp": True},
        {"type": "task-x", "hostname": "h", "timestamp": None},
    ],
)
def test_missing_or_wrong_required_fields(data: dict[str, Any]) -> None:
    with pytest.raises(DecodeError) as info:
        decode_message(msg(json.dumps(data).encode()))
    assert info.value.reason == "not-an-event"
    assert validate_event(data) is not None


def test_integer_timestamp_is_accepted() -> None:
    data = {"type": "task-x", "hostname": "h", "timestamp": 1}
    assert validate_event(data) is None
    assert decode_message(msg(json.dumps(data).encode()))[0] == [data]


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a": ' * 100_000 + b"1" + b"}" * 100_000,
        b"[" * 100_000,
    ],
)
def test_deep_nesting_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode_message(msg(body))
    assert info.value.reason == "json"


def test_huge_integers_still_decode() -> None:
    data = ev("task-started", clock=10**30, uuid="u", big=-(10**40))
    events, errors = decode_message(msg(json.dumps(data).encode()))
    assert errors == []
    assert events[0]["clock"] == 10**30
    assert events[0]["big"] == -(10**40)
    assert loads(b"[18446744073709551616]") == [2**64]


def test_too_large_messages() -> None:
    body = encode_batch([ev(uuid="x" * 1000)])
    with pytest.raises(DecodeError) as info:
        decode_message(msg(body), max_size=100)
    assert info.value.reason == "too-large"
    assert decode_message(msg(body), max_size=len(body))[0]
    envelope = encode_envelope(OutgoingMessage("task.multi", body), "celeryev")
    with pytest.raises(DecodeError) as info:
        decode_message(msg(envelope, content_type=KOMBU_ENVELOPE), max_size=len(body) + 10)
    assert info.value.reason == "too-large"
    assert DEFAULT_MAX_MESSAGE_SIZE >= 1024 * 1024


def test_too_large_body_inside_envelope() -> None:
    # The envelope itself is small enough; the decoded body is checked again.
    body = b"[" + b" " * 2000 + b"]"
    envelope = encode_envelope(OutgoingMessage("task.multi", body), "celeryev")
    size = len(envelope)
    assert size < 2 * len(body)
    with pytest.raises(DecodeError) as info:
        decode_message(msg(envelope, content_type=KOMBU_ENVELOPE), max_size=len(body) - 1 + 0)
    assert info.value.reason == "too-large"


def test_loads_errors() -> None:
    with pytest.raises(DecodeError) as info:
        loads(b"{bad")
    assert info.value.reason == "json"
    assert loads('{"a": 1}') == {"a": 1}


def test_decode_error_carries_reason_and_detail() -> None:
    error = DecodeError("json", "body is not valid JSON")
    assert error.reason == "json"
    assert error.detail == "body is not valid JSON"
    assert "json" in str(error)


@pytest.mark.parametrize(
    "value", [2**64, -(2**63) - 1, 10**30, -(10**40), 2**64 - 1, -(2**63), 10**18]
)
def test_integers_beyond_64_bits_keep_their_exact_value(value: int) -> None:
    text = json.dumps({"n": value, "nested": [value]})
    assert loads(text.encode()) == {"n": value, "nested": [value]}
    assert loads(text) == {"n": value, "nested": [value]}
    assert type(loads(text.encode())["n"]) is int


# -- the fast path for plain events ------------------------------------------------

_plain_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=8),
        st.one_of(_plain_scalars, st.lists(_plain_scalars, max_size=4)),
        max_size=8,
    )
)
def test_plain_fast_path_writes_kombus_bytes(data: dict) -> None:
    from aiocelev._codec import dumps, dumps_plain, plain_values

    if plain_values(data.values()):
        assert dumps_plain(data) == dumps(data).encode("ascii")
        assert dumps_plain([data, data]) == dumps([data, data]).encode("ascii")
