"""A bounded, never-failing ``repr`` that renders values the way Celery's events show them.

Celery puts ``args``, ``kwargs`` and ``result`` into task events as text built
by its ``saferepr`` (``argsrepr_maxsize`` / ``resultrepr_maxsize`` = 1024).
:func:`saferepr` produces the same text for the values tasks usually deal with
(numbers, strings, bytes, lists, tuples, dicts, sets, nested up to three
levels, arbitrary objects through their ``repr``), including how it shortens
long values:

* a string longer than what is left of the budget is cut at the last space
  and ends with ``...``;
* once the budget is spent, the rest of a container becomes ``, ...`` and the
  open brackets are closed (closing brackets are not counted);
* containers nested deeper than *maxlevels* show as ``[...]``, ``(...)``, ``{...}``;
* a container that contains itself shows ``<Recursion on list with id=...>``;
* an object whose ``repr`` raises shows ``<Unrepresentable ...>`` instead.

Differences from :func:`repr` worth knowing: strings are always quoted with
``'`` (an inner ``'`` becomes ``\\'``, other characters are kept verbatim), and
subclasses of tuple, list and dict render like the builtin type.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from numbers import Number
from typing import Any, Final

__all__ = ["saferepr"]

# Token kinds.  Structural tokens (_OPEN, _CLOSE, _SHUT) are never cut;
# separators and values are counted against the budget.
_OPEN: Final = 0  # opens a container: value (opening text, closing text)
_CLOSE: Final = 1  # closes the innermost open container: "]", ")", ",)", "})"
_SHUT: Final = 2  # a whole container past maxlevels: "[...]"
_SEP: Final = 3  # ", " or ": "
_KEY: Final = 4  # a dict key (rendered by a nested saferepr with the budget left)
_CHARS: Final = 5  # a str or bytes value (quoted, cut to the budget)
_TEXT: Final = 6  # any other value, already turned into text

_Token = tuple[int, Any]


def _truncate(text: str, limit: int | None) -> str:
    """Cut *text* to *limit* characters at a word boundary and add ``...``.

    As Celery does, text exactly *limit* long is also marked with ``...``.
    """
    if limit and len(text) >= limit:
        return text[:limit].rsplit(" ", 1)[0] + "..."
    return text


def _object_repr(obj: Any) -> str:
    """``repr(obj)``, or a placeholder when the object's ``__repr__`` raises."""
    try:
        return repr(obj)
    except Exception as exc:
        return f"<Unrepresentable {type(obj)!r}{id(obj):#x}: {exc!r}>"


def _bytes_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.hex()


def _render_chars(value: str | bytes, limit: int | None) -> str:
    if isinstance(value, bytes):
        if limit and len(value) > limit:
            return f"b'{_bytes_text(value[:limit])}...'"
        return f"b'{_bytes_text(value)}'"
    return "'" + _truncate(value, limit).replace("'", "\\'") + "'"


def _items(obj: Any, depth: int, maxlevels: int | None, seen: set[int]) -> Iterator[_Token]:
    """The tokens of *obj* at nesting *depth*, produced lazily."""
    if isinstance(obj, Decimal):
        yield _TEXT, _object_repr(obj)
        return
    if isinstance(obj, Number):
        yield _TEXT, str(obj)
        return
    if isinstance(obj, (str, bytes)):
        yield _CHARS, obj
        return
    if isinstance(obj, range):
        yield _TEXT, _object_repr(obj)
        return

    if isinstance(obj, (set, frozenset)):
        if not obj:
            yield _TEXT, f"{type(obj).__name__}()"
            return
        if type(obj) is set:
            start, end = "{", "}"
        else:
            start, end = f"{type(obj).__name__}({{", "})"
        children: Iterator[Any] = iter(obj)
        is_mapping = False
    elif isinstance(obj, tuple):
        start, end = "(", ",)" if len(obj) == 1 else ")"
        children, is_mapping = iter(obj), False
    elif isinstance(obj, dict):
        start, end = "{", "}"
        children, is_mapping = iter(obj.items()), True
    elif isinstance(obj, list):
        start, end = "[", "]"
        children, is_mapping = iter(obj), False
    else:
        yield _TEXT, _object_repr(obj)
        return

    if maxlevels and depth >= maxlevels:
        yield _SHUT, f"{start}...{end}"
        return
    ident = id(obj)
    if ident in seen:
        yield _TEXT, f"<Recursion on {type(obj).__name__} with id={ident}>"
        return
    seen.add(ident)
    try:
        yield _OPEN, (start, end)
        first = True
        for child in children:
            if not first:
                yield _SEP, ", "
            first = False
            if is_mapping:
                key, value = child
                yield _KEY, key
                yield _SEP, ": "
                yield from _items(value, depth + 1, maxlevels, seen)
            else:
                yield from _items(child, depth + 1, maxlevels, seen)
        yield _CLOSE, end
    finally:
        seen.discard(ident)


def saferepr(obj: Any, maxlen: int | None = 1024, maxlevels: int | None = 3) -> str:
    """Render *obj* as Celery's ``saferepr`` does, in about *maxlen* characters.

    :param obj: any value; this never raises because of it.
    :param maxlen: the budget; ``None`` for no limit.  Closing brackets and the
        ``...`` markers may take the result a little past it.
    :param maxlevels: nesting levels shown before containers collapse to
        ``[...]``; ``None`` or ``0`` for no limit.
    """
    try:
        return _render(obj, maxlen, maxlevels)
    except RecursionError:  # only reachable with maxlevels=None and absurd nesting
        return _truncate(f"<{type(obj).__name__} nested too deeply to show>", maxlen)


def _render(obj: Any, maxlen: int | None, maxlevels: int | None) -> str:
    out: list[str] = []
    closers: list[str] = []  # closing texts of the open containers, innermost last
    budget = maxlen
    for kind, value in _items(obj, 0, maxlevels, set()):
        if budget is not None and budget <= 0:
            if kind == _CLOSE:
                closers.pop()
                out.append(value)
                continue
            out.append(", ...")
            out.extend(reversed(closers))
            break
        if kind == _OPEN:
            closers.append(value[1])
            text = value[0]
        elif kind == _CLOSE:
            closers.pop()
            text = value
        elif kind == _KEY:
            text = saferepr(value, budget, maxlevels)
        elif kind == _CHARS:
            text = _render_chars(value, budget)
        elif kind == _TEXT:
            text = _truncate(value, budget)
        else:  # _SHUT, _SEP
            text = value
        out.append(text)
        if budget is not None:
            budget -= len(text)
    return "".join(out)
