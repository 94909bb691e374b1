"""The lean AMQP consume path's frame demultiplexer, fed with frames pamqp marshals."""

from __future__ import annotations

import asyncio
import datetime
import decimal
from typing import Any

import anyio
import pytest
from hypothesis import given, settings, strategies as st
from pamqp import body as pbody, commands, frame, header, heartbeat

from aiocelev.brokers import _amqp_consume
from aiocelev.brokers._amqp_consume import DeliveryProtocol
from aiocelev.brokers._amqp_wire import HEARTBEAT_FRAME, DeliveryDemux, FrameError

CH = 5  # the attached channel
OTHER = 7  # a channel nobody attached


def deliver(
    tag: int,
    key: str,
    payload: bytes,
    *,
    channel: int = CH,
    frame_max: int = 131_064,
    properties: commands.Basic.Properties | None = None,
) -> bytes:
    """The frames of one delivery, as RabbitMQ sends them."""
    if properties is None:
        properties = commands.Basic.Properties(
            content_type="application/json",
            content_encoding="utf-8",
            headers={"hostname": "w@h"},
            delivery_mode=1,
            priority=0,
        )
    out = frame.marshal(
        commands.Basic.Deliver(
            consumer_tag="ctag-1", delivery_tag=tag, exchange="celeryev", routing_key=key
        ),
        channel,
    )
    out += frame.marshal(header.ContentHeader(0, len(payload), properties), channel)
    for start in range(0, len(payload), frame_max):
        out += frame.marshal(pbody.ContentBody(payload[start : start + frame_max]), channel)
    return out


HEARTBEAT = frame.marshal(heartbeat.Heartbeat(), 0)
CHANNEL_CLOSE = frame.marshal(
    commands.Channel.Close(
        reply_code=406, reply_text="PRECONDITION_FAILED - unknown tag", class_id=60, method_id=80
    ),
    CH,
)
CONNECTION_CLOSE = frame.marshal(
    commands.Connection.Close(
        reply_code=320, reply_text="CONNECTION_FORCED", class_id=0, method_id=0
    ),
    0,
)
QOS_OK = frame.marshal(commands.Basic.QosOk(), CH)


class Sink:
    """Collects what the demux hands to one attachment."""

    def __init__(self) -> None:
        self.messages: list[tuple[Any, ...]] = []
        self.wakes = 0
        self.closed = 0

    def deliver(self, *args: Any) -> None:
        self.messages.append(args)

    def wake(self) -> None:
        self.wakes += 1

    def close(self) -> None:
        self.closed += 1


def attached(channel: int = CH) -> tuple[DeliveryDemux, Sink]:
    demux = DeliveryDemux()
    sink = Sink()
    demux.attach(channel, sink.deliver, sink.wake, sink.close)
    return demux, sink


def feed_all(demux: DeliveryDemux, stream: bytes, cuts: list[int]) -> bytes:
    """Feed *stream* cut at *cuts*; return everything passed on."""
    passed = b""
    last = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        passed += demux.feed(stream[last:cut])
        last = cut
    return passed


def expected(tag: int, key: str, payload: bytes) -> tuple[Any, ...]:
    return (tag, key, payload, "application/json", "utf-8", {"hostname": "w@h"})


# A stream mixing everything an attached consumer's connection sees.
MIXED_PARTS = [
    deliver(1, "task.multi", b'[{"type": "task-started"}]'),
    HEARTBEAT,
    deliver(1, "worker.heartbeat", b'{"n": 1}', channel=OTHER),
    deliver(2, "task.x", b"x" * 3000, frame_max=1000),  # body over three frames
    QOS_OK,
    deliver(3, "t\u00e9.k", b""),  # empty body: no body frame at all
    deliver(4, "task.y", "é".encode()),
]
MIXED = b"".join(MIXED_PARTS)
MIXED_PASSED = HEARTBEAT + MIXED_PARTS[2] + QOS_OK
MIXED_MESSAGES = [
    expected(1, "task.multi", b'[{"type": "task-started"}]'),
    expected(2, "task.x", b"x" * 3000),
    expected(3, "t\u00e9.k", b""),
    expected(4, "task.y", "é".encode()),
]


def test_many_deliveries_in_one_chunk_one_wake() -> None:
    demux, sink = attached()
    stream = b"".join(deliver(i, "task.multi", b"[%d]" % i) for i in range(1, 501))
    assert demux.feed(stream) == b""
    assert sink.messages == [expected(i, "task.multi", b"[%d]" % i) for i in range(1, 501)]
    assert sink.wakes == 1
    assert demux.buffered == 0


def test_mixed_stream_in_one_chunk() -> None:
    demux, sink = attached()
    assert demux.feed(MIXED) == MIXED_PASSED
    assert sink.messages == MIXED_MESSAGES


def test_split_at_every_byte_offset() -> None:
    for cut in range(len(MIXED) + 1):
        demux, sink = attached()
        assert feed_all(demux, MIXED, [cut]) == MIXED_PASSED, cut
        assert sink.messages == MIXED_MESSAGES, cut
        assert demux.buffered == 0


def test_one_byte_at_a_time() -> None:
    demux, sink = attached()
    assert feed_all(demux, MIXED, list(range(len(MIXED)))) == MIXED_PASSED
    assert sink.messages == MIXED_MESSAGES


@settings(max_examples=300, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=2500), min_size=1, max_size=12),
    noise=st.lists(st.sampled_from(["heartbeat", "other", "qos"]), max_size=12),
    frame_max=st.integers(min_value=1, max_value=1200),
    data=st.data(),
)
def test_any_split_of_any_stream(
    bodies: list[bytes], noise: list[str], frame_max: int, data: st.DataObject
) -> None:
    """Deliveries (bodies over any number of frames) interleaved with heartbeats and
    frames of other channels, cut anywhere: the same deliveries, the rest passed on
    byte for byte and in order."""
    noise_frames = {
        "heartbeat": HEARTBEAT,
        "other": deliver(9, "other.key", b"o" * 50, channel=OTHER),
        "qos": QOS_OK,
    }
    stream = b""
    passed = b""
    for index, payload in enumerate(bodies):
        stream += deliver(index + 1, f"k.{index}", payload, frame_max=frame_max)
        if index < len(noise):
            stream += noise_frames[noise[index]]
            passed += noise_frames[noise[index]]
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=20))
    demux, sink = attached()
    assert feed_all(demux, stream, cuts) == passed
    assert sink.messages == [expected(i + 1, f"k.{i}", payload) for i, payload in enumerate(bodies)]
    assert demux.buffered == 0


def test_channel_close_mid_stream_detaches_and_passes_the_rest_on() -> None:
    demux, sink = attached()
    after = deliver(2, "task.b", b"[2]")
    stream = deliver(1, "task.a", b"[1]") + CHANNEL_CLOSE + after
    assert demux.feed(stream) == CHANNEL_CLOSE + after
    assert sink.messages == [expected(1, "task.a", b"[1]")]
    assert (sink.closed, sink.wakes, demux.attached) == (1, 1, 0)


def test_channel_close_ok_detaches_too() -> None:
    demux, sink = attached()
    close_ok = frame.marshal(commands.Channel.CloseOk(), CH)
    assert demux.feed(close_ok) == close_ok
    assert (sink.closed, demux.attached) == (1, 0)


def test_connection_close_mid_stream_is_passed_on_in_order() -> None:
    demux, sink = attached()
    stream = deliver(1, "task.a", b"[1]") + CONNECTION_CLOSE + deliver(2, "task.b", b"[2]")
    for cut in range(len(stream) + 1):
        demux, sink = attached()
        assert feed_all(demux, stream, [cut]) == CONNECTION_CLOSE
        assert [m[0] for m in sink.messages] == [1, 2]


def test_detached_channel_frames_are_passed_on() -> None:
    demux = DeliveryDemux()
    sink = Sink()
    attachment = demux.attach(CH, sink.deliver, sink.wake, sink.close)
    demux.detach(CH, attachment)
    stream = deliver(1, "task.a", b"[1]")
    assert demux.feed(stream) == stream
    assert sink.messages == []
    # a stale attachment does not detach the channel's new one
    newer = demux.attach(CH, sink.deliver, sink.wake, sink.close)
    demux.detach(CH, attachment)
    assert demux.feed(stream) == b""
    demux.detach(CH, newer)
    assert demux.attached == 0


def test_returned_content_on_an_attached_channel_is_passed_on() -> None:
    demux, sink = attached()
    returned = frame.marshal(
        commands.Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange="e", routing_key="k"),
        CH,
    )
    returned += frame.marshal(header.ContentHeader(0, 4, commands.Basic.Properties()), CH)
    returned += frame.marshal(pbody.ContentBody(b"ab"), CH)
    returned += frame.marshal(pbody.ContentBody(b"cd"), CH)
    stream = returned + deliver(1, "task.a", b"[1]")
    assert feed_all(demux, stream, [len(returned) - 3]) == returned
    assert sink.messages == [expected(1, "task.a", b"[1]")]


def test_properties_and_header_values_as_pamqp_decodes_them() -> None:
    headers = {
        "hostname": "w@h",
        "n": 5,
        "big": 2**40,
        "f": 1.5,
        "flag": True,
        "nested": {"a": [1, "x", None]},
        "when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "dec": decimal.Decimal("1.25"),
    }
    properties = commands.Basic.Properties(
        content_type="application/x-msgpack",
        headers=headers,
        message_id="abc",
        timestamp=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
        app_id="app",
    )
    demux, sink = attached()
    raw = deliver(1, "k", b"{}", properties=properties)
    demux.feed(raw + deliver(2, "k", b"{}", properties=commands.Basic.Properties()))
    (tag, key, payload, ctype, cenc, got), second = sink.messages
    assert (tag, key, payload, ctype, cenc) == (1, "k", b"{}", "application/x-msgpack", None)
    expected_headers = header.ContentHeader(0, 2, properties).properties.headers
    assert got == expected_headers
    assert second == (2, "k", b"{}", None, None, None)


def test_the_same_properties_are_decoded_once() -> None:
    demux, sink = attached()
    demux.feed(deliver(1, "k", b"[1]") + deliver(2, "k", b"[2]"))
    assert sink.messages[0][5] is sink.messages[1][5]  # the subscription copies it


@pytest.mark.parametrize(
    "bad",
    [
        deliver(1, "k", b"[1]")[:-1] + b"\x00",  # frame end missing
        frame.marshal(header.ContentHeader(0, 1, commands.Basic.Properties()), CH),
        frame.marshal(pbody.ContentBody(b"x"), CH),
        deliver(1, "k", b"[1]")[:-12] + frame.marshal(pbody.ContentBody(b"[12]"), CH),
    ],
    ids=["frame-end", "header-without-method", "body-without-header", "body-too-long"],
)
def test_malformed_frames_raise_and_the_rest_is_passed_on(bad: bytes) -> None:
    demux, sink = attached()
    good = deliver(7, "k", b"[7]")
    with pytest.raises(FrameError):
        demux.feed(good + bad)
    assert [m[0] for m in sink.messages] == [7]  # what came before was delivered
    assert sink.wakes == 1
    assert demux.broken
    assert demux.feed(good) == good


def test_attach_checks_the_channel_number() -> None:
    sink = Sink()
    with pytest.raises(ValueError):
        DeliveryDemux().attach(0, sink.deliver, sink.wake, sink.close)


async def test_protocol_passes_other_frames_and_keeps_aiormq_fed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiormq's reader gets the frames not taken, and a heartbeat when it would
    otherwise read nothing for a while although deliveries arrive."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = DeliveryProtocol(reader, loop)
    sink = Sink()
    protocol.demux.attach(CH, sink.deliver, sink.wake, sink.close)
    protocol.data_received(QOS_OK + deliver(1, "k", b"[1]"))
    assert await reader.readexactly(len(QOS_OK)) == QOS_OK
    monkeypatch.setattr(_amqp_consume, "_KEEPALIVE", 1e9)
    protocol.data_received(deliver(2, "k", b"[2]"))
    assert len(reader._buffer) == 0  # type: ignore[attr-defined]
    monkeypatch.setattr(_amqp_consume, "_KEEPALIVE", 0.0)
    protocol.data_received(deliver(3, "k", b"[3]"))
    assert await reader.readexactly(len(HEARTBEAT_FRAME)) == HEARTBEAT_FRAME
    assert HEARTBEAT_FRAME == HEARTBEAT
    assert [m[0] for m in sink.messages] == [1, 2, 3]


async def test_protocol_reads_into_one_reused_buffer() -> None:
    """The transport reads into the protocol's own buffer (no allocation per
    read); bytes kept across reads -- a delivery split between two reads, the
    frames passed on to aiormq -- are copies, intact after the buffer is
    overwritten by the next read."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = DeliveryProtocol(reader, loop)
    assert isinstance(protocol, asyncio.BufferedProtocol)
    sink = Sink()
    protocol.demux.attach(CH, sink.deliver, sink.wake, sink.close)
    payloads = [bytes([65 + i]) * (3000 + 7 * i) for i in range(6)]
    stream = QOS_OK + b"".join(deliver(i + 1, "k", p) for i, p in enumerate(payloads))
    buffer = protocol.get_buffer(-1)
    pos = 0
    for size in (5, 1000, 4096, 17, 9000, len(stream)):
        chunk = stream[pos : pos + size]
        pos += len(chunk)
        assert protocol.get_buffer(-1) is buffer
        buffer[: len(chunk)] = chunk
        protocol.buffer_updated(len(chunk))
        buffer[:] = b"\xff" * len(buffer)  # the next read overwrites it all
    assert pos == len(stream)
    assert [m[0] for m in sink.messages] == [1, 2, 3, 4, 5, 6]
    assert [bytes(m[2]) for m in sink.messages] == payloads
    assert await reader.readexactly(len(QOS_OK)) == QOS_OK


async def test_protocol_is_read_through_its_buffer_by_asyncio() -> None:
    """A real transport fills the protocol's buffer (asyncio picks the
    buffered path) and the deliveries come out whole."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = DeliveryProtocol(reader, loop)
    sink = Sink()
    protocol.demux.attach(CH, sink.deliver, sink.wake, sink.close)
    payloads = [bytes([97 + i % 26]) * 50_000 for i in range(12)]
    stream = b"".join(deliver(i + 1, "k", p) for i, p in enumerate(payloads))

    async def serve(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(stream)
        await w.drain()
        w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(lambda: protocol, "127.0.0.1", port)
        try:
            with anyio.fail_after(10):
                while len(sink.messages) < len(payloads):
                    await asyncio.sleep(0.01)
        finally:
            transport.close()
    assert [bytes(m[2]) for m in sink.messages] == payloads


async def test_protocol_fails_the_reader_on_malformed_frames() -> None:
    from aiormq.exceptions import InvalidFrameError

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = DeliveryProtocol(reader, loop)
    sink = Sink()
    protocol.demux.attach(CH, sink.deliver, sink.wake, sink.close)
    protocol.data_received(frame.marshal(pbody.ContentBody(b"x"), CH))
    with pytest.raises(InvalidFrameError):
        await reader.readexactly(1)
