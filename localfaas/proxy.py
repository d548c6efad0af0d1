"""The gateway's invoke path: `/function/<name>` and `/async-function/<name>`.

Owns: proxying a call to a ready replica over pooled keep-alive connections (one client session),
round-robin, retry on another replica when a connection fails before any response (a replica dying
between its answer's head and body is a one-line 502, never a 500), buffering or
streaming of bodies, the `X-Call-Id`/`X-Start-Time`/`X-Duration-Seconds` headers, scale from zero
(a call to a function at 0 replicas starts one and waits for it, bounded, as the gateway's
scale_from_zero does; a function meant to have replicas but with none ready, e.g. while one
restarts, is 503 at once by default so a caller's budget is spent on a fallback, not a wait), the
per-function request body cap (413 before any byte reaches a replica), async calls (a bounded number in flight, like the queue-worker's
max_inflight, and their `X-Callback-Url`), and reporting each call to the gateway metrics, calls
to unknown functions included (code 404). Under `/provider/` (for a real gateway in front) it
answers as faas-provider's proxy does: an unknown function is 503 `No endpoints available for:
<name>.`, and nothing is counted (the gateway in front counts).
Must not touch: processes (the supervisor picks, leases and re-probes replicas), the /system API,
auth (the gateway's middleware runs before it).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from localfaas.metrics import GatewayMetrics
from localfaas.replies import GatewayError, function_name, text_response
from localfaas.supervisor import FunctionRuntime, Supervisor
from localfaas.validate import whole_number

log = logging.getLogger("localfaas.proxy")

# Requests with a body up to this size are buffered so they can be retried on another replica;
# larger or chunked bodies are streamed through (and not retried once sent).
MAX_BUFFERED_BODY = 4 * 1024 * 1024
MAX_BUFFERED_RESPONSE = 1024 * 1024
# A body over this many bytes is refused with 413 (the gateway-wide default; a function may set its
# own with the label below, in bytes).
DEFAULT_MAX_BODY = 16 * 1024 * 1024
MAX_BODY_LABEL = "com.openfaas.localfaas.max-body-bytes"
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
MID_ANSWER_ATTEMPTS = 3  # a buffered idempotent call asked again when a replica dies mid-answer
HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade", "Content-Length", "Host",
))


class CappedBody:
    """A streamed request body counted as it passes: past `limit` the upstream request is broken
    off and the caller gets 413 (`exceeded`), so the function never receives the whole body."""

    def __init__(self, request: web.Request, name: str, limit: int):
        self.request, self.name, self.limit = request, name, limit
        self.exceeded = False

    def error(self) -> GatewayError:
        return GatewayError(413, f"request body too large for function {self.name}: over {self.limit} bytes")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self.request.content.iter_chunked(64 * 1024):
            seen += len(chunk)
            if seen > self.limit:
                self.exceeded = True
                raise self.error()
            yield chunk


class FunctionProxy:
    def __init__(self, supervisor: Supervisor, metrics: GatewayMetrics, *, upstream_timeout: float,
                 no_replica_wait: float, max_async_inflight: int, scale_from_zero_wait: float = 60.0,
                 provider: bool = False, max_body: int = DEFAULT_MAX_BODY):
        self.supervisor = supervisor
        self.metrics = metrics
        self.upstream_timeout = upstream_timeout
        self.no_replica_wait = no_replica_wait
        self.scale_from_zero_wait = scale_from_zero_wait
        self.max_body = max_body
        self.provider = provider  # faas-provider's proxy (behind a real gateway), not the gateway's
        self.session: aiohttp.ClientSession | None = None
        self._async_slots = asyncio.Semaphore(max_async_inflight)
        self._background: set[asyncio.Task[Any]] = set()

    def add_routes(self, app: web.Application, prefix: str = "") -> None:
        app.router.add_route("*", prefix + "/function/{name}", self.call_function)
        app.router.add_route("*", prefix + "/function/{name}/{path:.*}", self.call_function)
        if not prefix:
            app.router.add_route("*", "/async-function/{name}", self.call_async)
            app.router.add_route("*", "/async-function/{name}/{path:.*}", self.call_async)

    async def open(self) -> None:
        # One pooled session for all upstream calls: keep-alive connections to replicas are reused.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=256, keepalive_timeout=30,
                                         enable_cleanup_closed=True)
        # No cookie jar (a proxy forwards Cookie/Set-Cookie headers as they are, it keeps none) and no
        # default headers added: nothing per call that the replica does not need.
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                             cookie_jar=aiohttp.DummyCookieJar(),
                                             skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                                             timeout=aiohttp.ClientTimeout(total=None, sock_connect=2))
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self.session:
            await self.session.close()

    @staticmethod
    def _label(raw_name: str) -> str:
        name, namespace = function_name(raw_name)
        return f"{name}.{namespace}"

    def _runtime(self, raw_name: str) -> FunctionRuntime:
        name, namespace = function_name(raw_name)
        runtime = self.supervisor.functions.get(name)
        if runtime is None or namespace != runtime.config.namespace:
            if self.provider:
                raise GatewayError(503, f"No endpoints available for: {name}.")
            raise GatewayError(404, f"error finding function {name}.{namespace}: not found")
        return runtime

    @staticmethod
    def _rest_of_path(request: web.Request) -> str:
        # The raw (still percent-encoded) path after [/provider]/function/<name>, plus the query string.
        raw = request.raw_path
        if raw.startswith("/provider/"):
            raw = raw[len("/provider"):]
        parts = raw.split("/", 3)
        rest = parts[3] if len(parts) > 3 else ""
        if len(parts) == 3 and "?" in parts[2]:
            rest = "?" + parts[2].split("?", 1)[1]
        return rest if rest.startswith("?") else "/" + rest

    def _upstream_headers(self, request: web.Request, call_id: str, start_ns: int) -> dict[str, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["X-Call-Id"] = call_id
        headers["X-Start-Time"] = str(start_ns)
        headers["X-Forwarded-Host"] = request.host
        headers["X-Forwarded-For"] = request.remote or ""
        return headers

    @contextlib.asynccontextmanager
    async def _upstream(self, runtime: FunctionRuntime, method: str, rest: str, headers: dict[str, str],
                        body: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response of a ready replica. A connection refused (any method) or dropped before any
        response (idempotent methods with a buffered body) is retried on another replica."""
        assert self.session is not None
        name = runtime.config.name
        timeout = self._timeout(min(runtime.config.exec_timeout(), self.upstream_timeout))
        retry_dropped = method in IDEMPOTENT and isinstance(body, bytes)
        tried: set[int] = set()
        for _attempt in range(6):
            replica = runtime.pick(tried)
            if replica is None:
                if runtime.desired == 0:
                    if not await self.supervisor.scale_from_zero(name, self.scale_from_zero_wait):
                        raise GatewayError(503, f"function {name}: scaled from zero, but no replica was ready "
                                                f"within {self.scale_from_zero_wait:g}s")
                elif self.no_replica_wait <= 0 or not await self.supervisor.wait_ready(name, self.no_replica_wait):
                    raise GatewayError(503, f"no ready replicas for function {name}")
                replica = runtime.pick(tried) or runtime.pick()
                if replica is None:
                    continue
            with self.supervisor.lease(replica):
                try:
                    try:
                        response = await self.session.request(
                            method, URL(replica.url + rest, encoded=True), headers=headers, data=body,
                            timeout=timeout, allow_redirects=False)
                    except Exception:
                        if isinstance(body, CappedBody) and body.exceeded:
                            raise body.error() from None
                        raise
                except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                    log.info("function %s: %r unreachable (%s); trying another replica", name, replica, exc)
                    tried.add(replica.pid)
                    self.supervisor.report_connection_failure(replica)
                    continue
                except TimeoutError:
                    raise GatewayError(504, f"function {name} did not answer within {timeout.sock_read:g}s")
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    tried.add(replica.pid)
                    if not replica.alive:
                        self.supervisor.report_connection_failure(replica)
                    if retry_dropped:
                        log.info("function %s: %r dropped the call (%s); retrying elsewhere", name, replica, exc)
                        continue
                    raise GatewayError(502, f"function {name}: replica dropped the connection: {exc}")
                try:
                    yield response
                finally:
                    response.release()
                return
        raise GatewayError(502, f"function {name}: no replica could be reached")

    def _timeout(self, sock_read: float) -> aiohttp.ClientTimeout:
        """One ClientTimeout per distinct read timeout, built once, not per call."""
        timeout = self._timeouts.get(sock_read)
        if timeout is None:
            timeout = self._timeouts[sock_read] = aiohttp.ClientTimeout(total=None, sock_connect=2,
                                                                        sock_read=sock_read)
        return timeout

    def body_limit(self, runtime: FunctionRuntime) -> int:
        raw = runtime.config.labels.get(MAX_BODY_LABEL, "")
        try:
            value = whole_number(raw)
        except ValueError:
            return self.max_body  # as the scaling labels are read: not a number means the default
        return value if value >= 0 else self.max_body

    async def _request_body(self, request: web.Request, limit: int) -> Any:
        length = request.content_length
        name = request.match_info["name"]
        if length is not None and length > limit:
            raise GatewayError(413, f"request body too large for function {name}: "
                                    f"{length} bytes, the limit is {limit}")
        if not request.body_exists:
            return b""
        if length is None or length > MAX_BUFFERED_BODY:
            return self._capped_stream(request, name, limit)  # streamed through, counted
        return await request.read()

    @staticmethod
    def _capped_stream(request: web.Request, name: str, limit: int) -> CappedBody:
        return CappedBody(request, name, limit)

    async def call_function(self, request: web.Request) -> web.StreamResponse:
        label = self._label(request.match_info["name"])
        call_id = request.headers.get("X-Call-Id") or str(uuid.uuid4())
        start_ns, started = time.time_ns(), time.perf_counter()
        if not self.provider:
            self.metrics.call_started(label)
        code = 500
        reply_headers = {"X-Call-Id": call_id, "X-Start-Time": str(start_ns)}
        runtime: FunctionRuntime | None = None
        try:
            runtime = self._runtime(request.match_info["name"])
            body = await self._request_body(request, self.body_limit(runtime))
            headers = self._upstream_headers(request, call_id, start_ns)
            # A replica that dies between its answer's head and its body: a buffered idempotent call
            # is asked again elsewhere (nothing reached the client yet), anything else is a 502.
            retriable = request.method in IDEMPOTENT and isinstance(body, bytes)
            for attempt in range(MID_ANSWER_ATTEMPTS):
                async with self._upstream(runtime, request.method, self._rest_of_path(request), headers,
                                          body) as up:
                    code = up.status
                    out_headers = {k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP}
                    out_headers.update(reply_headers)
                    length = up.content_length
                    if length is not None and length <= MAX_BUFFERED_RESPONSE:
                        try:
                            data = await up.read()
                        except aiohttp.ClientError as exc:  # the replica died between head and body
                            if retriable and attempt + 1 < MID_ANSWER_ATTEMPTS:
                                log.info("function %s: a replica dropped the call mid-answer (%s); asking again",
                                         runtime.config.name, type(exc).__name__)
                                continue
                            raise GatewayError(502, f"function {runtime.config.name}: replica dropped the "
                                                    f"connection mid-answer: {type(exc).__name__}") from None
                        out_headers["X-Duration-Seconds"] = f"{time.perf_counter() - started:.6f}"
                        return web.Response(status=code, body=data, headers=out_headers)
                    out_headers["X-Duration-Seconds"] = f"{time.perf_counter() - started:.6f}"
                    stream = web.StreamResponse(status=code, headers=out_headers)
                    if length is not None:
                        stream.content_length = length
                    await stream.prepare(request)
                    async for chunk in up.content.iter_chunked(64 * 1024):
                        await stream.write(chunk)
                    await stream.write_eof()
                    return stream
            raise GatewayError(502, f"function {runtime.config.name}: replicas kept dropping the call")
        except GatewayError as exc:
            code = exc.status
            return text_response(exc.status, str(exc), **reply_headers)
        finally:
            if runtime is not None:
                runtime.invocation_count += 1
            if not self.provider:
                self.metrics.call_finished(label, code, time.perf_counter() - started)

    async def call_async(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return text_response(405, "async-function only accepts POST", Allow="POST")
        runtime, label = self._runtime(request.match_info["name"]), self._label(request.match_info["name"])
        call_id = request.headers.get("X-Call-Id") or str(uuid.uuid4())
        limit = min(self.body_limit(runtime), MAX_BUFFERED_BODY)
        if request.content_length is not None and request.content_length > limit:
            return text_response(413, f"request body too large for function {runtime.config.name}: "
                                      f"{request.content_length} bytes, the limit is {limit}")
        body = await request.read()
        start_ns = time.time_ns()
        headers = self._upstream_headers(request, call_id, start_ns)
        rest = self._rest_of_path(request)
        callback = request.headers.get("X-Callback-Url")
        task = asyncio.create_task(self._run_async(runtime, label, rest, headers, body, call_id, callback))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return web.Response(status=202, headers={"X-Call-Id": call_id, "X-Start-Time": str(start_ns)})

    async def _run_async(self, runtime: FunctionRuntime, label: str, rest: str, headers: dict[str, str],
                         body: bytes, call_id: str, callback: str | None) -> None:
        async with self._async_slots:  # like the queue-worker's max_inflight
            started = time.perf_counter()
            self.metrics.call_started(label)
            code, result, content_type = 500, b"", "text/plain"
            try:
                async with self._upstream(runtime, "POST", rest, headers, body) as up:
                    code, result = up.status, await up.read()
                    content_type = up.headers.get("Content-Type", content_type)
            except GatewayError as exc:
                code, result = exc.status, (str(exc) + "\n").encode()
            except Exception as exc:
                log.exception("async call %s to %s failed", call_id, label)
                result = f"{exc}\n".encode()
            duration = time.perf_counter() - started
            runtime.invocation_count += 1
            self.metrics.call_finished(label, code, duration)
            log.info("async call %s to %s finished with %s in %.3fs", call_id, label, code, duration)
            if not callback:
                return
            assert self.session is not None
            try:
                async with self.session.post(callback, data=result, timeout=aiohttp.ClientTimeout(total=30), headers={
                    "X-Call-Id": call_id, "X-Function-Name": label, "X-Function-Status": str(code),
                    "X-Duration-Seconds": f"{duration:.6f}", "Content-Type": content_type,
                }) as reply:
                    await reply.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                log.warning("async call %s: callback %s failed: %s", call_id, callback, exc)
