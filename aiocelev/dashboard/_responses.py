"""Responses that survive any event value (lone surrogates from odd hostnames included)."""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.responses import HTMLResponse, JSONResponse

__all__ = ["Html", "Json"]


def _default(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return repr(value)


class Json(JSONResponse):
    """JSON with non-ASCII escaped (``\\udcff`` stays valid JSON), NaN and infinities
    as ``null`` (strict parsers refuse them), anything else as ``repr``."""

    def render(self, content: Any) -> bytes:
        try:
            text = json.dumps(content, ensure_ascii=True, default=_default, allow_nan=False)
        except ValueError:
            text = json.dumps(_finite(content), ensure_ascii=True, default=_default)
        return text.encode("ascii")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class Html(HTMLResponse):
    """HTML encoded as UTF-8, with unencodable characters replaced instead of failing."""

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        return str(content).encode("utf-8", "replace")
