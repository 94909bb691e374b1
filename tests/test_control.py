"""Remote-control request bodies: byte-exact with what ``celery control`` sends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aiocelev._control import (
    build_control_body,
    encode_control_body,
    match_reply,
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
    with pytest.raises(ValueError):
        build_control_body("ping", destination="a@h")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        build_control_body("ping", ticket="t")


def test_match_reply() -> None:
    assert match_reply({"n@h": {"ok": "pong"}}, {"ticket": "t"}, "t") == {"n@h": {"ok": "pong"}}
    assert match_reply({"n@h": {}}, {}, "t") == {"n@h": {}}  # no ticket header: accepted
    assert match_reply({"n@h": {}}, {"ticket": "other"}, "t") is None
    assert match_reply({"n@h": {}}, {"ticket": "t", "expires": 10.0}, "t", now=11.0) is None
    assert match_reply(["not", "a", "dict"], {}, "t") is None
