"""What every handler shares: reply shapes, error replies, and the bearer-token check.

Owns the python3-http reply dict (`{"statusCode", "body", "headers"}`), the one error body per
content type (JSON routes: `{"error": "<Type>: <one line>"}`; text routes: the same line as
`text/plain`), the mapping from an exception to its status (`movierec.errors.http_status`, so a
forgotten exception becomes a 500 that says so, never a traceback), and reading a token from
`Authorization: Bearer <t>` or basic auth's password, compared in constant time with a secret file.

Mutating routes (train and ingest runs, release steps and actions) call `check_token`: the
scheduled calls present `cron-token` (CRON_TOKEN: the local cron sends it; in production a relay
does, see README "Credentials"), the manual release actions `release-admin-token`.

Must not touch: what a function does; which routes exist (each handler owns its routes).
"""
from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Mapping
from typing import Any

from movierec.errors import http_status, one_line
from movierec.store import read_secret

log = logging.getLogger("movierec.handler")
JSON = "application/json"
CRON_TOKEN = "cron-token"  # the secret scheduled (and scripted) calls of mutating routes present
ADMIN_TOKEN = "release-admin-token"  # the secret of the manual release actions
TEXT = "text/plain; charset=utf-8"


def reply(status: int, body: Any, content_type: str | None = None, **headers: str) -> dict[str, Any]:
    """A python3-http reply; dict/list bodies are JSON, everything else text unless told."""
    if content_type is None:
        content_type = JSON if isinstance(body, (dict, list)) else TEXT
    return {"statusCode": status, "body": body, "headers": {"Content-Type": content_type, **headers}}


def error(status: int, message: str, content_type: str = JSON, **headers: str) -> dict[str, Any]:
    """An error reply: one line, as JSON `{"error": ...}` or as plain text."""
    line = message.splitlines()[0] if message else f"HTTP {status}"
    body: Any = {"error": line} if content_type == JSON else line
    return reply(status, body, content_type, **headers)


def from_exception(e: BaseException, content_type: str = JSON) -> dict[str, Any]:
    """The reply for an exception: its taxonomy status, its one-line message; unexpected ones are
    logged with their traceback (they are bugs) and answered 500 without internals."""
    status = http_status(e)
    if status == 500:
        log.exception("unexpected error")
        return error(500, f"internal error ({type(e).__name__}); see the function's log", content_type)
    return error(status, one_line(e), content_type)


def presented_token(headers: Mapping[str, str]) -> str | None:
    """The token in `Authorization: Bearer <t>`, or the password of basic auth; None otherwise."""
    scheme, _, value = (headers.get("Authorization") or "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2] or None
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None
    return None


def check_token(headers: Mapping[str, str], secret_name: str | tuple[str, ...],
                realm: str) -> dict[str, Any] | None:
    """None when the caller presented the secret `secret_name` (or one of several names); else the
    reply to send: 503 when none of them is configured (there is no default), 401 when it was not
    presented. Every configured secret is compared in constant time, whichever matches."""
    names = (secret_name,) if isinstance(secret_name, str) else tuple(secret_name)
    expected = [value for value in (read_secret(name) for name in names) if value]
    wanted = " or ".join(f"<{name}>" for name in names)
    if not expected:
        return error(503, f"disabled: secret {' / '.join(names)} is not configured")
    presented = presented_token(headers)
    matched = False
    for value in expected:
        matched |= presented is not None and hmac.compare_digest(presented.encode(), value.encode())
    if not matched:
        return error(401, f"credentials required: Authorization: Bearer {wanted}",
                     **{"WWW-Authenticate": f'Bearer realm="{realm}"'})
    return None
