"""The AMQP publish frame encoder writes exactly what pamqp marshals, frame by frame."""

from __future__ import annotations

from pamqp import body, commands, frame, header

from aiocelev._message import OutgoingMessage
from aiocelev.brokers._amqp_frames import PublishEncoder


def reference(
    channel: int, exchange: str, messages: list[OutgoingMessage], frame_max: int
) -> bytes:
    out = b""
    for m in messages:
        out += frame.marshal(
            commands.Basic.Publish(exchange=exchange, routing_key=m.routing_key), channel
        )
        properties = commands.Basic.Properties(
            content_type=m.content_type,
            content_encoding=m.content_encoding,
            headers=dict(m.headers),
            delivery_mode=m.delivery_mode,
            priority=m.priority,
        )
        out += frame.marshal(header.ContentHeader(0, len(m.body), properties), channel)
        for i in range(0, len(m.body), frame_max):
            out += frame.marshal(body.ContentBody(m.body[i : i + frame_max]), channel)
    return out


def test_frames_match_pamqp() -> None:
    messages = [
        OutgoingMessage("task.multi", b'[{"type": "task-started"}]', {"hostname": "w@h"}),
        OutgoingMessage("worker.heartbeat", b"x" * 300_000, {"hostname": "w@h"}),
        OutgoingMessage("task.x", b"", {}),
        OutgoingMessage("t\u00e9.k", "é".encode(), {"hostname": "h", "n": 1}, delivery_mode=2),
        OutgoingMessage("task.y", b"{}", {"hostname": "w@h"}, content_type="application/x"),
    ]
    encoder = PublishEncoder()
    for _ in range(2):  # cached properties and keys give the same bytes
        assert encoder.encode(7, "celeryev", messages, 131_064) == reference(
            7, "celeryev", messages, 131_064
        )
    assert encoder.encode(1, "ev", messages, 4096) == reference(1, "ev", messages, 4096)


def test_unencodable_batches_are_left_to_the_client_library() -> None:
    encoder = PublishEncoder()
    assert encoder.encode(1, "celeryev", [OutgoingMessage("k" * 256, b"{}")], 4096) is None
    assert encoder.encode(1, "e" * 256, [OutgoingMessage("k", b"{}")], 4096) is None


def test_unhashable_header_values_are_marshalled_each_time() -> None:
    messages = [OutgoingMessage("task.x", b"{}", {"hostname": "h", "list": [1, 2]})]
    assert PublishEncoder().encode(1, "celeryev", messages, 4096) == reference(
        1, "celeryev", messages, 4096
    )
