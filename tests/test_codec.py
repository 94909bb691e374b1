"""The wire codec: Celery-exact encoding, JSON-only decoding."""

from __future__ import annotations

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

from aiocelev import DecodeError, Event, IncomingMessage
from aiocelev._codec import (
    DEFAULT_MAX_MESSAGE_SIZE,
    decode_message,
    dumps,
    encode_batch,
    encode_event,
    loads,
    validate_event,
)

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
    assert DEFAULT_MAX_MESSAGE_SIZE >= 1024 * 1024


def test_loads_errors() -> None:
    with pytest.raises(DecodeError) as info:
        loads(b"{bad")
    assert info.value.reason == "json"
    assert loads('{"a": 1}') == {"a": 1}


def test_an_adapters_error_is_raised_as_it_is() -> None:
    """A message an adapter could not unframe is reported under the adapter's reason."""
    error = DecodeError("envelope", "not a kombu envelope")
    with pytest.raises(DecodeError) as info:
        decode_message(IncomingMessage("task.multi", EXAMPLE_SINGLE, error=error))
    assert info.value is error


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
        assert dumps_plain(data) == kombu_dumps(data).encode("ascii")
        assert dumps_plain([data, data]) == kombu_dumps([data, data]).encode("ascii")
    assert dumps(data) == kombu_dumps(data)
