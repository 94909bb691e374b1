"""Conformance suite for broker adapters, and helpers for users' tests.

Any adapter can check itself::

    from aiocelev.testing import check_broker

    async def test_my_broker():
        await check_broker(lambda: MyBroker("mybroker://localhost"))

``check_broker`` raises ``AssertionError`` describing the first violated rule of
the :class:`~aiocelev.brokers.Broker` contract.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio

from ._exceptions import AiocelevError
from ._message import IncomingMessage, OutgoingMessage
from .brokers import Broker, Subscription

__all__ = ["check_broker"]


async def _next(sub: Subscription, timeout: float) -> IncomingMessage:
    with anyio.fail_after(timeout):
        return await sub.__anext__()


async def _nothing_within(sub: Subscription, seconds: float) -> IncomingMessage | None:
    with anyio.move_on_after(seconds):
        return await sub.__anext__()
    return None


def _msg(routing_key: str, body: bytes, hostname: str = "check@host") -> OutgoingMessage:
    return OutgoingMessage(routing_key=routing_key, body=body, headers={"hostname": hostname})


async def check_broker(
    make_broker: Callable[[], Broker],
    *,
    timeout: float = 10.0,
    quiet_period: float = 0.3,
    large_message_size: int = 1024 * 1024,
    ordered_count: int = 1000,
    checks: Sequence[str] | None = None,
) -> None:
    """Run the broker conformance checks against fresh adapters from *make_broker*.

    :param make_broker: returns a new, unconnected adapter (all of them must
        reach the same exchange).
    :param timeout: the longest wait for one expected message.
    :param quiet_period: how long to wait to be sure a message is *not* delivered.
    :param checks: run only these checks (names as in ``CHECKS``).
    """
    opts = _Options(timeout, quiet_period, large_message_size, ordered_count)
    selected = CHECKS if checks is None else {k: CHECKS[k] for k in checks}
    for name, check in selected.items():
        publisher = make_broker()
        consumer = make_broker()
        try:
            await publisher.connect()
            await publisher.connect()  # idempotent
            await consumer.connect()
            await check(publisher, consumer, opts)
        except AssertionError as exc:
            raise AssertionError(f"broker check {name!r} failed: {exc}") from exc
        finally:
            with anyio.CancelScope(shield=True):
                await publisher.aclose()
                await consumer.aclose()
                await consumer.aclose()  # idempotent


@dataclass(frozen=True)
class _Options:
    timeout: float
    quiet: float
    size: int
    count: int


_CheckFn = Callable[[Broker, Broker, _Options], Awaitable[None]]


async def _roundtrip(pub: Broker, con: Broker, o: _Options) -> None:
    sub = await con.subscribe(["#"])
    body = b'{"hostname": "check@host", "type": "worker-heartbeat", "timestamp": 1.0}'
    await pub.publish([_msg("worker.heartbeat", body)])
    got = await _next(sub, o.timeout)
    assert got.body == body, f"body changed in transit: {got.body[:80]!r}"
    assert got.routing_key == "worker.heartbeat", f"routing key {got.routing_key!r}"
    assert got.content_type == "application/json", f"content type {got.content_type!r}"
    assert got.content_encoding == "utf-8", f"content encoding {got.content_encoding!r}"
    assert dict(got.headers).get("hostname") == "check@host", f"headers {dict(got.headers)!r}"
    await sub.aclose()


async def _topic_routing(pub: Broker, con: Broker, o: _Options) -> None:
    tasks = await con.subscribe(["task.*"])
    workers = await con.subscribe(["worker.#"])
    await pub.publish([_msg("worker.heartbeat", b"[1]"), _msg("task.multi", b"[2]")])
    got = await _next(tasks, o.timeout)
    assert got.routing_key == "task.multi" and got.body == b"[2]", (
        f"'task.*' subscription got {got.routing_key!r}"
    )
    got = await _next(workers, o.timeout)
    assert got.routing_key == "worker.heartbeat", f"'worker.#' subscription got {got.routing_key!r}"
    extra = await _nothing_within(tasks, o.quiet)
    assert extra is None, f"'task.*' subscription also got {extra.routing_key!r}"
    extra = await _nothing_within(workers, o.quiet)
    assert extra is None, f"'worker.#' subscription also got {extra.routing_key!r}"
    await tasks.aclose()
    await workers.aclose()


async def _fanout(pub: Broker, con: Broker, o: _Options) -> None:
    first = await con.subscribe(["#"])
    second = await pub.subscribe(["#"])
    await pub.publish([_msg("task.succeeded", b"[3]")])
    for sub in (first, second):
        got = await _next(sub, o.timeout)
        assert got.body == b"[3]", "every subscription must get every matching message"
        await sub.aclose()


async def _ordering(pub: Broker, con: Broker, o: _Options) -> None:
    sub = await con.subscribe(["#"])
    bodies = [f"[{i}]".encode() for i in range(o.count)]
    half = o.count // 2

    async def produce() -> None:
        # One multi-message publish, then one call per message; read concurrently
        # so an adapter with a small bounded queue (backpressure) is not deadlocked.
        await pub.publish([_msg("task.multi", b) for b in bodies[:half]])
        for b in bodies[half:]:
            await pub.publish([_msg("task.multi", b)])

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        for i, expected in enumerate(bodies):
            got = await _next(sub, o.timeout)
            assert got.body == expected, f"message {i}: expected {expected!r}, got {got.body!r}"
    await sub.aclose()


async def _large(pub: Broker, con: Broker, o: _Options) -> None:
    sub = await con.subscribe(["#"])
    body = b'["' + b"x" * o.size + b'"]'
    await pub.publish([_msg("task.multi", body)])
    got = await _next(sub, o.timeout)
    assert got.body == body, f"a {len(body)}-byte body arrived as {len(got.body)} bytes"
    await sub.aclose()


async def _close(pub: Broker, con: Broker, o: _Options) -> None:
    sub = await con.subscribe(["#"])
    await sub.aclose()
    await sub.aclose()  # idempotent
    with anyio.fail_after(o.timeout):
        async for _ in sub:
            raise AssertionError("a closed subscription yielded a message")
    await pub.aclose()
    try:
        await pub.publish([_msg("task.multi", b"[]")])
    except AiocelevError:
        pass
    else:
        raise AssertionError("publish after aclose() must raise an aiocelev error")


CHECKS: dict[str, _CheckFn] = {
    "roundtrip": _roundtrip,
    "topic-routing": _topic_routing,
    "fanout": _fanout,
    "ordering": _ordering,
    "large-message": _large,
    "close": _close,
}
