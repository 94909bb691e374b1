"""AMQP 0-9-1 deliveries taken straight out of the received bytes (no I/O here).

A delivery is three kinds of frames on its channel: the ``basic.deliver``
method, a content header (class 60, body size, properties) and the body in
zero or more body frames.  :class:`DeliveryDemux` splits whatever the socket
delivered into frames, assembles the deliveries of the channels a consumer is
*attached* to and hands each complete one to that consumer's callback, many
per call, without a task, a queue or a frame object per message.  Every other
frame -- connection and channel methods, heartbeats, deliveries of channels
nobody attached to, the replies to what the client library sent -- comes back
from :meth:`DeliveryDemux.feed` as the original bytes, in order, for the
client library to read as if nothing had been taken out.

Frame layout (AMQP 0-9-1, section 4.2.3):
``type:octet channel:short size:long payload:size frame-end:octet(0xCE)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from struct import Struct, error as struct_error
from typing import Any, final

from pamqp.decode import field_table

__all__ = [
    "FRAME_END",
    "HEARTBEAT_FRAME",
    "Attachment",
    "DeliverCallback",
    "DeliveryDemux",
    "FrameError",
]

FRAME_END = 0xCE
#: A heartbeat frame (type 8 on channel 0, empty payload).
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"

_METHOD, _HEADER, _BODY = 1, 2, 3
_FRAME = Struct(">BHI").unpack_from
_IDS = Struct(">HH").unpack_from
_U16 = Struct(">H").unpack_from
_U32 = Struct(">I").unpack_from
_U64 = Struct(">Q").unpack_from
_SIZE_FLAGS = Struct(">QH").unpack_from  # content header: body size, property flags

#: (class id, method id) of the methods that matter here.
_DELIVER = (60, 60)
_DELIVER_ID = (60 << 16) | 60
_CHANNEL_CLOSE = (20, 40)
_CHANNEL_CLOSE_OK = (20, 41)
#: Other methods followed by content: ``basic.return`` and ``basic.get-ok``.
_CONTENT_METHODS = frozenset({(60, 50), (60, 71)})

#: Property flags (content header): the three properties read here.
_CONTENT_TYPE = 0x8000
_CONTENT_ENCODING = 0x4000
_HEADERS = 0x2000

#: Distinct property prefixes / routing keys remembered before starting over.
_CACHE_SIZE = 1024

# Per-channel assembly states.
_IDLE = 0  # between deliveries
_WANT_HEADER = 1  # basic.deliver seen
_WANT_BODY = 2  # content header seen, body frames to come
_FOREIGN_HEADER = 3  # another content-bearing method: its frames are passed on
_FOREIGN_BODY = 4

#: ``deliver(delivery_tag, routing_key, body, content_type, content_encoding, headers)``.
#: *headers* is shared between deliveries with the same properties: copy it
#: before handing it out.
DeliverCallback = Callable[
    [int, str, bytes, "str | None", "str | None", "Mapping[str, Any] | None"], None
]


class FrameError(Exception):
    """The bytes are not valid AMQP frames (the connection cannot go on)."""


@final
class Attachment:
    """One consumer's channel: its callbacks and the delivery being assembled.

    :param deliver: called with each complete delivery.
    :param wake: called once at the end of every :meth:`DeliveryDemux.feed`
        that delivered something to this attachment.
    :param closed: called when the broker closes the channel (or confirms its
        close); the attachment is detached by then.
    """

    __slots__ = (
        "closed",
        "deliver",
        "key",
        "parts",
        "received",
        "remaining",
        "size",
        "state",
        "tag",
        "touched",
        "wake",
        "ctype",
        "cenc",
        "headers",
    )

    def __init__(
        self, deliver: DeliverCallback, wake: Callable[[], None], closed: Callable[[], None]
    ) -> None:
        self.deliver = deliver
        self.wake = wake
        self.closed = closed
        self.state = _IDLE
        self.tag = 0
        self.key = ""
        self.size = 0
        self.remaining = 0
        self.received = 0
        self.parts: list[bytes] = []
        self.touched = False
        self.ctype: str | None = None
        self.cenc: str | None = None
        self.headers: Mapping[str, Any] | None = None


@final
class DeliveryDemux:
    """Splits received bytes into frames; assembles the deliveries of attached channels."""

    __slots__ = ("_attached", "_have", "_need", "_parts", "_props", "_strings", "broken")

    def __init__(self) -> None:
        self._attached: dict[int, Attachment] = {}
        #: Bytes of an incomplete frame (or frame header) from earlier calls.
        self._parts: list[bytes] = []
        self._have = 0
        #: How many bytes the first incomplete frame needs in all (8 if unknown).
        self._need = 0
        self._props: dict[bytes, tuple[str | None, str | None, Mapping[str, Any] | None]] = {}
        self._strings: dict[bytes, str] = {}
        #: Set once a :class:`FrameError` was raised: everything is passed on after it.
        self.broken = False

    @property
    def attached(self) -> int:
        """How many channels are attached."""
        return len(self._attached)

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back for the next :meth:`feed`."""
        return self._have

    def attach(
        self,
        channel: int,
        deliver: DeliverCallback,
        wake: Callable[[], None],
        closed: Callable[[], None],
    ) -> Attachment:
        """Take over the deliveries of *channel* (before ``basic.consume`` is sent)."""
        if not 0 < channel < 65536:
            raise ValueError(f"not a channel number: {channel}")
        attachment = Attachment(deliver, wake, closed)
        self._attached[channel] = attachment
        return attachment

    def detach(self, channel: int, attachment: Attachment) -> None:
        """Stop taking deliveries of *channel* if *attachment* still holds it.

        A delivery half assembled is dropped with it (its channel is closing).
        """
        if self._attached.get(channel) is attachment:
            del self._attached[channel]

    def _string(self, raw: bytes) -> str:
        text = self._strings.get(raw)
        if text is None:
            text = raw.decode("utf-8", "surrogateescape")
            if len(self._strings) >= _CACHE_SIZE:
                self._strings.clear()
            self._strings[raw] = text
        return text

    def feed(self, data: bytes) -> bytes:
        """Take *data* (the next bytes of the stream); return the bytes to pass on.

        Complete deliveries of attached channels go to their ``deliver``
        callbacks, in order; each attachment that got one is woken once at the
        end.  The returned bytes are whole frames in stream order; an
        incomplete frame at the end is kept for the next call.

        :raises FrameError: a frame does not end with ``0xCE``, or a delivery's
            frames are out of order or malformed.  Deliveries before it were
            handed out; the demux passes everything on from then on.
        """
        if self.broken:
            return data
        if self._parts:
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return b""
            buf = b"".join(self._parts)
            self._parts.clear()
            self._have = 0
        else:
            buf = data
        touched: list[Attachment] = []
        try:
            out = self._split(buf, touched)
        except FrameError:
            self.broken = True
            raise
        finally:
            for attachment in touched:
                attachment.touched = False
                attachment.wake()
        return out

    def _split(self, buf: bytes, touched: list[Attachment]) -> bytes:
        try:
            return self._frames(buf, touched)
        except (IndexError, struct_error) as exc:
            raise FrameError(f"malformed frame ({exc})") from exc

    def _frames(self, buf: bytes, touched: list[Attachment]) -> bytes:
        attached = self._attached
        frame = _FRAME
        u32 = _U32
        strings = self._strings
        properties = self._props
        n = len(buf)
        pos = 0
        runs: list[bytes] = []
        run_start = run_end = 0
        while n - pos >= 8:
            ftype, channel, size = frame(buf, pos)
            end = pos + size + 8
            if end > n:
                break
            if buf[end - 1] != FRAME_END:
                raise FrameError(f"frame of type {ftype} on channel {channel} lacks its frame end")
            att = attached.get(channel)
            if att is not None:
                if (
                    ftype == _METHOD
                    and size >= 16
                    and att.state == _IDLE
                    and u32(buf, pos + 7)[0] == _DELIVER_ID
                ):
                    # basic.deliver: consumer-tag shortstr, delivery-tag
                    # longlong, redelivered bit, exchange shortstr, routing-key
                    # shortstr.  When its content header and one body frame
                    # are in the buffer too, the delivery is taken right here.
                    limit = end - 1
                    p = pos + 12 + buf[pos + 11]
                    if p + 11 > limit:
                        raise FrameError(f"channel {channel}: malformed basic.deliver")
                    tag = _U64(buf, p)[0]
                    p += 10 + buf[p + 9]
                    ksize = buf[p]
                    p += 1
                    if p + ksize > limit:
                        raise FrameError(f"channel {channel}: malformed basic.deliver")
                    raw = buf[p : p + ksize]
                    key = strings.get(raw)
                    if key is None:
                        key = self._string(raw)
                    hp = end
                    if n - hp >= 22:
                        htype, hchannel, hsize = frame(buf, hp)
                        hend = hp + hsize + 8
                        if htype == _HEADER and hchannel == channel and hend <= n and hsize >= 14:
                            if buf[hend - 1] != FRAME_END:
                                raise FrameError(f"channel {channel}: content header lacks its end")
                            bsize, flags = _SIZE_FLAGS(buf, hp + 11)
                            q = hp + 21
                            if flags & _CONTENT_TYPE:
                                q += 1 + buf[q]
                            if flags & _CONTENT_ENCODING:
                                q += 1 + buf[q]
                            if flags & _HEADERS:
                                q += 4 + u32(buf, q)[0]
                            if q > hend - 1:
                                raise FrameError(f"channel {channel}: malformed content header")
                            props = properties.get(buf[hp + 19 : q])
                            if props is None:
                                props = self._remember(channel, flags, buf, hp, q)
                            body = b""
                            bend = hend
                            if bsize:
                                bend = 0
                                if n - hend >= 8:
                                    btype, bchannel, bsz = frame(buf, hend)
                                    if (
                                        btype == _BODY
                                        and bchannel == channel
                                        and bsz == bsize
                                        and hend + bsz + 8 <= n
                                    ):
                                        bend = hend + bsz + 8
                                        if buf[bend - 1] != FRAME_END:
                                            raise FrameError(
                                                f"channel {channel}: body frame lacks its end"
                                            )
                                        body = buf[hend + 7 : bend - 1]
                            if bend:
                                att.deliver(tag, key, body, props[0], props[1], props[2])
                                if not att.touched:
                                    att.touched = True
                                    touched.append(att)
                                pos = bend
                                continue
                    # The rest of the delivery comes in later frames (or reads).
                    att.tag = tag
                    att.key = key
                    att.state = _WANT_HEADER
                    pos = end
                    continue
                if self._take(att, channel, ftype, buf, pos, end, touched):
                    pos = end
                    continue
            # passed on: extend the current run of passed-on frames
            if run_end != pos:
                if run_end > run_start:
                    runs.append(buf[run_start:run_end])
                run_start = pos
            run_end = end
            pos = end
        if pos < n:
            rest = buf[pos:]
            self._parts.append(rest)
            self._have = len(rest)
            self._need = frame(buf, pos)[2] + 8 if n - pos >= 7 else 8
        if run_end > run_start:
            if run_start == 0 and run_end == n:
                return buf
            runs.append(buf[run_start:run_end])
        if not runs:
            return b""
        return runs[0] if len(runs) == 1 else b"".join(runs)

    def _take(
        self,
        att: Attachment,
        channel: int,
        ftype: int,
        buf: bytes,
        pos: int,
        end: int,
        touched: list[Attachment],
    ) -> bool:
        """Handle one frame of an attached channel; ``False``: pass it on."""
        state = att.state
        if ftype == _BODY:
            if state == _WANT_BODY:
                chunk = buf[pos + 7 : end - 1]
                got = att.received + len(chunk)
                if got > att.size:
                    raise FrameError(f"channel {channel}: body longer than announced")
                if got == att.size and not att.parts:
                    body = chunk
                else:
                    att.parts.append(chunk)
                    att.received = got
                    if got < att.size:
                        return True
                    body = b"".join(att.parts)
                    att.parts = []
                    att.received = 0
                att.state = _IDLE
                self._done(att, body, touched)
                return True
            if state == _FOREIGN_BODY:
                att.remaining -= end - pos - 8
                if att.remaining <= 0:
                    att.state = _IDLE
                return False
            raise FrameError(f"channel {channel}: body frame without a content header")
        if ftype == _HEADER:
            if state == _WANT_HEADER:
                self._header(att, channel, buf, pos, end)
                if att.size == 0:
                    att.state = _IDLE
                    self._done(att, b"", touched)
                else:
                    att.state = _WANT_BODY
                return True
            if state == _FOREIGN_HEADER:
                if end - pos < 20:
                    raise FrameError(f"channel {channel}: short content header")
                att.remaining = _U64(buf, pos + 11)[0]
                att.state = _FOREIGN_BODY if att.remaining else _IDLE
                return False
            raise FrameError(f"channel {channel}: content header without a method")
        if ftype != _METHOD:
            return False
        if state != _IDLE:
            raise FrameError(f"channel {channel}: method frame inside a message's content")
        if end - pos < 12:
            raise FrameError(f"channel {channel}: short method frame")
        ids = _IDS(buf, pos + 7)
        if ids == _DELIVER:
            self._deliver(att, channel, buf, pos, end)
            return True
        if ids in (_CHANNEL_CLOSE, _CHANNEL_CLOSE_OK):
            # The client library gets the frame (it answers and closes the
            # channel object); the number may be reused right after.
            self.detach(channel, att)
            att.closed()
        elif ids in _CONTENT_METHODS:
            att.state = _FOREIGN_HEADER
        return False

    def _deliver(self, att: Attachment, channel: int, buf: bytes, pos: int, end: int) -> None:
        # basic.deliver: consumer-tag shortstr, delivery-tag longlong,
        # redelivered bit, exchange shortstr, routing-key shortstr.
        try:
            p = pos + 11
            p += 1 + buf[p]
            tag = _U64(buf, p)[0]
            p += 9
            p += 1 + buf[p]
            size = buf[p]
            p += 1
            if p + size > end - 1:
                raise FrameError(f"channel {channel}: malformed basic.deliver")
            raw = buf[p : p + size]
        except IndexError as exc:
            raise FrameError(f"channel {channel}: malformed basic.deliver") from exc
        key = self._strings.get(raw)
        att.key = key if key is not None else self._string(raw)
        att.tag = tag
        att.state = _WANT_HEADER

    def _header(self, att: Attachment, channel: int, buf: bytes, pos: int, end: int) -> None:
        # class-id short, weight short, body-size longlong, property flags short,
        # then the properties whose flag is set, in flag order.
        limit = end - 1
        if pos + 21 > limit:
            raise FrameError(f"channel {channel}: short content header")
        att.size = _U64(buf, pos + 11)[0]
        flags = _U16(buf, pos + 19)[0]
        p = pos + 21
        if flags & _CONTENT_TYPE:
            p += 1 + buf[p]
        if flags & _CONTENT_ENCODING:
            if p >= limit:
                raise FrameError(f"channel {channel}: malformed content header")
            p += 1 + buf[p]
        if flags & _HEADERS:
            if p + 4 > limit:
                raise FrameError(f"channel {channel}: malformed content header")
            p += 4 + _U32(buf, p)[0]
        if p > limit:
            raise FrameError(f"channel {channel}: malformed content header")
        props = self._props.get(buf[pos + 19 : p])
        if props is None:
            props = self._remember(channel, flags, buf, pos, p)
        att.ctype, att.cenc, att.headers = props

    def _remember(
        self, channel: int, flags: int, buf: bytes, pos: int, stop: int
    ) -> tuple[str | None, str | None, Mapping[str, Any] | None]:
        """Decode the properties of the content header at *pos* (up to *stop*); cache them."""
        props = self._properties(channel, flags, buf, pos + 21, stop)
        if len(self._props) >= _CACHE_SIZE:
            self._props.clear()
        self._props[buf[pos + 19 : stop]] = props
        return props

    def _properties(
        self, channel: int, flags: int, buf: bytes, p: int, stop: int
    ) -> tuple[str | None, str | None, Mapping[str, Any] | None]:
        ctype = cenc = None
        headers: Mapping[str, Any] | None = None
        if flags & _CONTENT_TYPE:
            size = buf[p]
            ctype = self._string(buf[p + 1 : p + 1 + size])
            p += 1 + size
        if flags & _CONTENT_ENCODING:
            size = buf[p]
            cenc = self._string(buf[p + 1 : p + 1 + size])
            p += 1 + size
        if flags & _HEADERS:
            try:
                _, headers = field_table(buf[p:stop])
            except Exception as exc:  # pamqp raises several types on bad tables
                raise FrameError(f"channel {channel}: malformed headers table ({exc})") from exc
        return ctype, cenc, headers

    def _done(self, att: Attachment, body: bytes, touched: list[Attachment]) -> None:
        att.deliver(att.tag, att.key, body, att.ctype, att.cenc, att.headers)
        if not att.touched:
            att.touched = True
            touched.append(att)
