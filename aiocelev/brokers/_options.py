"""Value converters shared by the adapters' option parsers (no I/O).

Each converter takes a keyword value or a URL query string and returns the
typed value, or raises :class:`ValueError` / :class:`TypeError` (the parsers
turn these into :class:`~aiocelev.ConfigurationError`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["to_bool", "to_opt_float", "to_opt_int", "to_opt_str"]


def to_bool(value: Any) -> bool:
    """``True``/``False`` from a bool, an int or ``1/true/yes/on`` / ``0/false/no/off``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _is_none(value: Any) -> bool:
    """``None``, or a string spelling of no value (``""`` or ``"none"``)."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none"))


def to_opt_float(value: Any) -> float | None:
    """A float, or ``None`` for ``None`` / ``""`` / ``"none"``."""
    if _is_none(value):
        return None
    return float(value)


def to_opt_int(value: Any) -> int | None:
    """An int, or ``None`` for ``None`` / ``""`` / ``"none"``."""
    if _is_none(value):
        return None
    return int(value)


def to_opt_str(value: Any) -> str | None:
    """A string, or ``None`` for ``None`` / ``""``."""
    if value is None or value == "":
        return None
    return str(value)
