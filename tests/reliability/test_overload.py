"""Overload: a producer far faster than the consumer, on both real brokers.

Under each receiver overflow policy the receiver's memory stays bounded:
``statistics().buffered`` never exceeds ``buffer_size``; ``drop_oldest`` /
``drop_newest`` count (and log) every drop; ``pause`` loses nothing and lets the
broker hold the backlog (Redis: the subscriber's output buffer; RabbitMQ: the
queue, when consuming with acknowledgements and a prefetch limit).

The dispatcher's own overflow policies are tested in tests/test_dispatcher.py.
"""

from __future__ import annotations

import logging
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from aiocelev import Event, EventDispatcher, EventReceiver, ReceiverStatistics

from .._helpers import wait_until
from ..brokers._rabbitmq import delete_exchanges
from ..brokers._redis import redis_processes
from ._helpers import unique

pytestmark = pytest.mark.timeout(60)

EVENTS = 1000
CHUNK = 50
FAT = "x" * 32768  # 32 KiB per event: 32 MiB in all, far more than the bound below
BUFFER = 20
BOUND = 12 * 1024 * 1024  # loose: the whole stream would need about three times that


@pytest.fixture(
    params=[
        pytest.param("amqp", marks=pytest.mark.amqp),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, str, dict[str, Any]]]:
    """(kind, url, broker options) of a broker nobody else publishes to."""
    if request.param == "amqp":
        url = request.getfixturevalue("amqp_url")
        exchange = unique("ex")
        try:
            yield "amqp", url, {"exchange": exchange}
        finally:
            await delete_exchanges(url, exchange)
    else:
        request.getfixturevalue("redis_url")
        with redis_processes() as spawn:
            # Room for the whole backlog in the subscriber's output buffer, so that
            # ``pause`` loses nothing (tests/brokers/test_redis.py::
            # test_slow_subscriber_cut_off_by_output_buffer_limit shows the cut-off).
            server = spawn("--client-output-buffer-limit", "pubsub 256mb 128mb 60")
            yield "redis", server.url, {}


@dataclass
class Outcome:
    received: list[int]
    max_buffered: int
    peak: int
    stats: ReceiverStatistics


async def _overload(
    url: str,
    options: dict[str, Any],
    consumer: dict[str, Any],
    policy: str,
    *,
    stalled_consumer: bool = False,
) -> Outcome:
    """Run a fast producer against a slow consumer (with *stalled_consumer*: one that
    reads nothing until the producer is done); trace the memory allocated meanwhile."""
    node = f"rel-{uuid.uuid4().hex[:8]}@overload"
    received: list[int] = []
    max_buffered = 0
    producer_done = anyio.Event()

    tracemalloc.start()
    try:
        async with (
            EventReceiver(
                url,
                routing_keys=["task.#"],
                buffer_size=BUFFER,
                overflow=policy,
                broker_options=consumer,
            ) as receiver,
            EventDispatcher(
                url, hostname=node, batch_groups=(), broker_options=options
            ) as dispatcher,
        ):
            tracemalloc.reset_peak()
            baseline = tracemalloc.get_traced_memory()[0]

            async def produce() -> None:
                for start in range(0, EVENTS, CHUNK):
                    for n in range(start, start + CHUNK):
                        await dispatcher.send("task-progress", uuid=f"e{n}", n=n, blob=FAT)
                    await dispatcher.flush()
                producer_done.set()

            def arrived() -> int:
                """Messages the receiver took from the adapter, plus those the adapter dropped."""
                dropped = getattr(receiver._subscription, "dropped", 0)
                return receiver.statistics().messages + dropped

            def settled() -> bool:
                """Every message accounted for, and no decoded event left to take."""
                stats = receiver.statistics()
                return (
                    producer_done.is_set()
                    and arrived() >= EVENTS
                    and stats.events == stats.delivered + stats.dropped
                )

            async def next_event() -> Event | None:
                """The next event, or ``None`` once :func:`settled`."""
                async with anyio.create_task_group() as tg:

                    async def watch() -> None:
                        await wait_until(settled, timeout=40)
                        tg.cancel_scope.cancel()

                    tg.start_soon(watch)
                    event = await receiver.receive()
                    tg.cancel_scope.cancel()
                    return event
                return None

            async def consume() -> None:
                nonlocal max_buffered
                if stalled_consumer:
                    await producer_done.wait()
                    # whatever the broker pushes piles up in the adapter, which drops the oldest
                    await wait_until(
                        lambda: getattr(receiver._subscription, "dropped", 0) > 0, timeout=30
                    )
                while (event := await next_event()) is not None:
                    received.append(event["n"])
                    max_buffered = max(max_buffered, receiver.statistics().buffered)
                    if not producer_done.is_set():
                        await anyio.sleep(0.001)  # a slow consumer

            with anyio.fail_after(50):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(produce)
                    tg.start_soon(consume)
            peak = tracemalloc.get_traced_memory()[1] - baseline
            stats = receiver.statistics()
    finally:
        tracemalloc.stop()
    return Outcome(received, max_buffered, peak, stats)


@pytest.mark.parametrize("policy", ["pause", "drop_oldest", "drop_newest"])
async def test_fast_producer_slow_consumer_memory_stays_bounded(
    setup: tuple[str, str, dict[str, Any]], policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    kind, url, options = setup
    caplog.set_level(logging.WARNING, logger="aiocelev.receiver")
    consumer = dict(options)
    if kind == "amqp" and policy == "pause":
        # Backpressure reaches RabbitMQ only with acknowledgements and a prefetch
        # limit; in no-ack mode the adapter would keep reading (docs/brokers/amqp.md).
        consumer.update(no_ack=False, prefetch_count=50, message_ttl=None)
    outcome = await _overload(url, options, consumer, policy)
    received, max_buffered, peak, stats = (
        outcome.received,
        outcome.max_buffered,
        outcome.peak,
        outcome.stats,
    )

    assert max_buffered <= BUFFER
    assert received == sorted(received)  # whatever arrives, in order
    assert stats.delivered == len(received)
    assert stats.events == stats.delivered + stats.dropped
    assert peak < BOUND, f"peak {peak / 2**20:.1f} MiB"
    if policy == "pause":
        assert stats.dropped == 0
        assert received == list(range(EVENTS))
    else:
        assert stats.dropped > 0
        assert any("receiver buffer full" in r.getMessage() for r in caplog.records)
        if policy == "drop_newest":
            assert received[0] == 0  # the oldest were kept
        else:
            assert received[-1] == EVENTS - 1  # the newest were kept


@pytest.mark.amqp
async def test_amqp_default_no_ack_pause_bounds_memory(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No-ack consumption (Celery's default) cannot slow RabbitMQ down: the adapter
    keeps at most ``max_buffer`` messages and drops the oldest beyond, counted and logged."""
    caplog.set_level(logging.WARNING, logger="aiocelev.brokers.amqp")
    exchange = unique("ex")
    options = {"exchange": exchange}
    consumer = {"exchange": exchange, "max_buffer": 50}
    try:
        outcome = await _overload(amqp_url, options, consumer, "pause", stalled_consumer=True)
    finally:
        await delete_exchanges(amqp_url, exchange)
    assert outcome.peak < BOUND, f"peak {outcome.peak / 2**20:.1f} MiB"
    assert outcome.received == sorted(outcome.received)  # whatever arrives, in order
    assert len(outcome.received) < EVENTS  # the backlog beyond max_buffer was dropped...
    assert outcome.received[-1] == EVENTS - 1  # ...oldest first
    assert any("consumer too slow" in r.getMessage() for r in caplog.records)
