"""The Redis envelope's base64 decoder: pybase64 when installed, exactly as strict as the stdlib.

Every string is accepted or refused by the fast decoder exactly when
``binascii.a2b_base64(strict_mode=True)`` accepts or refuses it, with the same
bytes; without pybase64 the standard library decodes.
"""

from __future__ import annotations

import base64
import builtins
import sys
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from aiocelev import DecodeError
from aiocelev.brokers import _redis_envelope as envelope

pytestmark = pytest.mark.skipif(sys.version_info < (3, 11), reason="strict_mode is 3.11+")

# The alphabet, padding, and what strict decoding must refuse: whitespace,
# other ASCII, non-ASCII.
_CHARS = st.sampled_from(
    list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
    + ["=", "=", "\n", " ", "\r", "\t", "-", "_", "!", ".", "é", "\x00", "\x7f"]
)


def _outcome(decode: Any, text: str) -> bytes | str:
    try:
        return bytes(decode(text))
    except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
        return type(exc).__name__ if not isinstance(exc, ValueError) else "refused"


def test_the_fast_decoder_is_used_when_pybase64_is_installed() -> None:
    pytest.importorskip("pybase64")
    assert envelope._b64decode is not envelope._b64decode_stdlib


@settings(max_examples=3000, deadline=None)
@given(st.text(_CHARS, max_size=24))
def test_fast_decoder_accepts_and_refuses_exactly_as_strict_stdlib(text: str) -> None:
    assert _outcome(envelope._b64decode, text) == _outcome(envelope._b64decode_stdlib, text)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 3), st.sampled_from(["", "=", "==", "A", "\n", "é"]))
def test_fast_decoder_on_valid_and_damaged_encodings(data: bytes, cut: int, tail: str) -> None:
    text = base64.b64encode(data).decode("ascii")
    assert envelope._b64decode(text) == data
    damaged = text[: len(text) - cut] + tail
    assert _outcome(envelope._b64decode, damaged) == _outcome(envelope._b64decode_stdlib, damaged)


@pytest.mark.parametrize(
    "text",
    ["YQ", "YQ=", "YQ===", "=", "==YQ", "YQ==YQ==", "Y Q==", "YQ=\n=", "Y!Q=", "YWJj\n", "é"],
)
def test_refused_bodies_are_envelope_errors(text: str) -> None:
    payload = (
        b'{"body": "' + text.encode("utf-8").replace(b"\n", b"\\n") + b'", "properties": '
        b'{"body_encoding": "base64", "delivery_info": {"routing_key": "task.multi"}}}'
    )
    with pytest.raises(DecodeError) as caught:
        envelope.decode_envelope(payload)
    assert caught.value.reason == envelope.ENVELOPE_REASON
    message = envelope.unwrap_envelope(payload, "task.multi")
    assert message.error is not None and message.error.reason == "envelope"


def test_without_pybase64_the_stdlib_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_pybase64(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "pybase64":
            raise ImportError("no pybase64")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pybase64)
    assert envelope._simd_b64decode() is None
    monkeypatch.setattr(envelope, "_b64decode", envelope._b64decode_stdlib)
    body = base64.b64encode(b'{"type": "x"}').decode("ascii")
    payload = b'{"body": "' + body.encode() + b'", "properties": {"body_encoding": "base64"}}'
    assert envelope.decode_envelope(payload, "k").body == b'{"type": "x"}'
    with pytest.raises(DecodeError):
        envelope.decode_envelope(b'{"body": "YQ", "properties": {"body_encoding": "base64"}}')
