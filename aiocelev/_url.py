"""URL helpers shared by adapters: masking secrets, splitting failover lists."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = ["mask_url", "split_urls"]

_USERINFO = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:@/;]*):(?P<pw>[^@/;]*)@"
)


def mask_url(url: str) -> str:
    """The URL with every password replaced by ``***`` (safe for logs and errors)."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)


def split_urls(url: str) -> list[str]:
    """Split kombu's ``;``-separated failover form into single URLs."""
    return [part.strip() for part in url.split(";") if part.strip()]


def scheme_of(url: str) -> str:
    """The lower-cased scheme of a URL (``""`` when there is none)."""
    return urlsplit(url.strip()).scheme.lower() if "://" in url else ""
