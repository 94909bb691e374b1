"""Golden data: real Celery 5.7.0 captures decode right, re-encode byte for byte, and what
aiocelev sends is understood by Celery's own receiver and ``State``."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from celery import Celery
from celery.events.receiver import EventReceiver as CeleryReceiver
from celery.events.state import State
from kombu import Connection
from kombu.serialization import loads as kombu_loads, prepare_accept_content

from aiocelev import (
    DecodeError,
    Event,
    EventDispatcher,
    EventReceiver,
    IncomingMessage,
    OutgoingMessage,
    TaskFailed,
    TaskReceived,
    TaskRetried,
    TaskRevoked,
    TaskSent,
    TaskStarted,
    TaskSucceeded,
    WorkerHeartbeat,
    WorkerOffline,
    WorkerOnline,
)
from aiocelev._codec import decode_message, encode_batch, encode_event
from aiocelev.brokers._redis_envelope import decode_envelope, encode_envelope, unwrap_envelope
from aiocelev.brokers.memory import MemoryBroker

from ._helpers import memory_url

FIXTURES = Path(__file__).parent / "fixtures" / "celery-5.7.0"

EXPECTED_COUNTS = {
    "worker-online": 1,
    "worker-heartbeat": 6,
    "task-sent": 6,
    "task-received": 6,
    "task-started": 6,
    "task-succeeded": 3,
    "task-failed": 1,
    "task-retried": 1,
    "task-revoked": 1,
    "worker-offline": 1,
}
CLASSES = {
    "worker-online": WorkerOnline,
    "worker-heartbeat": WorkerHeartbeat,
    "worker-offline": WorkerOffline,
    "task-sent": TaskSent,
    "task-received": TaskReceived,
    "task-started": TaskStarted,
    "task-succeeded": TaskSucceeded,
    "task-failed": TaskFailed,
    "task-retried": TaskRetried,
    "task-revoked": TaskRevoked,
}


def _load(name: str) -> list[dict[str, Any]]:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"fixture {path} not available")
    data: list[dict[str, Any]] = json.loads(path.read_text())
    return data


def amqp_messages() -> list[IncomingMessage]:
    return [
        IncomingMessage(
            routing_key=m["routing_key"],
            body=m["body"].encode("utf-8"),
            content_type=m["content_type"],
            content_encoding=m["content_encoding"],
            headers=m["headers"],
        )
        for m in _load("amqp-capture.json")
    ]


def redis_captures() -> list[dict[str, Any]]:
    return _load("redis-capture.json")


def redis_messages() -> list[IncomingMessage]:
    """The captured event envelopes, unwrapped as the Redis adapter hands them up."""
    return [
        decode_envelope(m["data"].encode("utf-8"))
        for m in redis_captures()
        if m["channel"].startswith("/0.celeryev/")
    ]


def decode_all(messages: list[IncomingMessage]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for message in messages:
        good, bad = decode_message(message)
        assert bad == []
        events.extend(good)
    return events


@pytest.mark.parametrize("source", ["amqp", "redis"])
def test_captures_decode_to_the_right_events(source: str) -> None:
    messages = amqp_messages() if source == "amqp" else redis_messages()
    events = decode_all(messages)
    assert Counter(e["type"] for e in events) == EXPECTED_COUNTS
    for data in events:
        event = Event.from_dict(data)
        assert type(event) is CLASSES[data["type"]]
        assert event.hostname in ("capture@host",) or event.hostname.startswith("gen")
        assert isinstance(event.timestamp, float)
        assert isinstance(event.clock, int)
        assert event.utcoffset == 0.0
    succeeded = [e for e in events if e["type"] == "task-succeeded"]
    assert sorted(e["result"] for e in succeeded) == ["15", "3", "7"]
    (failed,) = [Event.from_dict(e) for e in events if e["type"] == "task-failed"]
    assert isinstance(failed, TaskFailed)
    assert "ValueError" in (failed.exception or "")
    assert "Traceback" in (failed.traceback or "")
    (revoked,) = [Event.from_dict(e) for e in events if e["type"] == "task-revoked"]
    assert isinstance(revoked, TaskRevoked)
    assert revoked.terminated is True


@pytest.mark.parametrize("source", ["amqp", "redis"])
def test_routing_keys_match_the_bodies(source: str) -> None:
    messages = amqp_messages() if source == "amqp" else redis_messages()
    for message in messages:
        body = json.loads(message.body)
        if isinstance(body, list):
            assert message.routing_key == "task.multi"
            assert all(e["type"].startswith("task-") for e in body)
        else:
            assert message.routing_key == body["type"].replace("-", ".")
            assert body["type"].startswith("worker-") or body["type"] == "task-sent"
        assert (
            dict(message.headers)["hostname"]
            == (body[0] if isinstance(body, list) else body)["hostname"]
        )


def test_both_brokers_carry_the_same_kinds_of_message() -> None:
    def shape(messages: list[IncomingMessage]) -> list[str]:
        return [m.routing_key for m in messages]

    amqp_keys = Counter(shape(amqp_messages()))
    redis_keys = Counter(shape(redis_messages()))
    assert (
        set(amqp_keys)
        == set(redis_keys)
        == {
            "worker.online",
            "worker.heartbeat",
            "worker.offline",
            "task.sent",
            "task.multi",
        }
    )


def test_redis_channel_is_prefix_plus_routing_key() -> None:
    for capture in redis_captures():
        incoming = decode_envelope(capture["data"].encode())
        if capture["channel"].startswith("/0.celeryev/"):
            assert capture["channel"] == f"/0.celeryev/{incoming.routing_key}"


def test_pidbox_message_is_not_an_event() -> None:
    (pidbox,) = [c for c in redis_captures() if c["channel"] == "/0.celery.pidbox"]
    message = unwrap_envelope(pidbox["data"].encode(), "")
    assert message.error is None and message.routing_key == ""
    with pytest.raises(DecodeError) as info:
        decode_message(message)
    assert info.value.reason == "not-an-event"


def test_amqp_bodies_re_encode_byte_for_byte() -> None:
    for message in amqp_messages():
        events, _ = decode_message(message)
        body = json.loads(message.body)
        again = encode_batch(events) if isinstance(body, list) else encode_event(events[0])
        assert again == message.body


def test_redis_envelopes_re_encode_byte_for_byte() -> None:
    for capture in redis_captures():
        payload = capture["data"].encode()
        env = json.loads(payload)
        incoming = decode_envelope(payload)
        props = env["properties"]
        outgoing = OutgoingMessage(
            routing_key=incoming.routing_key,
            body=incoming.body,
            headers=incoming.headers,
            content_type=incoming.content_type or "",
            content_encoding=incoming.content_encoding or "",
            delivery_mode=props["delivery_mode"],
            priority=props["priority"],
        )
        again = encode_envelope(
            outgoing, props["delivery_info"]["exchange"], delivery_tag=props["delivery_tag"]
        )
        assert again == payload
        if capture["channel"].startswith("/0.celeryev/"):
            # and the event bodies inside re-encode identically too
            events, _ = decode_message(incoming)
            parsed = json.loads(incoming.body)
            body = encode_batch(events) if isinstance(parsed, list) else encode_event(events[0])
            assert body == incoming.body


# -- Celery's own receiver and State accept what aiocelev sends -------------------------------


class CeleryReceiverHarness:
    """Celery's EventReceiver, in process, with a handler recording what it gets."""

    def __init__(self) -> None:
        self.app = Celery(broker="memory://", set_as_current=False)
        self.connection = Connection("memory://")
        self.received: list[dict[str, Any]] = []
        self.state = State()
        self.receiver = CeleryReceiver(self.connection, handlers={"*": self._handle}, app=self.app)

    def _handle(self, event: dict[str, Any]) -> None:
        self.received.append(dict(event))
        self.state.event(event)

    def feed(self, message: IncomingMessage) -> None:
        """What kombu's consumer does with a message: decode (JSON accepted) then _receive."""
        body = kombu_loads(
            message.body,
            message.content_type,
            message.content_encoding,
            accept=prepare_accept_content({"json"}),
        )
        self.receiver._receive(body, None)

    def close(self) -> None:
        self.connection.release()


@pytest.fixture
def celery_receiver() -> Iterator[CeleryReceiverHarness]:
    harness = CeleryReceiverHarness()
    yield harness
    harness.close()


async def _collect(sub: Any, total_events: int) -> list[IncomingMessage]:
    messages: list[IncomingMessage] = []
    seen = 0
    with anyio.fail_after(5):
        while seen < total_events:
            message = await sub.__anext__()
            messages.append(message)
            body = json.loads(message.body)
            seen += len(body) if isinstance(body, list) else 1
    return messages


async def test_celery_receiver_and_state_accept_what_aiocelev_sends(
    request: pytest.FixtureRequest, celery_receiver: CeleryReceiverHarness
) -> None:
    broker = MemoryBroker(memory_url(request))
    sub = await broker.subscribe(["#"])
    worker = "celery@aio"
    async with (
        EventDispatcher(broker, hostname="gen1@client") as client,
        EventDispatcher(broker, hostname=worker) as d,
    ):
        await d.send(
            "worker-online",
            freq=2.0,
            active=0,
            processed=0,
            loadavg=[0.1, 0.2, 0.3],
            sw_ident="py-celery",
            sw_ver="5.7.0",
            sw_sys="Linux",
        )
        for uuid, name in [
            ("t-ok", "tasks.add"),
            ("t-fail", "tasks.boom"),
            ("t-retry", "tasks.flaky"),
            ("t-revoke", "tasks.slow"),
        ]:
            await client.send(
                "task-sent",
                uuid=uuid,
                root_id=uuid,
                parent_id=None,
                name=name,
                args="(1, 2)",
                kwargs="{}",
                retries=0,
                eta=None,
                expires=None,
                queue="celery",
                exchange="",
                routing_key="celery",
            )
            await d.send(
                "task-received",
                uuid=uuid,
                name=name,
                args="(1, 2)",
                kwargs="{}",
                root_id=uuid,
                parent_id=None,
                retries=0,
                eta=None,
                expires=None,
            )
            await d.send("task-started", uuid=uuid)
        await d.send("task-succeeded", uuid="t-ok", result="3", runtime=0.01)
        await d.send(
            "task-failed",
            uuid="t-fail",
            exception="ValueError('bad')",
            traceback="Traceback (most recent call last):\n...",
        )
        await d.send(
            "task-retried",
            uuid="t-retry",
            exception="RuntimeError('again')",
            traceback="Traceback ...",
        )
        await d.send("task-revoked", uuid="t-revoke", terminated=True, signum=15, expired=False)
        await d.send("task-progress", uuid="t-ok", current=1, total=2)
        await d.send(
            "worker-heartbeat",
            freq=2.0,
            active=0,
            processed=4,
            loadavg=[0.1, 0.2, 0.3],
            sw_ident="py-celery",
            sw_ver="5.7.0",
            sw_sys="Linux",
        )
        await d.flush()
        await client.flush()
        total = client.statistics().sent + d.statistics().sent
    messages = await _collect(sub, total)
    await broker.aclose()
    assert any(m.routing_key == "task.multi" for m in messages)  # batched as a worker does
    for message in messages:
        celery_receiver.feed(message)

    received = celery_receiver.received
    assert len(received) == total == 19
    assert all("local_received" in e for e in received)
    state = celery_receiver.state
    tasks = state.tasks
    assert tasks["t-ok"].state == "SUCCESS"
    assert tasks["t-ok"].result == "3"
    assert tasks["t-ok"].name == "tasks.add"
    assert tasks["t-fail"].state == "FAILURE"
    assert tasks["t-fail"].exception == "ValueError('bad')"
    assert tasks["t-retry"].state == "RETRY"
    assert tasks["t-revoke"].state == "REVOKED"
    assert {t.worker.hostname for t in tasks.values()} == {worker}
    assert state.workers[worker].alive
    assert state.workers[worker].processed == 4
    assert state.task_count == 4


def _fixture_events() -> list[dict[str, Any]]:
    return decode_all(amqp_messages())


def _states(state: State) -> dict[str, tuple[Any, ...]]:
    return {
        uuid: (task.state, task.name, task.result, task.exception, task.retries)
        for uuid, task in state.tasks.items()
    }


async def test_fixture_replayed_by_aiocelev_gives_celery_the_same_state(
    request: pytest.FixtureRequest, celery_receiver: CeleryReceiverHarness
) -> None:
    # What Celery's State makes of the original capture...
    original = CeleryReceiverHarness()
    try:
        for message in amqp_messages():
            original.feed(message)
        expected = _states(original.state)
        expected_workers = set(original.state.workers)
    finally:
        original.close()
    # ... equals what it makes of the same events replayed through aiocelev.
    events = _fixture_events()
    broker = MemoryBroker(memory_url(request))
    sub = await broker.subscribe(["#"])
    async with EventDispatcher(broker, hostname="replayer@host") as d:
        for data in events:
            await d.send_event(data)
    messages = await _collect(sub, len(events))
    await broker.aclose()
    for message in messages:
        celery_receiver.feed(message)
    assert _states(celery_receiver.state) == expected
    assert set(celery_receiver.state.workers) == expected_workers
    assert sorted(state for state, *_ in expected.values()) == [
        "FAILURE",
        "REVOKED",
        "SUCCESS",
        "SUCCESS",
        "SUCCESS",
    ]
    assert expected_workers == {"capture@host"}


async def test_fixture_round_trip_through_dispatcher_and_receiver(
    request: pytest.FixtureRequest,
) -> None:
    originals = _fixture_events()
    broker = MemoryBroker(memory_url(request))
    async with EventReceiver(broker) as receiver:
        async with EventDispatcher(broker, hostname="replayer@host") as d:
            for data in originals:
                await d.send_event(Event.from_dict(data))
        with anyio.fail_after(5):
            got = [await receiver.receive() for _ in originals]
    await broker.aclose()
    for original, event in zip(originals, got, strict=True):
        wire = event.to_dict()
        assert isinstance(wire.pop("local_received"), float)
        if original["type"] == "task-sent":
            # the receiver replaces client clocks, as Celery's does
            assert isinstance(wire.pop("clock"), int)
            original = {k: v for k, v in original.items() if k != "clock"}
        assert wire == original
        assert list(wire) == list(original)
        assert type(event) is CLASSES[original["type"]]
