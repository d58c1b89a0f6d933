"""API keys: who may talk to the daemon.

The key comes from LLMOS_API_KEY, else the file LLMOS_HOME/api_key (`llmos serve
--new-key` writes one). Every endpoint requires it, as `Authorization: Bearer KEY` (what
OpenAI clients send), `X-API-Key: KEY`, or the `llmos_key` cookie the dashboard sets after
`GET /?key=KEY` (a browser's EventSource cannot send headers). Without a key the daemon
serves only on loopback, and says so when it starts.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from fastapi import Request

from llmos.server import errors

KEY_FILE = "api_key"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")  # the Host headers a keyless daemon answers
COOKIE = "llmos_key"
ENV = "LLMOS_API_KEY"


def configured_key(home: Path) -> str | None:
    """The daemon's key: LLMOS_API_KEY, else LLMOS_HOME/api_key, else None."""
    key = os.environ.get(ENV, "").strip()
    if key:
        return key
    path = home / KEY_FILE
    if path.is_file():
        return path.read_text().strip() or None
    return None


def write_new_key(home: Path) -> str:
    """Make a fresh key, readable by the owner only, and return it."""
    key = "llmos-" + secrets.token_urlsafe(32)
    path = home / KEY_FILE
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(key + "\n")
    return key


def cookie_value(key: str) -> str:
    """What the dashboard's cookie holds: a value derived from the key, never the key (cookies
    ignore ports, so every service on this host would see it)."""
    return hmac.new(key.encode(), b"llmos dashboard cookie", "sha256").hexdigest()


def _presented(request: Request, key: str) -> str | None:
    """What the request offers, in the form it is to equal (the key, or its cookie value)."""
    login = _dashboard_login(request)  # first: it is there to replace a stale cookie
    if login is not None:
        return login
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    if "x-api-key" in request.headers:
        return request.headers["x-api-key"]
    cookie = request.cookies.get(COOKIE)
    if cookie is None:
        return None
    return key if hmac.compare_digest(cookie.encode(), cookie_value(key).encode()) else ""


def _dashboard_login(request: Request) -> str | None:
    """`GET /?key=KEY`, the dashboard's link: the page sets the cookie and drops the key from
    the address at once (llmos.server.observe_api). No other route takes a key in its URL."""
    if request.method == "GET" and request.url.path == "/":
        return request.query_params.get("key")
    return None


def check(request: Request) -> None:
    """A FastAPI dependency on every route: 401 unless the request carries the key."""
    key: str | None = request.app.state.api_key
    if key is None:
        return
    given = _presented(request, key)
    if given is None:
        raise errors.unauthorized("this llmos server needs an API key: send 'Authorization: Bearer <key>'")
    if not hmac.compare_digest(given.encode(), key.encode()):
        raise errors.unauthorized("the API key is not valid")
