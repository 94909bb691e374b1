"""Property tests: decoding never raises anything but DecodeError, and the receiver never dies."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings, strategies as st
from kombu.utils.json import dumps as kombu_dumps

from aiocelev import DecodeError, EventDispatcher, EventReceiver, IncomingMessage, OutgoingMessage
from aiocelev._codec import decode_message, encode_batch, encode_event, validate_event
from aiocelev.brokers._redis_envelope import decode_envelope, encode_envelope, unwrap_envelope
from aiocelev.brokers.memory import MemoryBroker

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=10,
)
content_types = st.one_of(
    st.sampled_from(
        [
            None,
            "",
            "application/json",
            "application/x-python-serialize",
            "application/x-yaml",
            "application/x-msgpack",
            "application/data",
        ]
    ),
    st.text(max_size=30),
)
content_encodings = st.one_of(
    st.sampled_from([None, "", "utf-8", "binary", "utf8", "latin-1"]), st.text(max_size=10)
)

event_types = st.sampled_from(
    ["task-started", "task-succeeded", "task-sent", "worker-heartbeat", "task-progress", "x-y"]
)
field_names = st.text(min_size=1, max_size=10).filter(
    lambda k: k not in ("type", "hostname", "timestamp")
)


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {"hostname": draw(st.text(max_size=20))}
    data.update(draw(st.dictionaries(field_names, json_values, max_size=5)))
    data["timestamp"] = draw(
        st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**40), 2**40)
    )
    data["type"] = draw(event_types)
    return data


def _check(message: IncomingMessage) -> None:
    try:
        events, errors = decode_message(message, max_size=64 * 1024)
    except DecodeError as exc:
        assert isinstance(exc.reason, str) and exc.reason
        return
    for event in events:
        assert validate_event(event) is None
    assert all(isinstance(e, DecodeError) for e in errors)


@FUZZ
@given(st.binary(max_size=2000), content_types, content_encodings)
def test_decode_message_arbitrary_bytes(body: bytes, ctype: str | None, enc: str | None) -> None:
    _check(IncomingMessage("task.multi", body, content_type=ctype, content_encoding=enc))


@FUZZ
@given(json_values, content_types)
def test_decode_message_arbitrary_json(value: Any, ctype: str | None) -> None:
    body = json.dumps(value).encode()
    _check(IncomingMessage("task.multi", body, content_type=ctype))


@FUZZ
@given(st.binary(max_size=2000))
def test_decode_envelope_arbitrary_bytes(payload: bytes) -> None:
    try:
        message = decode_envelope(payload)
    except DecodeError as exc:
        assert exc.reason == "envelope"
    else:
        assert isinstance(message.body, bytes)
    # what the subscription does: never raises, a malformed one carries its error
    unwrapped = unwrap_envelope(payload, "task.multi")
    if unwrapped.error is not None:
        assert unwrapped.error.reason == "envelope" and unwrapped.body == payload
    _check(unwrapped)


@FUZZ
@given(json_values, json_values, st.binary(max_size=200) | st.text(max_size=50), content_types)
def test_decode_arbitrary_envelopes(
    props: Any, headers: Any, body: bytes | str, ctype: str | None
) -> None:
    env: dict[str, Any] = {
        "body": base64.b64encode(body).decode() if isinstance(body, bytes) else body,
        "content-type": ctype,
        "headers": headers,
        "properties": props,
    }
    _check(unwrap_envelope(json.dumps(env).encode(), ""))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_events(), min_size=1, max_size=3))
def test_valid_events_round_trip_and_match_kombu(events: list[dict[str, Any]]) -> None:
    single = encode_event(events[0])
    assert single == kombu_dumps(events[0]).encode()
    assert decode_message(IncomingMessage("x", single)) == ([events[0]], [])
    body = encode_batch(events)
    assert body == kombu_dumps(events).encode()
    decoded, errors = decode_message(IncomingMessage("task.multi", body))
    assert decoded == events
    assert errors == []
    envelope = encode_envelope(OutgoingMessage("task.multi", body), "celeryev")
    assert decode_message(unwrap_envelope(envelope, ""))[0] == events


@st.composite
def message_sequences(draw: st.DrawFn) -> list[tuple[OutgoingMessage, list[str]]]:
    """Messages, each with the uuids of the valid events it carries."""
    out: list[tuple[OutgoingMessage, list[str]]] = []
    for n in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["valid", "batch", "bytes", "json", "ctype"]))
        tag = f"m{n}"
        if kind == "valid":
            event = draw(valid_events())
            event["uuid"] = tag
            out.append((OutgoingMessage("task.x", encode_event(event)), [tag]))
        elif kind == "batch":
            items: list[Any] = []
            tags: list[str] = []
            for i, element in enumerate(draw(st.lists(valid_events() | json_values, max_size=5))):
                if isinstance(element, dict) and validate_event(element) is None:
                    element["uuid"] = f"{tag}.{i}"
                    tags.append(f"{tag}.{i}")
                items.append(element)
            out.append((OutgoingMessage("task.multi", json.dumps(items).encode()), tags))
        elif kind == "bytes":
            out.append((OutgoingMessage("task.multi", draw(st.binary(max_size=300))), []))
        elif kind == "json":
            value = draw(json_values)
            if isinstance(value, dict) and validate_event(value) is None:
                continue  # that one would be an event: not what this kind is for
            out.append((OutgoingMessage("task.multi", json.dumps(value).encode()), []))
        else:
            ctype = draw(content_types.filter(lambda c: c not in (None, "", "application/json")))
            body = encode_event(draw(valid_events()))
            out.append((OutgoingMessage("task.x", body, content_type=ctype or "x"), []))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message_sequences())
def test_receiver_pump_never_dies(sequence: list[tuple[OutgoingMessage, list[str]]]) -> None:
    expected = [tag for _, tags in sequence for tag in tags] + ["sentinel"]
    sentinel = {"hostname": "h", "timestamp": 1.0, "type": "task-started", "uuid": "sentinel"}

    async def main() -> list[str]:
        broker = MemoryBroker(f"memory://fuzz-{uuid.uuid4().hex}")
        async with EventReceiver(broker) as receiver:
            await broker.publish([message for message, _ in sequence])
            await broker.publish([OutgoingMessage("task.started", encode_event(sentinel))])
            with anyio.fail_after(10):
                got = [(await receiver.receive())["uuid"] for _ in expected]
            stats = receiver.statistics()
            assert stats.messages == len(sequence) + 1
        await broker.aclose()
        return got

    assert anyio.run(main) == expected


reserved = ("type", "hostname", "timestamp", "utcoffset", "pid", "clock", "local_received")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            event_types.filter(lambda t: t != "task-sent"),
            st.dictionaries(
                st.text(min_size=1, max_size=8).filter(lambda k: k not in reserved),
                json_values,
                max_size=4,
            ),
        ),
        max_size=8,
    )
)
def test_dispatcher_to_receiver_keeps_every_field(
    sends: list[tuple[str, dict[str, Any]]],
) -> None:
    async def main() -> list[dict[str, Any]]:
        broker = MemoryBroker(f"memory://fuzz-{uuid.uuid4().hex}")
        async with EventReceiver(broker) as receiver:
            async with EventDispatcher(broker, hostname="fuzz@host", max_batch=3) as d:
                for type_, fields in sends:
                    await d.send(type_, **fields)
            with anyio.fail_after(10):
                got = [(await receiver.receive()).to_dict() for _ in sends]
        await broker.aclose()
        return got

    received = anyio.run(main)
    for (type_, fields), event in zip(sends, received, strict=True):
        assert event["type"] == type_
        assert event["hostname"] == "fuzz@host"
        assert {k: event[k] for k in fields} == fields
