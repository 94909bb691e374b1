"""``dumps`` writes kombu's JSON exactly, whichever encoder it picks.

Dicts holding only plain values at any depth (kombu's Redis envelope, control
replies) are written by msgspec member by member; everything else by the
standard library's encoder with kombu's settings.  Both must give kombu's bytes.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st
from kombu.utils.json import dumps as kombu_dumps

from aiocelev._codec import _MAX_PLAIN_DEPTH, _plain_tree, dumps

from ._strategies import any_char, json_scalars

_scalars = json_scalars(16)
_trees = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(any_char, max_size=6), inner, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.text(any_char, max_size=8), _trees, max_size=6))
def test_dumps_of_a_dict_is_kombus(value: dict[str, Any]) -> None:
    assert dumps(value) == kombu_dumps(value)


@settings(max_examples=200, deadline=None)
@given(_trees)
def test_dumps_of_anything_plain_is_kombus(value: Any) -> None:
    assert dumps(value) == kombu_dumps(value)


def test_a_redis_envelope_sized_body_is_kombus() -> None:
    envelope = {
        "body": "QUJD" * 20_000,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": "celery@w1"},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": "celeryev", "routing_key": "task.multi"},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": "5b1d4c2e-8f3a-4a51-9c3e-0d7e6f1a2b3c",
        },
    }
    assert _plain_tree(envelope, 0)
    assert dumps(envelope) == kombu_dumps(envelope)


@pytest.mark.parametrize(
    "value",
    [
        {1: "int key", None: "none key", 2.5: "float key", False: "bool key"},
        {"when": datetime.datetime(2026, 1, 1, 12, 0), "n": 1},
        {"deep": [1, {"x": datetime.date(2026, 1, 2)}]},
        {"big": 10**30, "small": 1e-05, "nan": float("nan"), "inf": float("-inf")},
        {"text": "é\u007f\u0000\U0001f600", "list": ["日本"]},
        {"surrogate": "\udc80", "nested": {"k\ud800": ["\udfff"]}},
    ],
)
def test_values_that_are_not_plain_take_the_standard_path(value: dict[Any, Any]) -> None:
    assert dumps(value) == kombu_dumps(value)


def test_nesting_beyond_the_limit_is_still_kombus() -> None:
    value: Any = {"leaf": 1}
    for _ in range(_MAX_PLAIN_DEPTH + 3):
        value = {"next": [value]}
    assert not _plain_tree(value, 0)
    assert dumps(value) == kombu_dumps(value)


def test_a_cycle_is_reported_not_looped_on() -> None:
    value: dict[str, Any] = {"a": 1}
    value["self"] = value
    with pytest.raises((ValueError, RecursionError)):
        dumps(value)
