"""``ClusterState.apply_many`` is ``apply`` in a loop, whatever the events hold.

``apply_many`` works out the second of a shared ``local_received`` once per
run of events (by identity) and counts into the current rate bucket directly;
these properties hold it to the per-event rules of ``apply``: the same
records, counters, rates and calls of the time source, for any mix of wire
dicts and events, odd types, odd receive times and time going backwards.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings, strategies as st

from aiocelev._events import Event, _registry
from aiocelev._state import ClusterState

T0 = 1_795_500_000.0

# A few receive times shared by identity, as the events of one message share one.
_SHARED = [T0, T0 + 0.25, T0 + 1.5, T0 - 3.0, T0 + 30.0]

# Every built-in type, custom task and worker types, one of no group, and the empty one.
_BUILT_IN = [t for t, cls in sorted(_registry.items()) if cls.__module__ == Event.__module__]
_TYPES = st.sampled_from([*_BUILT_IN, "task-progress", "worker-custom", "other", ""])
_ODD_TYPES = st.sampled_from([None, 1, 2.5, ["task-sent"], {"a": 1}])

_LOCAL_RECEIVED = st.one_of(
    st.sampled_from(range(len(_SHARED))),  # an index into _SHARED: the same object
    st.floats(T0 - 100, T0 + 100),
    st.integers(int(T0) - 100, int(T0) + 100),
    st.sampled_from([None, "soon", math.nan, math.inf, -math.inf, True]),
)


@st.composite
def _events(draw: st.DrawFn) -> list[Event | dict[str, Any]]:
    out: list[Event | dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 40))):
        type_ = draw(st.one_of(_TYPES, _TYPES, _TYPES, _ODD_TYPES))
        data: dict[str, Any] = {
            "type": type_,
            "hostname": draw(st.sampled_from(["celery@a", "celery@b", None])),
            "uuid": draw(st.sampled_from(["t1", "t2", "t3", None])),
            "timestamp": draw(st.floats(T0 - 10, T0 + 10)),
            "clock": draw(st.integers(0, 50)),
        }
        received = draw(_LOCAL_RECEIVED)
        if type(received) is int and 0 <= received < len(_SHARED):
            data["local_received"] = _SHARED[received]
        elif received is not None or draw(st.booleans()):
            data["local_received"] = received
        if draw(st.booleans()):
            data.update(
                {"name": "proj.add", "runtime": 0.5, "result": "3", "freq": 2.0, "active": 1}
            )
        wrap = type(type_) is str and type_ != "" and draw(st.booleans())
        out.append(Event.from_dict(data) if wrap else data)
    return out


class _Ticks:
    """A time source that moves on at every call (so the number of calls shows)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return T0 + self.calls * 0.7


def _snapshot(state: ClusterState) -> dict[str, Any]:
    return {
        "tasks": [t.to_dict() for t in state.tasks.values()],
        "workers": {
            name: {k: v for k, v in w.to_dict().items() if k not in ("alive", "status")}
            for name, w in state.workers.items()
        },
        "event_count": state.event_count,
        "ignored": state.ignored_events,
        "totals": state.event_counts(),
        "rates": state._rates.rates(T0 + 40),
        "runtimes": state.runtimes.values(),
        "waits": state.queue_waits.values(),
    }


@settings(max_examples=300, deadline=None)
@given(_events(), st.integers(1, 4))
def test_apply_many_equals_apply_in_a_loop(events: list[Any], chunks: int) -> None:
    ticks_one, ticks_many = _Ticks(), _Ticks()
    one = ClusterState(time_source=ticks_one, rate_window=5)
    many = ClusterState(time_source=ticks_many, rate_window=5)
    for event in events:
        one.apply(event)
    size = max(1, len(events) // chunks)
    for i in range(0, len(events), size):
        many.apply_many(events[i : i + size])
    assert ticks_many.calls == ticks_one.calls
    # repr: a NaN receive time gives a NaN drift on both sides (NaN != NaN)
    assert repr(_snapshot(many)) == repr(_snapshot(one))


def test_a_shared_receive_time_across_a_second_boundary() -> None:
    # Three messages: the second crosses into a new second, the third is late.
    first, second, late = T0 + 0.9, T0 + 1.1, T0 + 0.5
    events = [
        {
            "type": "task-received",
            "hostname": "w",
            "uuid": f"t{i}",
            "timestamp": T0,
            "local_received": lr,
        }
        for i, lr in enumerate([first, first, second, second, late])
    ]
    state = ClusterState(rate_window=2, time_source=lambda: T0 + 3)
    state.apply_many(events)
    # The late event is counted in the current second, like apply() does.
    assert state._rates.current == {"task-received": 3}
    assert state.event_counts() == {"task-received": 5}
    assert state.rates() == {"task-received": 1.5}  # 3 events in the 2 seconds before now
