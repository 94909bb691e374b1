"""Hostile and malformed input on the real event exchange (RabbitMQ and Redis).

Raw clients (aio-pika, redis-py) inject whatever they like on a private event
exchange / key prefix; valid events are interleaved.  The EventReceiver must
keep going, deliver every valid event in order, and count and report each bad
message by reason.  Only JSON is ever deserialised.
"""

from __future__ import annotations

import base64
import logging
import os
import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiocelev import DecodeError, EventReceiver, IncomingMessage
from aiocelev._codec import DEFAULT_MAX_MESSAGE_SIZE

from ._helpers import RawRedis, dumps, event, raw_publisher, valid_body

pytestmark = pytest.mark.timeout(60)


class FileCreator:
    """Unpickling this creates a file: proof that a pickle was deserialised."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (self.path,))


def pickle_bomb(path: Path) -> bytes:
    body = pickle.dumps(FileCreator(path))
    # The payload is live: unpickling it really creates the file.
    probe = path.with_name(path.name + ".probe")
    pickle.loads(pickle.dumps(FileCreator(probe)))
    assert probe.exists()
    probe.unlink()
    return body


def hostile_messages(tmp_path: Path) -> list[tuple[str, bytes, str | None, str | None, list[str]]]:
    """``(routing key, body, content type, content encoding, expected reasons)``."""
    bomb = pickle_bomb(tmp_path / "pwned-by-pickle")
    no_type = {"hostname": "h", "timestamp": 1.0}
    no_host = {"type": "task-started", "timestamp": 1.0}
    no_ts = {"type": "task-started", "hostname": "h"}
    nested = b"[" * 50_000 + b"]" * 50_000
    return [
        ("task.multi", b"this is not json", "application/json", "utf-8", ["json"]),
        ("task.started", b'{"type": "task-started", "hostname": "\xff\xfe"}', None, None,
         ["encoding"]),
        ("task.started", bomb, "application/x-python-serialize", "binary", ["content-type"]),
        ("task.started", b"type: task-started\nhostname: h\ntimestamp: 1\n",
         "application/x-yaml", "utf-8", ["content-type"]),
        ("task.started", b"\x83\xa4type\xactask-started", "application/x-msgpack", "binary",
         ["content-type"]),
        ("task.started", b"42", "application/json", "utf-8", ["not-an-event"]),
        ("task.started", b'"a string"', "application/json", "utf-8", ["not-an-event"]),
        ("task.started", b"null", "application/json", "utf-8", ["not-an-event"]),
        ("task.multi", b'[1, "two", null, [3]]', "application/json", "utf-8",
         ["not-an-event"] * 4),
        ("task.started", dumps(no_type), "application/json", "utf-8", ["not-an-event"]),
        ("task.started", dumps(no_host), "application/json", "utf-8", ["not-an-event"]),
        ("task.started", dumps(no_ts), "application/json", "utf-8", ["not-an-event"]),
        ("task.multi", nested, "application/json", "utf-8", ["json"]),
        ("task.started", b"{" + b'"a":' * 10, "application/json", "utf-8", ["json"]),
        ("task.started", b"NaN", "application/json", "utf-8", ["json"]),
    ]  # fmt: skip


@pytest.fixture(
    params=[
        pytest.param("amqp", marks=pytest.mark.amqp),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def real_url(broker_kind: str, request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{broker_kind}_url"))


async def _collect(receiver: EventReceiver, count: int, timeout: float = 20) -> list[Any]:
    got = []
    with anyio.fail_after(timeout):
        for _ in range(count):
            got.append(await receiver.receive())
    return got


async def test_receiver_survives_hostile_input_and_delivers_every_valid_event_in_order(
    broker_kind: str, real_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aiocelev.receiver")
    bad = hostile_messages(tmp_path)
    errors: list[tuple[DecodeError, IncomingMessage]] = []
    async with (
        raw_publisher(broker_kind, real_url) as raw,
        EventReceiver(
            real_url,
            routing_keys=["#"],
            broker_options=raw.options,
            on_error=lambda e, m: errors.append((e, m)),
        ) as receiver,
    ):
        n = 0
        for key, body, ctype, cenc, _ in bad:
            await raw.publish("task.started", valid_body(n))
            n += 1
            await raw.publish(key, body, ctype, cenc)
        # valid events whose clock is null, a string, absurd: delivered, clock replaced
        for clock in (None, "12", 10**30, -5, 1.5, True):
            await raw.publish("task.started", valid_body(n, clock=clock))
            n += 1
        await raw.publish("task.started", valid_body(n))
        n += 1
        got = await _collect(receiver, n)
        stats = receiver.statistics()
    assert [e["uuid"] for e in got] == [f"v{i}" for i in range(n)]
    assert all(type(e.clock) is int for e in got)
    assert stats.invalid_clocks == 6
    expected = Counter(reason for *_, reasons in bad for reason in reasons)
    assert stats.malformed == dict(expected)
    assert [e.reason for e, _ in errors] == [r for *_, reasons in bad for r in reasons]
    assert stats.messages == n + len(bad)
    # each refusal names what was refused
    refusals = [str(e) for e, _ in errors if e.reason == "content-type"]
    for ctype in ("application/x-python-serialize", "application/x-yaml", "application/x-msgpack"):
        assert sum(ctype in text for text in refusals) == 1, (ctype, refusals)
    # the pickle was never deserialised
    assert not (tmp_path / "pwned-by-pickle").exists()
    # reported in the log too, with the reason
    logged = [r.getMessage() for r in caplog.records if r.name == "aiocelev.receiver"]
    for reason in expected:
        assert any(f"reason {reason!r}" in line for line in logged), reason


async def test_oversized_messages_are_refused_and_the_stream_goes_on(
    broker_kind: str, real_url: str
) -> None:
    """Several-MB bodies over ``max_message_size`` are refused unparsed (reason ``too-large``)."""
    limit = 1024 * 1024
    big = b"[" + b'"' + b"x" * (3 * 1024 * 1024) + b'"]'  # 3 MiB of valid JSON
    reasons: list[str] = []
    async with (
        raw_publisher(broker_kind, real_url) as raw,
        EventReceiver(
            real_url,
            broker_options=raw.options,
            max_message_size=limit,
            on_error=lambda e, m: reasons.append(e.reason),
        ) as receiver,
    ):
        await raw.publish("task.started", valid_body(0))
        await raw.publish("task.multi", big)
        await raw.publish("task.started", valid_body(1))
        got = await _collect(receiver, 2)
    assert [e["uuid"] for e in got] == ["v0", "v1"]
    assert reasons == ["too-large"]


@pytest.mark.amqp
async def test_default_max_message_size_refuses_a_9_mib_body(amqp_url: str) -> None:
    """The default limit is 8 MiB (``DEFAULT_MAX_MESSAGE_SIZE``); a 9 MiB body is refused."""
    assert DEFAULT_MAX_MESSAGE_SIZE == 8 * 1024 * 1024
    huge = b'["' + b"y" * (9 * 1024 * 1024) + b'"]'
    reasons: list[str] = []
    async with (
        raw_publisher("amqp", amqp_url) as raw,
        EventReceiver(
            amqp_url, broker_options=raw.options, on_error=lambda e, m: reasons.append(e.reason)
        ) as receiver,
    ):
        await raw.publish("task.multi", huge)
        await raw.publish("task.started", valid_body(0))
        got = await _collect(receiver, 1)
    assert got[0]["uuid"] == "v0"
    assert reasons == ["too-large"]


@pytest.mark.redis
async def test_broken_redis_envelopes(redis_url: str) -> None:
    """Payloads on the event channels that are not kombu envelopes are refused (``envelope``)."""
    good_body = base64.b64encode(valid_body(99)).decode()
    broken: list[bytes] = [
        b"not an envelope",
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'"just a string"',
        dumps({"properties": {"body_encoding": "base64"}}),  # no body
        dumps({"body": good_body}),  # no properties
        dumps({"body": 12, "properties": {}}),  # body not a string
        dumps({"body": "!!!not base64!!!", "properties": {"body_encoding": "base64"}}),
        dumps({"body": good_body, "properties": []}),
    ]
    errors: list[DecodeError] = []
    async with raw_publisher("redis", redis_url) as raw:
        assert isinstance(raw, RawRedis)
        async with EventReceiver(
            redis_url, broker_options=raw.options, on_error=lambda e, m: errors.append(e)
        ) as receiver:
            for i, payload in enumerate(broken):
                await raw.publish("task.started", valid_body(i))
                assert await raw.publish_raw("task.started", payload) == 1
            await raw.publish("task.started", valid_body(len(broken)))
            got = await _collect(receiver, len(broken) + 1)
            stats = receiver.statistics()
    assert [e["uuid"] for e in got] == [f"v{i}" for i in range(len(broken) + 1)]
    assert stats.malformed == {"envelope": len(broken)}
    assert all(e.reason == "envelope" for e in errors)


@pytest.mark.redis
async def test_pickle_inside_a_redis_envelope_is_never_unpickled(
    redis_url: str, tmp_path: Path
) -> None:
    target = tmp_path / "pwned-by-envelope"
    errors: list[DecodeError] = []
    async with (
        raw_publisher("redis", redis_url) as raw,
        EventReceiver(
            redis_url, broker_options=raw.options, on_error=lambda e, m: errors.append(e)
        ) as receiver,
    ):
        await raw.publish(
            "task.started", pickle_bomb(target), "application/x-python-serialize", "binary"
        )
        await raw.publish("task.started", valid_body(0))
        got = await _collect(receiver, 1)
    assert got[0]["uuid"] == "v0"
    assert [e.reason for e in errors] == ["content-type"]
    assert "application/x-python-serialize" in str(errors[0])
    assert not target.exists()
    assert not os.path.exists(target)


async def test_a_flood_of_garbage_is_logged_sparingly(
    broker_kind: str, real_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """500 bad messages: every one counted, but the log is not flooded."""
    caplog.set_level(logging.WARNING, logger="aiocelev.receiver")
    async with (
        raw_publisher(broker_kind, real_url) as raw,
        EventReceiver(real_url, broker_options=raw.options) as receiver,
    ):
        for _ in range(500):
            await raw.publish("task.multi", b"garbage")
        await raw.publish("task.started", valid_body(0))
        got = await _collect(receiver, 1)
        stats = receiver.statistics()
    assert got[0]["uuid"] == "v0"
    assert stats.malformed == {"json": 500}
    warnings = [r for r in caplog.records if r.name == "aiocelev.receiver"]
    assert 1 <= len(warnings) <= 20


def test_event_helper_is_valid() -> None:
    from aiocelev._codec import validate_event

    assert validate_event(event(0)) is None


async def test_a_batch_of_half_a_million_non_events_costs_no_more_than_its_parse(
    broker_kind: str, real_url: str
) -> None:
    """A 1 MB array of 500,000 scalars: every element is counted (and reported), but
    decoding it does not allocate an error object per element (that cost ~250 MiB)."""
    import tracemalloc

    body = b"[" + b",".join([b"1"] * 500_000) + b"]"
    reported = 0

    def on_error(error: DecodeError, message: IncomingMessage) -> None:
        nonlocal reported
        reported += 1

    async with (
        raw_publisher(broker_kind, real_url) as raw,
        EventReceiver(real_url, broker_options=raw.options, on_error=on_error) as receiver,
    ):
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            await raw.publish("task.multi", body)
            await raw.publish("task.started", valid_body(0))
            got = await _collect(receiver, 1)
            peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
        stats = receiver.statistics()
    assert got[0]["uuid"] == "v0"
    assert stats.malformed == {"not-an-event": 500_000}
    assert reported == 500_000
    assert peak < 40 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"
