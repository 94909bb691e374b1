"""What-if experiments: candidate hot-path fixes, applied only inside benchmark processes.

``python -m benchmarks CASE --patch NAME`` applies NAME to aiocelev in every
child process (through ``AIOCELEV_BENCH_PATCHES``), so the effect of a fix
proposed in docs/benchmarks.md can be measured before it is made in the
library.  Nothing here changes aiocelev itself.

* ``fast-loads``: parse with orjson first and fall back to the exact
  standard-library parse only when the result holds a float of magnitude
  >= 2**63 (which is what orjson makes of an integer beyond 64 bits), instead
  of scanning every body for 19-digit runs with a regular expression first.
* ``orjson-encode``: encode each event with orjson in the dispatcher (compact
  separators: the same JSON value, not kombu's exact bytes).
* ``amqp-frames``: the AMQP adapter encodes a whole batch of ``basic.publish``
  frames itself (the properties of identical headers marshalled once) and
  hands them to aiormq's writer as one buffer, drained once (a prototype: no
  confirms, no channel-flow handling).
* ``redis-fast-drain``: a ``read_response(timeout=0)`` (the Redis adapter's
  drain of what already arrived) takes a complete reply straight from the
  hiredis reader's buffer, without entering ``asyncio.timeout()``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

ENV = "AIOCELEV_BENCH_PATCHES"

_BIG = float(2**63)


def _deep_big(obj: Any) -> bool:
    t = type(obj)
    if t is float:
        return bool(obj >= _BIG or obj <= -_BIG)
    if t is dict:
        return any(_deep_big(v) for v in obj.values())
    if t is list:
        return any(_deep_big(v) for v in obj)
    return False


def _has_big_float(obj: Any) -> bool:
    """Whether a parsed body holds a float of magnitude >= 2**63 (flat events: one pass)."""
    for event in obj if type(obj) is list else (obj,):
        if type(event) is not dict:
            if _deep_big(event):
                return True
            continue
        for v in event.values():
            t = type(v)
            if t is float:
                if v >= _BIG or v <= -_BIG:
                    return True
            elif (t is dict or t is list) and _deep_big(v):
                return True
    return False


def _fast_loads() -> None:
    import orjson

    from aiocelev import _codec
    from aiocelev.brokers import _redis_envelope

    exact = _codec.loads

    def loads(body: bytes | str) -> Any:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return exact(body)
        if _has_big_float(obj):
            return exact(body)
        return obj

    _codec.loads = loads
    # The Redis adapter decodes kombu's envelope with its own reference.
    _redis_envelope.loads = loads  # type: ignore[attr-defined]


def _orjson_encode() -> None:
    import orjson

    from aiocelev import _dispatcher

    def dumps(obj: Any) -> str:
        return orjson.dumps(obj).decode()

    # The dispatcher encodes with ``dumps`` / ``dumps_plain`` (older versions:
    # ``_encoder.encode``).
    if hasattr(_dispatcher, "dumps_plain"):
        _dispatcher.dumps_plain = orjson.dumps
    if hasattr(_dispatcher, "dumps"):
        _dispatcher.dumps = dumps
    else:  # pragma: no cover - older dispatcher

        class _Encoder:
            def encode(self, obj: Any) -> str:
                return dumps(obj)

        _dispatcher._encoder = _Encoder()  # type: ignore[attr-defined]


def _amqp_frames() -> None:
    import struct

    from aiormq.abc import ChannelFrame
    from pamqp import commands

    from aiocelev._exceptions import BrokerConnectionError, BrokerError, ClosedError
    from aiocelev.brokers._amqp_errors import map_errors
    from aiocelev.brokers._amqp_publish import AmqpPublisher

    original = AmqpPublisher.publish
    props_cache: dict[tuple[Any, ...], bytes] = {}

    def frame(kind: int, channel: int, payload: bytes) -> bytes:
        return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"

    def shortstr(text: str) -> bytes:
        raw = text.encode()
        return bytes((len(raw),)) + raw

    async def publish(self: Any, messages: Sequence[Any]) -> None:
        link = self._link
        if link.opts.confirm_publish:
            await original(self, messages)
            return
        if link.closed:
            raise ClosedError("the AMQP broker is closed")
        channel = await self._ready_channel()
        where = f"publishing to {link.current_masked}"
        try:
            with map_errors(where, publish=True):
                underlay = await channel.get_underlay_channel()
                number = underlay.number
                chunk = underlay.max_content_size
                exchange_name = shortstr(link.opts.exchange)
                parts: list[bytes] = []
                for m in messages:
                    key = (
                        m.content_type,
                        m.content_encoding,
                        tuple(m.headers.items()),
                        m.delivery_mode,
                        m.priority,
                    )
                    props = props_cache.get(key)
                    if props is None:
                        props = commands.Basic.Properties(
                            content_type=m.content_type,
                            content_encoding=m.content_encoding,
                            headers=dict(m.headers),
                            delivery_mode=m.delivery_mode,
                            priority=m.priority,
                        ).marshal()
                        props_cache[key] = props
                    method = (
                        b"\x00\x3c\x00\x28\x00\x00"
                        + exchange_name
                        + shortstr(m.routing_key)
                        + b"\x00"
                    )
                    parts.append(frame(1, number, method))
                    body = m.body
                    parts.append(frame(2, number, struct.pack(">HHQ", 60, 0, len(body)) + props))
                    for i in range(0, len(body), chunk):
                        parts.append(frame(3, number, body[i : i + chunk]))
                drained = underlay.create_future()
                await underlay.connection.write_queue.put(
                    ChannelFrame(payload=b"".join(parts), should_close=False, drain_future=drained)
                )
                await drained
        except BrokerError as exc:
            if isinstance(exc, BrokerConnectionError) or not link.alive():
                await link.drop()
                if not isinstance(exc, BrokerConnectionError):
                    raise BrokerConnectionError(str(exc)) from exc
            raise

    AmqpPublisher.publish = publish  # type: ignore[method-assign]


def _redis_fast_drain() -> None:
    from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
    from redis.asyncio.connection import AbstractConnection

    original = AbstractConnection.read_response

    async def read_response(self: Any, *args: Any, **kwargs: Any) -> Any:
        parser = getattr(self, "_parser", None)
        if kwargs.get("timeout") == 0 and not args and isinstance(parser, _AsyncHiredisParser):
            reader = getattr(parser, "_reader", None)
            if reader is not None:
                reply = reader.gets()
                if reply is not NOT_ENOUGH_DATA:
                    if isinstance(reply, list) and reply and not isinstance(reply[0], Exception):
                        return reply
                    # Anything unusual: hand it back the slow way.
                    raise RuntimeError("unexpected reply in the fast drain what-if")
        return await original(self, *args, **kwargs)

    AbstractConnection.read_response = read_response  # type: ignore[method-assign]


PATCHES: dict[str, Callable[[], None]] = {
    "redis-fast-drain": _redis_fast_drain,
    "amqp-frames": _amqp_frames,
    "fast-loads": _fast_loads,
    "orjson-encode": _orjson_encode,
}


#: Modules a patch needs beyond aiocelev's own dependencies.
REQUIRES: dict[str, tuple[str, ...]] = {
    "fast-loads": ("orjson",),
    "orjson-encode": ("orjson",),
}


def missing_requirements(names: Sequence[str]) -> list[str]:
    """``"NAME needs MODULE"`` for each patch in *names* whose modules are not installed."""
    from importlib.util import find_spec

    return [
        f"--patch {name} needs {module} (pip install {module})"
        for name in names
        for module in REQUIRES.get(name, ())
        if find_spec(module) is None
    ]


def apply_from_env() -> list[str]:
    """Apply the patches named in ``$AIOCELEV_BENCH_PATCHES`` (comma-separated)."""
    names = [n for n in os.environ.get(ENV, "").split(",") if n]
    for name in names:
        PATCHES[name]()
    return names
