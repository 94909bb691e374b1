"""Hypothesis strategies shared by the encoding tests (values kombu's JSON must write)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

__all__ = ["any_char", "json_scalars"]

#: Any character, lone surrogates included (msgspec cannot encode them; kombu escapes them).
any_char = st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr))


def json_scalars(max_text: int) -> st.SearchStrategy[Any]:
    """``None``, bools, integers beyond 64 bits, every float and text of up to *max_text* characters."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(any_char, max_size=max_text),
    )
