"""AMQP 0-9-1 frames of ``basic.publish``, written straight into one buffer.

A publish is three kinds of frames on the channel: the ``basic.publish``
method, a content header (class 60, body size, properties) and the body split
into frames of at most ``frame_max - 8`` bytes.  Events of one dispatcher
share their properties (content type, encoding, the ``hostname`` header,
delivery mode, priority), so the property table is marshalled once per
distinct set and reused; a whole batch of messages becomes one ``bytes``
object for the connection's writer.  Frame layout (AMQP 0-9-1, section 4.2.3):
``type:octet channel:short size:long payload frame-end(0xCE)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from struct import Struct
from typing import Any

from pamqp.commands import Basic

from .._message import OutgoingMessage

__all__ = ["PublishEncoder"]

_FRAME_HEADER = Struct(">BHI")
_CONTENT_HEADER = Struct(">HHQ")  # class id, weight, body size
_METHOD, _HEADER, _BODY = 1, 2, 3
_FRAME_END = b"\xce"
#: ``basic.publish``: class 60, method 40, then ``reserved-1`` (short 0).
_PUBLISH_PREFIX = b"\x00\x3c\x00\x28\x00\x00"
_BASIC_CLASS = 60
#: Distinct property sets remembered (one per dispatcher hostname in practice).
_CACHE_SIZE = 256


def _shortstr(text: str) -> bytes | None:
    raw = text.encode("utf-8")
    if len(raw) > 255:
        return None
    return bytes((len(raw),)) + raw


class PublishEncoder:
    """Encodes batches of :class:`~aiocelev.OutgoingMessage` as ``basic.publish`` frames."""

    __slots__ = ("_keys", "_properties")

    def __init__(self) -> None:
        self._properties: dict[tuple[Any, ...], bytes] = {}
        self._keys: dict[str, bytes | None] = {}

    def _properties_of(self, message: OutgoingMessage) -> bytes:
        headers = message.headers
        key: tuple[Any, ...] = (
            message.content_type,
            message.content_encoding,
            tuple(headers.items()) if headers else (),
            message.delivery_mode,
            message.priority,
        )
        try:
            raw = self._properties.get(key)
        except TypeError:  # an unhashable header value: marshal it every time
            raw, key = None, ()
        if raw is None:
            raw = Basic.Properties(
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                headers=dict(headers),
                delivery_mode=message.delivery_mode,
                priority=message.priority,
            ).marshal()
            if key:
                if len(self._properties) >= _CACHE_SIZE:
                    self._properties.clear()
                self._properties[key] = raw
        return raw

    def _routing_key(self, key: str) -> bytes | None:
        raw = self._keys.get(key, b"")
        if raw == b"":
            raw = _shortstr(key)
            if len(self._keys) >= _CACHE_SIZE:
                self._keys.clear()
            self._keys[key] = raw
        return raw

    def encode(
        self, channel: int, exchange: str, messages: Sequence[OutgoingMessage], frame_max: int
    ) -> bytes | None:
        """The frames publishing *messages* on *channel*, or ``None`` if one cannot be encoded here.

        :param frame_max: the largest body frame payload (the channel's ``max_content_size``).
        """
        exchange_raw = self._routing_key(exchange)
        if exchange_raw is None or frame_max < 1:
            return None
        pack = _FRAME_HEADER.pack
        content = _CONTENT_HEADER.pack
        parts: list[bytes] = []
        append = parts.append
        for message in messages:
            key = self._routing_key(message.routing_key)
            if key is None:
                return None
            method = _PUBLISH_PREFIX + exchange_raw + key + b"\x00"  # mandatory/immediate off
            append(pack(_METHOD, channel, len(method)))
            append(method)
            append(_FRAME_END)
            body = message.body
            size = len(body)
            header = content(_BASIC_CLASS, 0, size) + self._properties_of(message)
            append(pack(_HEADER, channel, len(header)))
            append(header)
            append(_FRAME_END)
            for start in range(0, size, frame_max):
                chunk = body[start : start + frame_max]
                append(pack(_BODY, channel, len(chunk)))
                append(chunk)
                append(_FRAME_END)
        return b"".join(parts)
