"""The gateway's HTTP server: aiohttp's runner with one change, the answers aiohttp gives by itself.

aiohttp answers a request it cannot parse (a bad request line, a bad header, a too-long line, a
broken chunked body, a bad Content-Length) before any middleware runs, with its parser's multi-line
message, which quotes the caller's bytes back; an exception escaping a handler gets a multi-line
500. aiohttp has no setting for either (its issue 3287): the hook is the connection handler's
`handle_error`, which the low-level `web.Server` calls for both. So the runner makes its server
build `OneLineRequestHandler`s, whose `handle_error` answers one fixed line of text/plain (no
echo of the request, no path, no traceback) with the status the fault deserves:

  line too long in the request target -> 414, in a header or too many headers -> 431,
  any other parse fault -> 400, a handler's timeout -> 504, an escaped exception -> 500.

aiohttp still logs the fault as it did (with its traceback, in the runtime's log only). A body over
the cap is the proxy's own 413 (`localfaas.proxy`), answered as a normal response.

Owns: `GatewayRunner`, `OneLineRequestHandler`, `error_reply` (the status and line for a fault).
Must not touch: routes, the app, the proxy, processes.
"""
from __future__ import annotations

from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine, HttpProcessingError, InvalidURLError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from localfaas.replies import text_response


def error_reply(status: int, exc: BaseException | None) -> tuple[int, str]:
    """The status and the one line the gateway answers for a fault aiohttp met itself."""
    if isinstance(exc, LineTooLong):
        line = exc.args[0] if exc.args else b""
        if isinstance(line, bytearray) or bytes(line[:1]) == b"/":  # the C parser's request-target buffer
            return 414, "request URI too long"
        return 431, "request header fields too large"
    if isinstance(exc, HttpProcessingError) and "too many headers" in (exc.message or "").lower():
        return 431, "request header fields too large"
    if isinstance(exc, BadStatusLine):
        return 400, "bad request: malformed request line"
    if isinstance(exc, InvalidURLError):
        return 400, "bad request: malformed request target"
    if isinstance(exc, HttpProcessingError) or 400 <= status < 500:
        return 400, "bad request: malformed headers or body"
    if status == 504:
        return 504, "gateway timeout"
    return 500, "internal error"


class OneLineRequestHandler(RequestHandler):
    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises if an answer already began
        status, line = error_reply(status, exc)
        reply = text_response(status, line)
        reply.force_close()
        return reply


class _OneLineServer(web.Server):
    def __call__(self) -> RequestHandler:
        return OneLineRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """`web.AppRunner` whose connections answer aiohttp's own errors in one line."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _OneLineServer  # same object, same state: only the handler it builds changes
        return server
