"""Authentication and CSRF checks, as a plain ASGI middleware.

* With ``basic_auth`` or ``token`` configured, every request needs one of them
  (``Authorization: Basic`` / ``Bearer``; a browser may also open
  ``?token=T`` once, which sets an HttpOnly, SameSite=Strict cookie), except
  ``/healthz`` so an orchestrator can probe it.
* Actions (``POST``) are refused unless the request is authenticated; with no
  credentials configured, only ``actions_without_auth=True`` lets them through.
* A ``POST`` from a browser (it sends ``Origin``, ``Sec-Fetch-Site`` or a
  cookie) must be same-origin and carry the ``X-Aiocelev-Action: 1`` header,
  which a cross-site form cannot set.  Scripts (curl, requests) send none of
  those headers and authenticate with Basic or Bearer.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Iterable, Sequence
from urllib.parse import parse_qs, urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ACTION_HEADER", "Guard", "parse_credentials"]

ACTION_HEADER = "x-aiocelev-action"
TOKEN_COOKIE = "aiocelev_token"
_OPEN_PATHS = frozenset({"/healthz"})


def parse_credentials(items: Iterable[str | tuple[str, str]]) -> list[tuple[str, str]]:
    """``USER:PASS`` strings or ``(user, password)`` pairs, checked.

    :raises ValueError: an entry without a colon or with an empty user name.
    """
    pairs = []
    for item in items:
        if isinstance(item, str):
            user, sep, password = item.partition(":")
            if not sep:
                raise ValueError("basic auth credentials must look like USER:PASS")
        else:
            user, password = item
        if not user:
            raise ValueError("basic auth needs a user name")
        pairs.append((user, password))
    return pairs


def _eq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))


class Guard:
    """ASGI middleware enforcing the rules of the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        basic_auth: Sequence[tuple[str, str]],
        token: str | None,
        read_only: bool,
        actions_without_auth: bool,
        prefix: str = "",
    ) -> None:
        self.app = app
        self.basic_auth = list(basic_auth)
        self.token = token
        self.read_only = read_only
        self.actions_without_auth = actions_without_auth
        self.open_paths = frozenset(prefix + path for path in _OPEN_PATHS)

    @property
    def auth_configured(self) -> bool:
        return bool(self.basic_auth) or self.token is not None

    def _authenticated(self, headers: dict[str, str], query: dict[str, list[str]]) -> bool:
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic" and self.basic_auth:
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            user, _, password = decoded.partition(":")
            ok = False
            for u, p in self.basic_auth:
                ok |= _eq(user, u) & _eq(password, p)
            return ok
        if self.token is not None:
            if scheme == "bearer" and _eq(value.strip(), self.token):
                return True
            for candidate in (*query.get("token", ()), _cookie(headers, TOKEN_COOKIE)):
                if candidate and _eq(candidate, self.token):
                    return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        local = path[len(root) :] if root and path.startswith(root) else path
        method = scope.get("method", "GET")
        authed = self._authenticated(headers, query)
        if self.auth_configured and not authed and local not in self.open_paths:
            await _reply(
                send, 401, {"error": "authentication required"}, basic=bool(self.basic_auth)
            )
            return
        if method not in ("GET", "HEAD", "OPTIONS"):
            if self.read_only:
                await _reply(send, 403, {"error": "Read only mode is enabled"})
                return
            if not authed and not self.actions_without_auth:
                await _reply(
                    send,
                    403,
                    {
                        "error": "actions need authentication: configure basic auth or a "
                        "token, or allow them explicitly (--no-auth-for-actions)"
                    },
                )
                return
            problem = _csrf_problem(headers)
            if problem is not None:
                await _reply(send, 403, {"error": problem})
                return
        if self.token is not None and query.get("token") and authed:
            send = _with_cookie(send, self.token, root or "/")
        await self.app(scope, receive, send)


def _cookie(headers: dict[str, str], name: str) -> str | None:
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _csrf_problem(headers: dict[str, str]) -> str | None:
    """Why a state-changing request must be refused, or ``None``."""
    browser = any(h in headers for h in ("origin", "sec-fetch-site", "cookie"))
    if not browser:
        return None
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return "cross-site request refused"
    origin = headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != headers.get("host", ""):
        return "cross-origin request refused"
    if headers.get(ACTION_HEADER) != "1":
        return f"browser requests need the {ACTION_HEADER} header"
    return None


def _with_cookie(send: Send, token: str, path: str) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            cookie = f"{TOKEN_COOKIE}={token}; Path={path}; HttpOnly; SameSite=Strict"
            message = {
                **message,
                "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())],
            }
        await send(message)

    return wrapped


async def _reply(send: Send, status: int, body: dict[str, str], *, basic: bool = False) -> None:
    data = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
    ]
    if basic:
        headers.append((b"www-authenticate", b'Basic realm="aiocelev dashboard"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
