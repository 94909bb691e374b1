"""Hostile clocks on the remote-control path.

On the event path an absurd clock (negative, a bool, 2**53 or more) never drags
the local Lamport clock along (``valid_clock``; tests/test_dispatcher.py::
test_send_event_ignores_absurd_clocks and the receiver tests).  The
remote-control path applies the same rule: otherwise one hostile pidbox request
or reply could push a node's clock to 10**30, and every event it sent afterwards
would carry a clock that receivers must treat as absurd.
"""

from __future__ import annotations

import logging

import pytest

from aiocelev._clock import MAX_CLOCK, LamportClock
from aiocelev._control import ControlRequest, accept_reply

ABSURD = [10**30, MAX_CLOCK, -5, True]


@pytest.mark.parametrize("clock", ABSURD[:3], ids=repr)  # a bool is already refused
def test_control_request_with_an_absurd_clock_is_not_merged(clock: int) -> None:
    request = ControlRequest.from_message(
        {"method": "ping", "arguments": {}, "destination": None}, {"clock": clock}
    )
    assert request.clock is None


@pytest.mark.parametrize("clock", ABSURD, ids=repr)
def test_control_reply_with_an_absurd_clock_is_not_merged(clock: int) -> None:
    local = LamportClock(5)
    reply = accept_reply(
        b'{"w@h": {"ok": "pong"}}', {"clock": clock, "ticket": "t"}, "t", local,
        logging.getLogger("test"),
    )  # fmt: skip
    assert reply == {"w@h": {"ok": "pong"}}  # the reply itself is still taken
    assert local.value == 5
