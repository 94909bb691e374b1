"""Where aiocelev's latency goes: the broker adapter alone vs the full path.

One process publishes ``n`` events at ``rate`` events/s and receives them
(``sent_at`` stamped at send, measured at receive):

* ``raw``: the adapter's ``publish`` of pre-built single-event messages ->
  its ``subscribe`` (JSON decoded by the benchmark);
* ``full``: ``EventDispatcher`` (defaults) -> ``EventReceiver``.

The difference is what aiocelev's own layers (dispatcher buffer and publisher
task, decoding, receiver buffer) add to the client library's round trip.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ._common import URLS, broker_options, summarize


async def _raw(spec: dict[str, Any]) -> list[float]:
    import anyio

    from aiocelev import OutgoingMessage, open_broker
    from aiocelev._codec import decode_message

    url = URLS[spec["broker"]]
    options = broker_options(spec["broker"])
    n, rate = spec["n"], spec["rate"]
    latencies: list[float] = []
    publisher = open_broker(url, **options)
    subscriber = open_broker(url, **options)
    await publisher.connect()
    await subscriber.connect()
    subscription = await subscriber.subscribe(["task.#"])
    try:
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                async for message in subscription:
                    for event in decode_message(message)[0]:
                        latencies.append(time.time() - event["sent_at"])
                    if len(latencies) >= n:
                        tg.cancel_scope.cancel()

            tg.start_soon(consume)
            for _ in range(n):
                body = json.dumps(
                    {
                        "hostname": "celery@bench",
                        "timestamp": time.time(),
                        "type": "task-succeeded",
                        "sent_at": time.time(),
                    }
                ).encode()
                await publisher.publish(
                    [
                        OutgoingMessage(
                            routing_key="task.succeeded",
                            body=body,
                            headers={"hostname": "celery@bench"},
                        )
                    ]
                )
                await anyio.sleep(1 / rate)
            with anyio.move_on_after(2.0):
                await anyio.sleep_forever()
            tg.cancel_scope.cancel()
    finally:
        await subscription.aclose()
        await publisher.aclose()
        await subscriber.aclose()
    return latencies


async def _full(spec: dict[str, Any]) -> list[float]:
    import anyio

    from aiocelev import EventDispatcher, EventReceiver

    url = URLS[spec["broker"]]
    options = broker_options(spec["broker"])
    n, rate = spec["n"], spec["rate"]
    latencies: list[float] = []
    async with (
        EventReceiver(url, routing_keys=["task.#"], broker_options=options) as receiver,
        EventDispatcher(url, hostname="celery@bench", broker_options=options) as dispatcher,
        anyio.create_task_group() as tg,
    ):

        async def consume() -> None:
            async for event in receiver:
                latencies.append(time.time() - event["sent_at"])
                if len(latencies) >= n:
                    tg.cancel_scope.cancel()

        tg.start_soon(consume)
        for _ in range(n):
            await dispatcher.send("task-succeeded", sent_at=time.time())
            await anyio.sleep(1 / rate)
        with anyio.move_on_after(2.0):
            await anyio.sleep_forever()
        tg.cancel_scope.cancel()
    return latencies


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement (in a fresh process)."""
    import anyio

    latencies = anyio.run(_raw if spec["path"] == "raw" else _full, spec)
    ms = summarize([x * 1000.0 for x in latencies])
    return {
        "received": len(latencies),
        "p50_ms": ms["p50"],
        "p99_ms": ms["p99"],
        "max_ms": ms["max"],
    }
