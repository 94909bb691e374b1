"""Broker URLs as the dashboard shows them: never with a password."""

from __future__ import annotations

import re

__all__ = ["mask"]

# ``scheme://user:password@`` (every URL of a ``;`` failover list) and
# ``password=...`` query parameters.
_USERINFO = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:@/;\s]*):[^@/;\s]*@")
_QUERY = re.compile(r"(?P<head>[?&;](?:password|sentinel_password)=)[^&;\s]*", re.IGNORECASE)


def mask(text: str) -> str:
    """*text* with every URL password replaced by ``***``."""
    return _QUERY.sub(r"\g<head>***", _USERINFO.sub(r"\g<head>:***@", text))
