"""Remote control, byte for byte against real Celery 5.7 captures.

``tests/fixtures/celery-5.7.0/control-{amqp,redis}.json`` hold every request
Celery's ``app.control`` / ``inspect`` / command line put on the
``celery.pidbox`` exchange and every reply a real worker sent back (see
``tests/fixtures/capture_control.py``).  Here, without a broker:

* the pure builder (:func:`aiocelev._control.build_control_body`), given the
  captured method, arguments, ticket, ``reply_to``, clock and expiry, encodes
  exactly the captured body bytes and headers;
* each :class:`aiocelev.Control` method, called as the capture's Celery call
  was, publishes exactly those bytes (ticket, reply key and clock pinned to
  the captured ones), and its reply stream yields what the worker answered;
* :func:`aiocelev._control.decode_replies` reads every captured reply;
* the request's envelope (exchange, routing key, content type, delivery mode)
  matches what aiocelev's adapters are documented to use.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

import aiocelev.brokers._control as control_transport
from aiocelev import Control, ControlReply
from aiocelev._clock import LamportClock
from aiocelev._control import (
    REQUEST_DELIVERY_MODE,
    build_control_body,
    decode_replies,
    encode_control_body,
    pidbox_exchange,
    reply_exchange,
)
from aiocelev.brokers import PidboxTransport
from aiocelev.brokers._control import RawReply

FIXTURES = Path(__file__).parent / "fixtures" / "celery-5.7.0"
TRANSPORTS = ("amqp", "redis")
LOG = logging.getLogger("tests.control_wire")


def _load(transport: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"control-{transport}.json").read_text())
    return data


DOCUMENTS = {transport: _load(transport) for transport in TRANSPORTS}

CAPTURES = [
    pytest.param(transport, capture, id=f"{transport}:{capture['name']}")
    for transport, document in DOCUMENTS.items()
    for capture in document["captures"]
]
CLIENT_CAPTURES = [p for p in CAPTURES if p.values[1]["client"] is not None]
CLIENT_REPLIES = CLIENT_CAPTURES
REPLIES = [
    pytest.param(
        transport,
        capture,
        reply,
        id=f"{transport}:{capture['name']}:{i}",
    )
    for transport, document in DOCUMENTS.items()
    for capture in document["captures"]
    for i, reply in enumerate(capture["replies"])
]


def request_of(capture: Mapping[str, Any]) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    """The captured request: body bytes, decoded body, headers."""
    raw = capture["request"]["body"].encode("utf-8")
    return raw, json.loads(raw), dict(capture["request"]["headers"])


# -- the fixtures themselves ------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_fixture_covers_every_command(transport: str) -> None:
    """Every command the client offers was captured with a worker reply (but shutdown)."""
    document = DOCUMENTS[transport]
    assert document["celery"] == "5.7.0"
    methods = {json.loads(c["request"]["body"])["method"] for c in document["captures"]}
    assert {
        "ping", "active", "reserved", "scheduled", "registered", "stats", "active_queues",
        "revoked", "conf", "query_task", "report", "clock", "revoke",
        "revoke_by_stamped_headers", "terminate", "rate_limit", "time_limit", "pool_grow",
        "pool_shrink", "autoscale", "add_consumer", "cancel_consumer", "shutdown",
        "enable_events", "disable_events", "heartbeat",
    } <= methods  # fmt: skip
    for capture in document["captures"]:
        _, body, _ = request_of(capture)
        wants_reply = "ticket" in body
        if wants_reply and body["method"] != "shutdown":
            assert capture["replies"], capture["name"]


# -- requests -------------------------------------------------------------------


@pytest.mark.parametrize(("transport", "capture"), CAPTURES)
def test_builder_matches_captured_request(transport: str, capture: dict[str, Any]) -> None:
    raw, body, headers = request_of(capture)
    timeout = capture["timeout"]
    built, built_headers = build_control_body(
        body["method"],
        body["arguments"],
        destination=body["destination"],
        ticket=body.get("ticket"),
        reply_to=body.get("reply_to"),
        clock=headers["clock"],
        timeout=timeout,
        pattern=body["pattern"],
        matcher=body["matcher"],
        now=headers["expires"] - timeout,
    )
    assert encode_control_body(built) == raw
    assert list(built_headers) == list(headers) == ["clock", "expires"]
    assert built_headers["clock"] == headers["clock"]
    assert math.isclose(built_headers["expires"], headers["expires"], abs_tol=1e-6)


@pytest.mark.parametrize(("transport", "capture"), CAPTURES)
def test_request_envelope(transport: str, capture: dict[str, Any]) -> None:
    """Exchange, routing key and message properties are the ones aiocelev uses."""
    document = DOCUMENTS[transport]
    request = capture["request"]
    _, body, _ = request_of(capture)
    namespace = document["namespace"]
    if "reply_to" in body:
        assert body["reply_to"]["exchange"] == reply_exchange(namespace)
    if transport == "amqp":
        assert request["exchange"] == pidbox_exchange(namespace)
        assert request["routing_key"] == ""
        props = request["properties"]
        assert props["content_type"] == "application/json"
        assert props["content_encoding"] == "utf-8"
        assert props["delivery_mode"] == REQUEST_DELIVERY_MODE
        assert props["priority"] == 0
        assert set(props) == {"content_type", "content_encoding", "delivery_mode", "priority"}
    else:
        assert request["channel"] == f"/0.{pidbox_exchange(namespace)}"
        envelope = json.loads(request["envelope"])
        assert list(envelope) == [
            "body",
            "content-encoding",
            "content-type",
            "headers",
            "properties",
        ]
        assert base64.b64decode(envelope["body"]) == request["body"].encode("utf-8")
        assert envelope["content-type"] == "application/json"
        assert envelope["content-encoding"] == "utf-8"
        props = envelope["properties"]
        assert props["delivery_mode"] == REQUEST_DELIVERY_MODE
        assert props["delivery_info"] == {"exchange": pidbox_exchange(namespace), "routing_key": ""}
        assert props["priority"] == 0
        assert props["body_encoding"] == "base64"


# -- the client, through a transport that only records ------------------------------


class RecordingTransport(PidboxTransport):
    """Keeps what the client publishes; its reply queue hands out given raw replies."""

    def __init__(self, namespace: str, replies: list[RawReply]) -> None:
        super().__init__(namespace)
        self.published: list[tuple[bytes, dict[str, Any], float, float]] = []
        self.replies = replies
        self.opened: list[str] = []
        self._publish_started = 0.0

    @property
    def identity(self) -> str:
        return "recording://"

    async def open_reply_queue(self, reply_key: str) -> Any:
        self.opened.append(reply_key)
        return _ReplyQueue(list(self.replies))

    async def publish_request(self, body: bytes, headers: Mapping[str, Any]) -> None:
        self.published.append((body, dict(headers), self._publish_started, time.time()))

    async def consume_pidbox(self, nodename: str) -> Any:
        raise NotImplementedError

    async def send_reply(
        self, reply_to: Mapping[str, str], body: bytes, headers: Mapping[str, Any]
    ) -> None:
        raise NotImplementedError


class _ReplyQueue:
    def __init__(self, replies: list[RawReply]) -> None:
        self._replies = replies

    def __aiter__(self) -> AsyncIterator[RawReply]:
        return self

    async def __anext__(self) -> RawReply:
        if self._replies:
            return self._replies.pop(0)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self._replies.clear()


class RecordingBroker:
    """Just enough of a :class:`~aiocelev.brokers.Broker` for :class:`Control`."""

    url = "recording://"

    def __init__(self, transport: RecordingTransport) -> None:
        self.transport = transport

    async def connect(self) -> None:
        return None

    def control(self) -> RecordingTransport:
        return self.transport

    async def aclose(self) -> None:
        return None


def raw_replies(capture: Mapping[str, Any]) -> list[RawReply]:
    return [RawReply(r["body"].encode("utf-8"), dict(r["headers"])) for r in capture["replies"]]


async def call_client(
    transport: str,
    capture: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    timeout: float | None = None,
) -> tuple[RecordingTransport, list[ControlReply], float]:
    """Make the capture's call through :class:`Control`, ticket/reply key/clock pinned."""
    _, body, headers = request_of(capture)
    document = DOCUMENTS[transport]
    recording = RecordingTransport(document["namespace"], raw_replies(capture))
    if "ticket" in body:
        monkeypatch.setattr(control_transport, "new_ticket", lambda: body["ticket"])
        monkeypatch.setattr(
            control_transport, "new_reply_key", lambda: body["reply_to"]["routing_key"]
        )
    recording.clock.value = headers["clock"] - 1
    method, args, kwargs = capture["client"]
    kwargs = dict(kwargs)
    if body["destination"] is not None:
        kwargs["destination"] = body["destination"]
    timeout = capture["timeout"] if timeout is None else timeout
    control = Control(RecordingBroker(recording), timeout=timeout)  # type: ignore[arg-type]
    async with control:
        before = time.time()
        replies = await getattr(control, method)(*args, **kwargs)
    return recording, replies, before


@pytest.mark.parametrize(("transport", "capture"), CLIENT_CAPTURES)
async def test_client_method_sends_captured_bytes(
    transport: str, capture: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Control.<method>(...)`` called like the captured Celery call sends the same bytes."""
    raw, body, headers = request_of(capture)
    recording, _, before = await call_client(transport, capture, monkeypatch)
    assert len(recording.published) == 1
    sent, sent_headers, _, after = recording.published[0]
    assert sent.decode() == raw.decode(), f"{capture['call']}"
    assert sent == raw
    assert list(sent_headers) == ["clock", "expires"]
    assert sent_headers["clock"] == headers["clock"]
    timeout = capture["timeout"]
    assert before + timeout <= sent_headers["expires"] <= after + timeout
    if "ticket" in body:
        assert recording.opened == [body["reply_to"]["routing_key"]]
    else:
        assert recording.opened == []


@pytest.mark.parametrize(("transport", "capture"), CLIENT_REPLIES)
async def test_client_returns_worker_replies(
    transport: str, capture: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replies a real worker sent come out of the client's reply stream."""
    _, replies, _ = await call_client(transport, capture, monkeypatch, timeout=0.2)
    expected = [json.loads(r["body"]) for r in capture["replies"]]
    assert [reply.as_dict() for reply in replies] == expected
    assert not any(reply.duplicate for reply in replies)


@pytest.mark.parametrize(("transport", "capture"), CAPTURES)
async def test_generic_broadcast_sends_captured_bytes(
    transport: str, capture: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Control.broadcast(method, arguments)`` reproduces every request, command lines too."""
    raw, body, _ = request_of(capture)
    generic = {**capture, "client": ["broadcast", [body["method"], body["arguments"]], {}]}
    if body["pattern"] is not None:
        generic["client"][2] = {"pattern": body["pattern"], "matcher": body["matcher"]}
    if "ticket" not in body:
        generic["client"][2] = {**generic["client"][2], "reply": False}
    recording, _, _ = await call_client(transport, generic, monkeypatch, timeout=0.2)
    # Only the expiry depends on the timeout: the body is the captured one.
    assert recording.published[0][0] == raw


# -- replies --------------------------------------------------------------------


@pytest.mark.parametrize(("transport", "capture", "reply"), REPLIES)
def test_decode_captured_reply(
    transport: str, capture: dict[str, Any], reply: dict[str, Any]
) -> None:
    _, body, _ = request_of(capture)
    node = DOCUMENTS[transport]["node"]
    raw = reply["body"].encode("utf-8")
    if transport == "redis":
        envelope = json.loads(reply["envelope"])
        assert base64.b64decode(envelope["body"]) == raw
        assert envelope["headers"] == reply["headers"]
    clock = LamportClock()
    decoded = decode_replies(raw, reply["headers"], body["ticket"], clock, LOG)
    assert decoded == [ControlReply(node, json.loads(raw)[node])]
    assert clock.value > reply["headers"]["clock"]
    [one] = decoded
    payload = json.loads(raw)[node]
    if isinstance(payload, dict) and "error" in payload:
        assert not one.ok
        assert one.error == payload["error"]
    else:
        assert one.ok
        assert one.error is None
    # A reply for another request is not taken.
    assert decode_replies(raw, reply["headers"], "another-ticket", LamportClock(), LOG) == []


@pytest.mark.parametrize(
    ("transport", "capture", "reply"),
    [pytest.param(*p.values, id=p.id) for p in REPLIES],  # no decoding here: no known issue
)
def test_reply_envelope(transport: str, capture: dict[str, Any], reply: dict[str, Any]) -> None:
    """Replies come on the reply exchange, keyed by the request's reply key, ticket header."""
    _, body, _ = request_of(capture)
    assert reply["exchange"] == body["reply_to"]["exchange"]
    assert reply["routing_key"] == body["reply_to"]["routing_key"]
    assert reply["headers"]["ticket"] == body["ticket"]
    assert reply["content_type"] == "application/json"
    assert reply["properties"]["delivery_mode"] == 1


def test_known_reply_payloads() -> None:
    """Spot checks of what a Celery 5.7 worker answers (the shapes the CLI prints)."""
    for transport, document in DOCUMENTS.items():
        node = document["node"]
        by_name = {c["name"]: c for c in document["captures"]}

        def payload(name: str, by_name: dict[str, Any] = by_name, node: str = node) -> Any:
            return json.loads(by_name[name]["replies"][0]["body"])[node]

        assert payload("inspect.ping") == {"ok": "pong"}, transport
        assert payload("control.heartbeat") is None
        assert payload("control.autoscale") == {"error": "ValueError('Autoscale not enabled')"}
        assert payload("control.pool_grow") == {"ok": "pool will grow"}
        assert payload("control.rate_limit") == {"ok": "new rate limit set successfully"}
        assert payload("control.enable_events") == {"ok": "task events enabled"}
        assert payload("inspect.stats")["pool"]["max-concurrency"] == 1
        assert isinstance(payload("inspect.clock")["clock"], int)
        assert [t["name"] for t in payload("inspect.active")] == ["interop.slow"]
        assert by_name["control.shutdown"]["replies"] == []
