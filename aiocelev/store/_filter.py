"""The task filter language shared by the dashboard, ``aiocelev tasks`` and the store.

Filters are named as in Flower's ``GET /api/tasks`` (``taskname``, ``workername``,
``state``, ``received_start`` / ``received_end``, ``search``) or as the
dashboard's pages name them (``name``, ``worker``, ``started_start`` /
``started_end``).  The free-text ``search`` is a list of terms: words or
``"quoted phrases"`` (case-insensitive substrings of ``args``, ``kwargs``,
``result`` or ``exception``), ``-term`` excludes, ``field:value`` looks in one
field only.  Everything here is pure: no I/O, no state.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from .._exceptions import ConfigurationError

__all__ = [
    "FIELD_TERMS",
    "FLOWER_DATE_FORMAT",
    "SEARCH_FIELDS",
    "QueryError",
    "TaskFilter",
    "Term",
    "parse_search",
    "parse_time",
]

#: Flower's date format for ``received_start`` / ``received_end`` (local time).
FLOWER_DATE_FORMAT = "%Y-%m-%d %H:%M"
#: Fields the free-text search looks at (``field:value`` restricts a term to one).
SEARCH_FIELDS = ("args", "kwargs", "result", "exception")
#: Fields a ``field:value`` term may name.
FIELD_TERMS = frozenset({*SEARCH_FIELDS, "name", "state", "worker", "uuid", "traceback"})
#: Values meaning "no filter" (Flower's pages send ``All``).
_ANY = frozenset({"", "All", "all", "any"})


class QueryError(ConfigurationError):
    """A filter value that cannot be used (a bad number, date or cursor)."""


def parse_time(value: str | None, what: str) -> float | None:
    """Epoch seconds from Flower's ``YYYY-MM-DD HH:MM`` (local time), ISO 8601 or a number.

    :raises QueryError: the text is none of these.
    """
    if value is None or value.strip() == "":
        return None
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    for fmt in (FLOWER_DATE_FORMAT, "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"):
        try:
            return time.mktime(datetime.strptime(text, fmt).timetuple())
        except ValueError:
            continue
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise QueryError(f"invalid {what} {value!r}, expected format 'YYYY-MM-DD HH:MM'") from None


@dataclass
class Term:
    """One search term: a substring, maybe restricted to a field, maybe negated."""

    text: str
    field: str | None = None
    negate: bool = False


def parse_search(text: str | None) -> list[Term]:
    """Terms of a search string: words or ``"quoted phrases"``, ``-term`` excludes,
    ``field:value`` looks in one field only (``args``, ``kwargs``, ``result``,
    ``exception``, ``name``, ``state``, ``worker``, ``uuid``, ``traceback``)."""
    if not text or not text.strip():
        return []
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    terms = []
    for word in words:
        negate = word.startswith("-") and len(word) > 1
        if negate:
            word = word[1:]
        name, sep, rest = word.partition(":")
        if sep and name.lower() in FIELD_TERMS and rest:
            terms.append(Term(rest.lower(), name.lower(), negate))
        else:
            terms.append(Term(word.lower(), None, negate))
    return terms


@dataclass
class TaskFilter:
    """Which tasks a query returns: every given condition must hold.

    ``state`` is compared upper-cased; ``name``, ``worker`` and ``broker``
    exactly; the time ranges are inclusive epoch seconds; ``search`` holds the
    terms of :func:`parse_search`.
    """

    state: str | None = None
    name: str | None = None
    worker: str | None = None
    broker: str | None = None
    received_start: float | None = None
    received_end: float | None = None
    started_start: float | None = None
    started_end: float | None = None
    search: list[Term] = field(default_factory=list)

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> TaskFilter:
        """Read Flower's names (``taskname``, ``workername``...) or the dashboard's
        (``name``, ``worker``); ``All``/``any``/empty means no filter.

        :raises QueryError: a bad date.
        """

        def get(*names: str) -> str | None:
            for name in names:
                value = params.get(name)
                if value is not None and value not in _ANY:
                    return value
            return None

        return cls(
            state=get("state"),
            name=get("taskname", "name"),
            worker=get("workername", "worker"),
            broker=get("broker"),
            received_start=parse_time(params.get("received_start"), "received_start"),
            received_end=parse_time(params.get("received_end"), "received_end"),
            started_start=parse_time(params.get("started_start"), "started_start"),
            started_end=parse_time(params.get("started_end"), "started_end"),
            search=parse_search(params.get("search")),
        )
