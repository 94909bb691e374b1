"""EventDispatcher bodies are kombu's JSON of the stamped event, byte for byte.

Whatever path an event takes in ``send`` (plain values encoded a batch at a
time by msgspec, anything else encoded at once by the standard library), and
whatever else shares its message (``send_event`` replays, other groups), every
body must be what Celery's own dispatcher would have put on the wire for the
same dict.
"""

from __future__ import annotations

import datetime
import decimal
import json
import os
import uuid
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from kombu.utils.json import dumps as kombu_dumps

from aiocelev import EventDispatcher, IncomingMessage
from aiocelev._clock import utcoffset
from aiocelev.brokers.memory import MemoryBroker

from ._helpers import broker_fixture, url_fixture  # noqa: F401
from ._strategies import json_scalars

HOST = "celery@wörker-1"  # not ASCII: the stamped prefix is escaped as kombu does


async def _run(
    events: list[tuple[str, dict[str, Any]]], **options: Any
) -> tuple[list[IncomingMessage], EventDispatcher]:
    """Send *events* on a fresh memory hub, return the messages published and the dispatcher."""
    url = f"memory://encoding-{uuid.uuid4().hex}"
    broker = MemoryBroker(url)
    sub = await broker.subscribe(["#"])
    try:
        async with EventDispatcher(broker, hostname=HOST, **options) as d:
            for type_, fields in events:
                await d.send(type_, **fields)
            await d.flush()
            count = d.statistics().messages
        with anyio.fail_after(5):
            messages = [await sub.__anext__() for _ in range(count)]
    finally:
        await sub.aclose()
        await broker.aclose()
    return messages, d


def _expected(type_: str, fields: dict[str, Any], clock: int, now: float) -> dict[str, Any]:
    """The dict Celery's dispatcher stamps (a caller's timestamp is kept, moved to the end)."""
    fields = dict(fields)
    timestamp = fields.pop("timestamp", None)
    data: dict[str, Any] = {"hostname": HOST, "utcoffset": utcoffset(), "pid": os.getpid()}
    data["clock"] = clock
    data.update(fields)
    data["timestamp"] = now if timestamp is None else timestamp
    data["type"] = type_
    return data


def _check(
    messages: list[IncomingMessage], events: list[tuple[str, dict[str, Any]]], *, batched: bool
) -> None:
    pending = list(events)
    for message in messages:
        decoded = json.loads(message.body)
        if message.routing_key.endswith(".multi"):
            assert batched and isinstance(decoded, list)
            wire = decoded
        else:
            assert isinstance(decoded, dict)
            wire = [decoded]
        expected = []
        for got in wire:
            type_, fields = pending.pop(0)
            assert got["type"] == type_
            # clock and (unless given) timestamp are the dispatcher's: take them from the wire
            expected.append(_expected(type_, fields, got["clock"], got["timestamp"]))
        want = kombu_dumps(expected if message.routing_key.endswith(".multi") else expected[0])
        assert message.body == want.encode("ascii")
    assert pending == []


_scalars = json_scalars(12)
_values = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=3),
    st.tuples(_scalars, _scalars),
    st.dictionaries(st.text(max_size=4), _scalars, max_size=2),  # not plain: encoded at once
    st.datetimes(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.uuids(),
)
_names = st.one_of(
    st.sampled_from(["uuid", "result", "runtime", "name", "args", "timestamp"]),
    st.sampled_from(["hostname", "pid", "clock", "utcoffset", "type"]),  # overriding a stamp
    st.text(min_size=1, max_size=6),
)
_events = st.lists(
    st.tuples(
        st.sampled_from(["task-succeeded", "task-started", "worker-heartbeat", "tâche-x"]),
        st.dictionaries(_names, _values, max_size=5),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=_events, batched=st.booleans())
def test_every_body_is_kombus_json_of_the_stamped_event(
    events: list[tuple[str, dict[str, Any]]], batched: bool
) -> None:
    options: dict[str, Any] = {"max_batch": 5}
    if not batched:
        options["batch_groups"] = ()
    messages, d = anyio.run(lambda: _run(events, **options))
    assert d.statistics().sent == len(events)
    _check(messages, events, batched=batched)


async def test_plain_and_encoded_events_share_a_batch(broker: MemoryBroker) -> None:
    # Plain events are encoded at publish time, the others when sent; one message holds both.
    events: list[tuple[str, dict[str, Any]]] = [
        ("task-started", {"uuid": "a"}),
        ("task-progress", {"uuid": "b", "when": datetime.datetime(2026, 1, 1, 12, 0)}),
        ("task-succeeded", {"uuid": "c", "result": "é", "runtime": 1e-05}),
        ("task-failed", {"uuid": "d", "amount": decimal.Decimal("1.5"), "big": 10**30}),
        ("task-retried", {"uuid": "e", "timestamp": 12.0}),
        ("task-received", {"uuid": "f", "args": "('/tmp/\udcff',)", "x": ["\ud800"]}),
    ]
    messages, d = await _run(events)
    assert [m.routing_key for m in messages] == ["task.multi"]
    assert d.statistics().batches == 1
    _check(messages, events, batched=True)


async def test_send_event_joins_the_batch_unchanged(broker: MemoryBroker) -> None:
    sub = await broker.subscribe(["#"])
    replayed = {"type": "task-started", "hostname": "other", "timestamp": 1.0, "clock": 3, "x": [1]}
    async with EventDispatcher(broker) as d:
        await d.send("task-started", uuid="1")
        await d.send_event(replayed)
        await d.send("task-succeeded", uuid="1")
        await d.flush()
    (message,) = [await sub.__anext__()]
    body = json.loads(message.body)
    assert message.routing_key == "task.multi"
    assert [e.get("uuid") for e in body] == ["1", None, "1"]
    assert kombu_dumps(body[1]) == kombu_dumps(replayed)
    assert message.body == kombu_dumps(body).encode()


async def test_a_value_that_is_not_serialisable_fails_in_send(broker: MemoryBroker) -> None:
    async with EventDispatcher(broker) as d:
        for bad in (object(), {"nested": object()}, [object()], {1j}):
            with pytest.raises(TypeError):
                await d.send("task-started", uuid="x", bad=bad)
        with pytest.raises(TypeError):
            await d.send("task-started", uuid="x", timestamp=object())
        assert d.statistics().accepted == 0
