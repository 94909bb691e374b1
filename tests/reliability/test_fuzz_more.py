"""Property tests beyond tests/test_fuzz.py: the receiver pump fed kombu envelopes
(valid and broken), absurd clocks, lone surrogates, deep nesting and size limits.
Nothing but DecodeError ever escapes decoding, and the pump never dies."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings, strategies as st

from aiocelev import DecodeError, EventReceiver, IncomingMessage, OutgoingMessage
from aiocelev._clock import MAX_CLOCK
from aiocelev._codec import decode_message, dumps
from aiocelev.brokers._redis_envelope import decode_envelope, encode_envelope, unwrap_envelope
from aiocelev.brokers.memory import MemoryBroker
from aiocelev.cli._events import EventFormatter

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

clocks = st.one_of(
    st.none(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),  # (Infinity is not JSON)
    st.text(max_size=5),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
# JSON string escapes for lone surrogates, which JSON allows and Python keeps.
surrogate_strings = st.integers(0xD800, 0xDFFF).map(lambda c: f"x\\u{c:04x}y")


def _envelope(body: bytes, content_type: str = "application/json") -> OutgoingMessage:
    inner = OutgoingMessage("task.multi", body, content_type=content_type)
    return OutgoingMessage("task.multi", encode_envelope(inner, "celeryev"))


class _Unwrapping:
    """A memory:// subscription whose payloads are kombu envelopes, unwrapped as the
    Redis adapter unwraps them (a malformed one is handed up with its error)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __aiter__(self) -> _Unwrapping:
        return self

    async def __anext__(self) -> IncomingMessage:
        message = await self.inner.__anext__()
        return unwrap_envelope(message.body, message.routing_key)

    async def aclose(self) -> None:
        await self.inner.aclose()


class EnvelopeBroker:
    """memory:// carrying Redis-style envelopes: the Redis adapter's framing, in process."""

    def __init__(self, inner: MemoryBroker) -> None:
        self.inner = inner
        self.url = inner.url
        self.connect = inner.connect
        self.publish = inner.publish
        self.control = inner.control
        self.aclose = inner.aclose

    async def subscribe(self, binding_keys: Any) -> _Unwrapping:
        return _Unwrapping(await self.inner.subscribe(binding_keys))


@st.composite
def streams(draw: st.DrawFn) -> list[tuple[OutgoingMessage, list[str], int, int]]:
    """Messages with (tags of valid events, bad count, invalid clock count)."""
    out: list[tuple[OutgoingMessage, list[str], int, int]] = []
    for n in range(draw(st.integers(0, 10))):
        kind = draw(st.sampled_from(["envelope", "broken", "pickle", "clock", "surrogate", "b64"]))
        tag = f"m{n}"
        base = {"hostname": "h", "uuid": tag, "timestamp": 1.0, "type": "task-started"}
        if kind in ("envelope", "clock"):
            clock = draw(clocks) if kind == "clock" else n + 1
            body = json.dumps({**base, "clock": clock}).encode()
            invalid = int(not (type(clock) is int and 0 <= clock < MAX_CLOCK))
            out.append((_envelope(body), [tag], 0, invalid))
        elif kind == "broken":
            payload = draw(
                st.sampled_from(
                    [
                        b"",
                        b"{",
                        b"[]",
                        b"{}",
                        b'{"body": 1, "properties": {}}',
                        b'{"body": "%%%", "properties": {"body_encoding": "base64"}}',
                    ]  # fmt: skip
                )
                | st.binary(max_size=50)
            )
            out.append((OutgoingMessage("task.multi", payload), [], 1, 0))
        elif kind == "pickle":
            body = draw(st.binary(max_size=40))
            ctype = draw(st.sampled_from(["application/x-python-serialize", "application/x-yaml",
                                          "application/x-msgpack", "application/data"]))  # fmt: skip
            out.append((_envelope(body, ctype), [], 1, 0))
        elif kind == "surrogate":
            text = draw(surrogate_strings)
            head = '{"hostname": "h", "uuid": "' + tag + '", "note": "' + text
            body = (head + '", "timestamp": 1.0, "type": "task-started"}').encode()
            out.append((_envelope(body), [tag], 0, 0))
        else:  # raw base64 body of a valid event inside a hand-made envelope
            env = {
                "body": base64.b64encode(json.dumps({**base, "clock": 1}).encode()).decode(),
                "content-type": "application/json",
                "properties": {
                    "body_encoding": "base64",
                    "delivery_info": {"routing_key": "task.x"},
                },
            }
            out.append(
                (
                    OutgoingMessage("task.x", json.dumps(env).encode()),
                    [tag],
                    0,
                    0,
                )
            )
    return out


@FUZZ
@given(streams())
def test_receiver_pump_on_envelopes_with_absurd_clocks_never_dies(
    stream: list[tuple[OutgoingMessage, list[str], int, int]],
) -> None:
    expected = [tag for _, tags, _, _ in stream for tag in tags] + ["end"]
    end = json.dumps({"hostname": "h", "uuid": "end", "timestamp": 1.0, "type": "task-started"})

    async def main() -> None:
        broker = EnvelopeBroker(MemoryBroker(f"memory://fuzz-more-{uuid.uuid4().hex}"))
        formatter = EventFormatter()
        async with EventReceiver(broker) as receiver:  # type: ignore[arg-type]
            await broker.publish([message for message, *_ in stream])
            await broker.publish([_envelope(end.encode())])
            got = []
            with anyio.fail_after(10):
                for _ in expected:
                    event = await receiver.receive()
                    assert type(event.clock) is int and 0 <= event.clock < MAX_CLOCK
                    formatter.format(event)  # what `aiocelev events` prints
                    dumps(event.to_dict())  # what `aiocelev events --json` prints
                    got.append(event["uuid"])
            stats = receiver.statistics()
        await broker.aclose()
        assert got == expected
        assert sum(stats.malformed.values()) == sum(bad for _, _, bad, _ in stream)
        assert stats.invalid_clocks == sum(invalid for *_, invalid in stream)
        assert receiver.clock.value < MAX_CLOCK + len(expected) + 1

    anyio.run(main)


@FUZZ
@given(st.binary(max_size=300), st.integers(0, 400))
def test_size_limit_is_exact(body: bytes, limit: int) -> None:
    message = IncomingMessage("task.multi", body)
    try:
        decode_message(message, max_size=limit)
    except DecodeError as exc:
        assert (exc.reason == "too-large") == (len(body) > limit)
    else:
        assert len(body) <= limit


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 200_000), st.sampled_from(["[", '{"a":']), st.booleans())
def test_any_nesting_depth_is_a_decode_error_or_a_value(
    depth: int, opener: str, envelope: bool
) -> None:
    closer = "]" if opener == "[" else "}"
    body = (opener * depth + "1" + closer * depth).encode()
    try:
        if envelope:
            decode_envelope(body)
        else:
            decode_message(IncomingMessage("task.multi", body))
    except DecodeError as exc:
        assert exc.reason in ("json", "not-an-event", "envelope")


def test_lone_surrogate_escapes_decode_as_in_celery() -> None:
    """A task argument holding a file name decoded with ``surrogateescape`` is sent by
    Celery as a lone surrogate escape (``"\\udcff"``): valid JSON that Celery's receiver
    accepts, so a whole batch must not be refused because of it."""
    from kombu.utils.json import dumps as kombu_dumps, loads as kombu_loads

    name = b"caf\xe9.txt".decode("utf-8", "surrogateescape")
    events = [
        {"hostname": "h", "uuid": "a", "args": f"('{name}',)", "timestamp": 1.0,
         "type": "task-received"},
        {"hostname": "h", "uuid": "b", "timestamp": 2.0, "type": "task-started"},
    ]  # fmt: skip
    body = kombu_dumps(events).encode()
    assert b"\\udce9" in body
    decoded, errors = decode_message(IncomingMessage("task.multi", body))
    assert (decoded, errors) == (kombu_loads(body), [])
    envelope = encode_envelope(OutgoingMessage("task.multi", body), "celeryev")
    assert decode_message(unwrap_envelope(envelope, ""))[0] == decoded
