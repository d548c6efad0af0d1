"""What the gateway's handlers share: the error that becomes an HTTP status, plain-text replies,
and reading a `name[.namespace]` function name.

Owns: `GatewayError` (status + message, answered as text by the gateway's middleware),
`text_response`, `function_name`.
Must not touch: routes, processes, files.
"""
from __future__ import annotations

from aiohttp import web

from localfaas.stackfile import DEFAULT_NAMESPACE


class GatewayError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def text_response(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers=headers)


def function_name(raw: str, namespace: str | None = None) -> tuple[str, str]:
    name, dot, ns = raw.partition(".")
    ns = ns if dot else (namespace or DEFAULT_NAMESPACE)
    return name, ns
