"""``ClusterState`` percentiles take one convention (0-100) and reject fractions of 1."""

from __future__ import annotations

import pytest

from aiocelev import ClusterState


def _state(runtimes: list[float]) -> ClusterState:
    state = ClusterState()
    for n, runtime in enumerate(runtimes):
        state.apply({"type": "task-received", "uuid": f"t{n}", "hostname": "w@h", "name": "a"})
        state.apply(
            {"type": "task-succeeded", "uuid": f"t{n}", "hostname": "w@h", "runtime": runtime}
        )
    return state


def test_percentiles_are_on_the_0_to_100_scale() -> None:
    state = _state([1.0, 2.0, 3.0, 4.0, 5.0])
    assert state.runtime_percentiles((0, 50, 100)) == {0: 1.0, 50: 3.0, 100: 5.0}
    assert state.runtime_percentiles((0, 1)) == {0: 1.0, 1: 1.04}  # 0th and 1st percentile


@pytest.mark.parametrize("qs", [(0.5,), (0.5, 0.9, 0.99), (0, 0.25, 1)])
def test_fractions_of_one_are_rejected_with_the_percentiles_meant(qs: tuple[float, ...]) -> None:
    state = _state([1.0, 2.0])
    with pytest.raises(ValueError, match="0-100 scale") as info:
        state.runtime_percentiles(qs)
    assert f"{qs[-1] * 100:g})?" in str(info.value)
    with pytest.raises(ValueError, match="0-100 scale"):
        state.queue_wait_percentiles(qs)


def test_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError):
        _state([1.0]).runtime_percentiles((101,))
