"""The publisher side process of the receive, monitor, latency and overload cases.

``python -m benchmarks._stream '<json spec>'``.  It connects, then sends probe
events (one message each) every 20 ms until the receiver creates
``spec["go"]`` -- proof that the receiver's subscription is live -- and then
sends ``spec["n"]`` task events, as fast as it can or at ``spec["rate"]``
events/s, and prints what it sent.

Modes:

* ``raw-batched`` / ``raw-single``: pre-encoded lifecycle events
  (task-received / started / succeeded) published through aiocelev's broker
  adapter, 24 per ``task.multi`` message (what a Celery worker sends under
  load) or one per message.  The fastest way to produce a Celery-identical
  stream, so that the receiver, not the publisher, is the bottleneck.
* ``aiocelev``: :class:`aiocelev.EventDispatcher` with default batching.
* ``celery-batched`` / ``celery-single``: Celery's ``EventDispatcher`` as a
  worker configures it (``buffer_group=["task"]``, flushing when 24 are
  buffered and whenever the sender goes idle -- the worker's
  ``on_send_buffered`` flush on the next loop iteration) or unbatched.

Latency modes stamp ``sent_at`` (epoch seconds) into every event.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from ._common import (
    CELERY_BUFFER_LIMIT,
    HOSTNAME,
    PROBE_TYPE,
    URLS,
    broker_options,
    emit,
    lifecycle_events,
)


def _wait_go_sync(go: str, send_probe: Any, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            raise SystemExit("receiver never saw a probe")
        send_probe()
        time.sleep(0.02)


async def _hold(spec: dict[str, Any], limit: float = 60.0) -> None:
    """With ``spec["hold"]``: say the stream is sent, then idle until the receiver is done.

    The receiver creates the ``hold`` file once it has stopped its clocks;
    until then this process only sleeps, so that its teardown (closing the
    connection, freeing the stream, the interpreter's exit: tens of
    milliseconds of CPU) does not compete for the machine's cores with a
    receiver that is still measuring.  ``<hold>.sent`` tells the receiver
    that everything was published (what the publisher's exit told it before).
    """
    import anyio

    hold = spec.get("hold")
    if not hold:
        return
    open(hold + ".sent", "w").close()
    deadline = time.monotonic() + limit
    while not os.path.exists(hold) and time.monotonic() < deadline:
        await anyio.sleep(0.05)


def _raw_messages(spec: dict[str, Any]) -> tuple[list[Any], int]:
    from aiocelev._codec import dumps
    from aiocelev._message import OutgoingMessage

    n = spec["n"]
    events = list(lifecycle_events(n))
    messages: list[OutgoingMessage] = []
    if spec["mode"] == "raw-batched":
        for i in range(0, n, CELERY_BUFFER_LIMIT):
            chunk = events[i : i + CELERY_BUFFER_LIMIT]
            messages.append(
                OutgoingMessage(
                    routing_key="task.multi",
                    body=dumps(chunk).encode(),
                    headers={"hostname": chunk[0]["hostname"]},
                )
            )
    else:
        for event in events:
            messages.append(
                OutgoingMessage(
                    routing_key=event["type"].replace("-", "."),
                    body=dumps(event).encode(),
                    headers={"hostname": event["hostname"]},
                )
            )
    return messages, n


async def _fast_publish(broker: Any, messages: list[Any]) -> Any:
    """A ``publish(messages)`` for the raw stream that outruns any receiver.

    On RabbitMQ it pipelines ``basic.publish`` frames through aiormq (waiting
    for the socket only after the last message of each call) -- about twice
    what a per-message ``exchange.publish`` achieves.  On Redis every
    ``PUBLISH`` of *messages* is encoded up front (kombu's envelope, made by the
    adapter's own encoder) and written as raw protocol on a connection of its
    own: through redis-py the publisher, not the receivers, set the pace of one
    event per message (both receivers then read exactly the publisher's ~25-30k
    events/s).  Elsewhere it is the adapter's own ``publish``.
    """
    if hasattr(broker, "_channels") and URLS["redis"].startswith("redis://"):
        return await _fast_publish_redis(broker, messages)
    if not hasattr(broker, "_publisher_exchange"):
        return broker.publish
    from pamqp import commands

    exchange = await broker._publisher_exchange()
    channel = await exchange.channel.get_underlay_channel()
    name = exchange.name

    async def publish(messages: list[Any]) -> None:
        last = len(messages) - 1
        for i, m in enumerate(messages):
            properties = commands.Basic.Properties(
                content_type=m.content_type,
                content_encoding=m.content_encoding,
                headers=dict(m.headers),
                delivery_mode=1,
                priority=0,
                message_id="-",
            )
            await channel.basic_publish(
                m.body,
                exchange=name,
                routing_key=m.routing_key,
                properties=properties,
                wait=i == last,
            )

    return publish


async def _fast_publish_redis(broker: Any, messages: list[Any]) -> Any:
    import asyncio
    from urllib.parse import urlsplit

    import hiredis

    from aiocelev.brokers._redis_envelope import encode_envelope

    channels = broker._channels
    encoded: dict[int, bytes] = {}
    for m in messages:
        channel = channels.channel_for(m.routing_key).encode()
        body = encode_envelope(m, channels.exchange)
        encoded[id(m)] = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            len(channel), channel, len(body), body
        )  # fmt: skip
    url = urlsplit(URLS["redis"])
    reader, writer = await asyncio.open_connection(url.hostname, url.port or 6379)
    parser = hiredis.Reader()
    if url.password:
        user = url.username or "default"
        writer.write(b"*3\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            len(user), user.encode(), len(url.password), url.password.encode()))  # fmt: skip
        line = await reader.readline()
        if not line.startswith(b"+OK"):
            raise RuntimeError(f"redis AUTH refused: {line!r}")

    async def publish(batch: list[Any]) -> None:
        writer.write(b"".join([encoded[id(m)] for m in batch]))
        await writer.drain()
        # One integer reply (the number of subscribers) per PUBLISH; an error is fatal.
        replies = 0
        while replies < len(batch):
            chunk = await reader.read(65536)
            if not chunk:
                raise RuntimeError("redis closed the publishing connection")
            parser.feed(chunk)
            while (reply := parser.gets()) is not False:
                if isinstance(reply, hiredis.ReplyError):
                    raise RuntimeError(f"redis refused a PUBLISH: {reply}")
                replies += 1

    return publish


async def _run_async(spec: dict[str, Any]) -> dict[str, Any]:
    import anyio

    from aiocelev import EventDispatcher, OutgoingMessage, open_broker
    from aiocelev._codec import dumps

    mode = spec["mode"]
    n = spec["n"]
    rate = spec.get("rate")
    go = spec["go"]
    broker = open_broker(URLS[spec["broker"]], **broker_options(spec["broker"]))
    await broker.connect()
    try:
        if mode.startswith("raw-"):
            messages, events = _raw_messages(spec)
            per_message = CELERY_BUFFER_LIMIT if mode == "raw-batched" else 1
            probe = OutgoingMessage(
                routing_key="worker.benchprobe",
                body=dumps(
                    {"hostname": HOSTNAME, "timestamp": time.time(), "type": PROBE_TYPE}
                ).encode(),
                headers={"hostname": HOSTNAME},
            )
            while not os.path.exists(go):
                await broker.publish([probe])
                await anyio.sleep(0.02)
            publish = await _fast_publish(broker, messages)
            start = time.perf_counter()
            chunk = 64
            if rate:
                # Paced: publish what is due, then sleep.
                sent = 0
                while sent < len(messages):
                    due = min(
                        len(messages),
                        int((time.perf_counter() - start) * rate / per_message) + 1,
                    )
                    if due > sent:
                        await publish(messages[sent:due])
                        sent = due
                    else:
                        await anyio.sleep(per_message / rate / 2)
            else:
                for i in range(0, len(messages), chunk):
                    await publish(messages[i : i + chunk])
            elapsed = time.perf_counter() - start
            await _hold(spec)
            # ``start`` is on the system-wide monotonic clock (perf_counter is
            # CLOCK_MONOTONIC on Linux): the receiver starts its clock there.
            return {
                "sent": events,
                "messages": len(messages),
                "rate": events / elapsed,
                "start": start,
            }

        # Latency: a real dispatcher, paced.
        assert mode == "aiocelev" and rate
        fields = [_latency_fields(i) for i in range(n)]
        async with EventDispatcher(broker, hostname=HOSTNAME) as dispatcher:
            while not os.path.exists(go):
                await dispatcher.send(PROBE_TYPE)
                await anyio.sleep(0.02)
            start = time.perf_counter()
            sent = 0
            while sent < n:
                due = min(n, int((time.perf_counter() - start) * rate) + 1)
                while sent < due:
                    await dispatcher.send("task-succeeded", sent_at=time.time(), **fields[sent])
                    sent += 1
                next_at = start + sent / rate
                delay = next_at - time.perf_counter()
                await anyio.sleep(max(delay, 0.0))
            await dispatcher.flush()
            elapsed = time.perf_counter() - start
            stats = dispatcher.statistics()
        return {"sent": n, "messages": stats.messages, "rate": n / elapsed}
    finally:
        await broker.aclose()


def _latency_fields(i: int) -> dict[str, Any]:
    from ._common import succeeded_fields

    return succeeded_fields(i)


def _run_celery(spec: dict[str, Any]) -> dict[str, Any]:
    from ._common import celery_app

    mode = spec["mode"]
    n = spec["n"]
    rate = spec["rate"]
    go = spec["go"]
    app = celery_app(URLS[spec["broker"]])
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=3)
        batched = mode == "celery-batched"
        dispatcher = app.events.Dispatcher(
            conn,
            hostname=HOSTNAME,
            buffer_group=["task"] if batched else None,
            buffer_limit=CELERY_BUFFER_LIMIT,
        )

        def probe() -> None:
            dispatcher.send(PROBE_TYPE)
            dispatcher.flush()

        _wait_go_sync(go, probe)
        fields = [_latency_fields(i) for i in range(n)]
        start = time.perf_counter()
        sent = 0
        while sent < n:
            due = min(n, int((time.perf_counter() - start) * rate) + 1)
            while sent < due:
                dispatcher.send("task-succeeded", sent_at=time.time(), **fields[sent])
                sent += 1
            if batched:
                # Idle until the next event: the worker's hub runs the
                # on_send_buffered flush now.
                dispatcher.flush()
            delay = start + sent / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        dispatcher.flush()
        elapsed = time.perf_counter() - start
        dispatcher.close()
    return {"sent": n, "rate": n / elapsed}


def main() -> None:
    """Publish the stream described by ``sys.argv[1]``."""
    from ._patches import apply_from_env

    spec = json.loads(sys.argv[1])
    apply_from_env()
    if spec["mode"].startswith("celery-"):
        result = _run_celery(spec)
    else:
        import anyio

        result = anyio.run(_run_async, spec)
    emit(result)


if __name__ == "__main__":
    main()
