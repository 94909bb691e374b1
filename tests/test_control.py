"""Remote-control request bodies: byte-exact with what ``celery control`` sends."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from aiocelev import ConfigurationError, Control, ControlReply
from aiocelev._clock import LamportClock
from aiocelev._control import (
    ControlRequest,
    build_control_body,
    decode_replies,
    encode_control_body,
    match_reply,
    parse_request,
    pidbox_exchange,
    reply_exchange,
    reply_queue_name,
    reply_to_mapping,
)

CAPTURE = Path(__file__).parent / "fixtures" / "celery-5.7.0" / "control-capture.json"


def _captured_amqp() -> list[dict[str, object]]:
    if not CAPTURE.exists():
        pytest.skip("Celery capture fixtures are not available")
    return [m for m in json.loads(CAPTURE.read_text()) if m["transport"] == "amqp"]


@pytest.mark.parametrize("index", [0, 1])
def test_body_and_headers_match_celery_capture(index: int) -> None:
    captured = _captured_amqp()[index]
    original = json.loads(str(captured["body"]))
    body, headers = build_control_body(
        original["method"],
        {},
        destination=None,
        ticket=original["ticket"],
        reply_to=reply_to_mapping(original["reply_to"]["routing_key"]),
        clock=1,
        timeout=1.0,
        now=1000.0,
    )
    assert encode_control_body(body) == str(captured["body"]).encode()
    assert headers == {"clock": 1, "expires": 1001.0}
    assert set(headers) == set(captured["headers"])  # type: ignore[arg-type]
    assert captured["exchange"] == pidbox_exchange()
    assert captured["delivery_mode"] == 2


def test_names() -> None:
    assert pidbox_exchange() == "celery.pidbox"
    assert reply_exchange() == "reply.celery.pidbox"
    assert reply_queue_name("abc") == "abc.reply.celery.pidbox"
    assert reply_to_mapping("k", "myapp") == {"exchange": "reply.myapp.pidbox", "routing_key": "k"}


def test_without_reply_and_with_destination() -> None:
    body, headers = build_control_body("heartbeat", destination=["a@h", "b@h"], clock=5)
    assert body == {
        "method": "heartbeat",
        "arguments": {},
        "destination": ["a@h", "b@h"],
        "pattern": None,
        "matcher": None,
    }
    assert headers == {"clock": 5, "expires": 0}


def test_invalid_arguments() -> None:
    with pytest.raises(ConfigurationError):
        build_control_body("ping", destination="a@h")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        build_control_body("ping", ticket="t")


def test_match_reply() -> None:
    assert match_reply({"n@h": {"ok": "pong"}}, {"ticket": "t"}, "t") == {"n@h": {"ok": "pong"}}
    assert match_reply({"n@h": {}}, {}, "t") == {"n@h": {}}  # no ticket header: accepted
    assert match_reply({"n@h": {}}, {"ticket": "other"}, "t") is None
    assert match_reply({"n@h": {}}, {"ticket": "t", "expires": 10.0}, "t", now=11.0) is None
    assert match_reply(["not", "a", "dict"], {}, "t") is None


def test_reply_model() -> None:
    ok = ControlReply("n@h", {"ok": "pong"})
    failed = ControlReply("n@h", {"error": "unknown task"})
    assert ok.ok and ok.error is None and ok.as_dict() == {"n@h": {"ok": "pong"}}
    assert not failed.ok and failed.error == "unknown task"
    assert ControlReply("n@h", ["app.add"]).ok


def test_decode_replies_merges_the_clock_and_filters_tickets() -> None:
    clock = LamportClock()
    log = logging.getLogger("test")
    body = b'{"n@h": {"ok": "pong"}}'
    assert decode_replies(body, {"ticket": "t", "clock": 41}, "t", clock, log) == [
        ControlReply("n@h", {"ok": "pong"})
    ]
    assert clock.value >= 41
    assert decode_replies(body, {"ticket": "other"}, "t", clock, log) == []
    assert decode_replies(b"not json", {"ticket": "t"}, "t", clock, log) == []
    assert decode_replies(b"[1, 2]", {"ticket": "t"}, "t", clock, log) == []


def test_parse_request_skips_malformed(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test")
    good = parse_request(b'{"method": "ping", "arguments": {}}', {"clock": 2}, "n@h", log)
    assert isinstance(good, ControlRequest) and good.method == "ping" and good.clock == 2
    with caplog.at_level(logging.WARNING):
        assert parse_request(b'{"arguments": {}}', {}, "n@h", log) is None
        assert parse_request(b"\x80garbage", {}, "n@h", log) is None
    assert "malformed remote-control request" in caplog.text


def test_expired_request() -> None:
    request = ControlRequest.from_message({"method": "ping"}, {"expires": 100.0})
    assert request.expired(now=101.0) and not request.expired(now=99.0)
    assert not ControlRequest.from_message({"method": "ping"}, {"expires": 0}).expired()


class _Recorder:
    """A broker whose control transport records the requests it publishes."""

    def __init__(self) -> None:
        from aiocelev.brokers import PidboxTransport

        sent = self.sent = []

        class Transport(PidboxTransport):
            identity = "recorder"

            async def open_reply_queue(self, reply_key):  # pragma: no cover - reply=False
                raise AssertionError("no reply queue without reply")

            async def publish_request(self, body, headers):
                sent.append(json.loads(body))

            async def consume_pidbox(self, nodename):  # pragma: no cover
                raise AssertionError

            async def send_reply(self, reply_to, body, headers):  # pragma: no cover
                raise AssertionError

        self.transport = Transport()
        self.url = "recorder://"

    async def connect(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def control(self):
        return self.transport


# What Celery 5.7's ``app.control`` / ``app.control.inspect()`` put in ``arguments``.
CELERY_ARGUMENTS = [
    (lambda c, kw: c.ping(**kw), "ping", {}),
    (lambda c, kw: c.active(**kw), "active", {"safe": None}),
    (lambda c, kw: c.reserved(**kw), "reserved", {}),
    (lambda c, kw: c.scheduled(**kw), "scheduled", {}),
    (
        lambda c, kw: c.registered("rate_limit", **kw),
        "registered",
        {"taskinfoitems": ["rate_limit"]},
    ),
    (lambda c, kw: c.stats(**kw), "stats", {}),
    (lambda c, kw: c.active_queues(**kw), "active_queues", {}),
    (lambda c, kw: c.revoked(**kw), "revoked", {}),
    (lambda c, kw: c.conf(**kw), "conf", {"with_defaults": False}),
    (lambda c, kw: c.query_task("a", "b", **kw), "query_task", {"ids": ["a", "b"]}),
    (lambda c, kw: c.query_task(["a", "b"], **kw), "query_task", {"ids": ["a", "b"]}),
    (lambda c, kw: c.report(**kw), "report", {}),
    (lambda c, kw: c.clock(**kw), "clock", {}),
    (
        lambda c, kw: c.revoke("id1", **kw),
        "revoke",
        {"task_id": "id1", "terminate": False, "signal": "SIGTERM"},
    ),
    (
        lambda c, kw: c.revoke(["id1", "id2"], terminate=True, signal="SIGKILL", **kw),
        "revoke",
        {"task_id": ["id1", "id2"], "terminate": True, "signal": "SIGKILL"},
    ),
    (
        lambda c, kw: c.terminate("id1", **kw),
        "revoke",
        {"task_id": "id1", "terminate": True, "signal": "SIGTERM"},
    ),
    (
        lambda c, kw: c.revoke_by_stamped_headers({"k": "v"}, **kw),
        "revoke_by_stamped_headers",
        {"headers": {"k": "v"}, "terminate": False, "signal": "SIGTERM"},
    ),
    (
        lambda c, kw: c.rate_limit("app.add", "10/m", **kw),
        "rate_limit",
        {"task_name": "app.add", "rate_limit": "10/m"},
    ),
    (
        lambda c, kw: c.time_limit("app.add", soft=10, hard=20, **kw),
        "time_limit",
        {"task_name": "app.add", "hard": 20, "soft": 10},
    ),
    (lambda c, kw: c.pool_grow(2, **kw), "pool_grow", {"n": 2}),
    (lambda c, kw: c.pool_shrink(**kw), "pool_shrink", {"n": 1}),
    (lambda c, kw: c.autoscale(10, 2, **kw), "autoscale", {"max": 10, "min": 2}),
    (
        lambda c, kw: c.add_consumer("q", **kw),
        "add_consumer",
        {"queue": "q", "exchange": None, "exchange_type": "direct", "routing_key": None},
    ),
    (lambda c, kw: c.cancel_consumer("q", **kw), "cancel_consumer", {"queue": "q"}),
    (lambda c, kw: c.shutdown(**kw), "shutdown", {}),
    (lambda c, kw: c.enable_events(**kw), "enable_events", {}),
    (lambda c, kw: c.disable_events(**kw), "disable_events", {}),
    (lambda c, kw: c.heartbeat(**kw), "heartbeat", {}),
]


@pytest.mark.parametrize(("call", "method", "arguments"), CELERY_ARGUMENTS)
async def test_client_commands_send_celerys_arguments(call, method, arguments) -> None:
    recorder = _Recorder()
    async with Control(recorder) as control:  # type: ignore[arg-type]
        # Sent without waiting for replies: the body is what Celery's client sends.
        replies = call(control, {"reply": False})
        assert replies.method == method
        assert await replies == []
    [body] = recorder.sent
    assert body["method"] == method
    assert body["arguments"] == arguments
    assert list(body) == ["method", "arguments", "destination", "pattern", "matcher"]


async def test_an_owned_broker_is_closed_when_it_has_no_remote_control() -> None:
    from aiocelev import NotSupportedError, register_broker
    from aiocelev.brokers._registry import _custom

    closed: list[bool] = []

    class NoControl:
        url = "nocontrol://x"

        async def connect(self) -> None:
            pass

        async def aclose(self) -> None:
            closed.append(True)

        def control(self):
            raise NotSupportedError("no remote control")

    register_broker("nocontrol", lambda url, **options: NoControl())
    try:
        with pytest.raises(NotSupportedError):
            async with Control("nocontrol://x"):
                pass  # pragma: no cover
        assert closed == [True]
    finally:
        _custom.pop("nocontrol", None)
