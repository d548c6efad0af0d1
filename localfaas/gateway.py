"""The OpenFaaS gateway's HTTP face: function calls, the /system REST API, basic auth, metrics.

Owns: routes and JSON shapes of the real gateway (`/function/*`, `/async-function/*`, `/system/*`,
`/healthz`, `/metrics`), proxying to ready replicas over pooled keep-alive connections with
round-robin and retry on another replica when a connection fails before any response, the basic-auth
credentials files, and the `gateway_*` Prometheus metrics.
Must not touch: processes (the supervisor starts, drains and stops them), stack parsing, building,
secret files (`localfaas.secretstore` writes them; the gateway only maps its errors to HTTP).
"""
from __future__ import annotations

import asyncio
import binascii
import contextlib
import hmac
import json
import logging
import os
import platform
import secrets
import time
import uuid
from base64 import b64decode
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from yarl import URL

from localfaas.build import BuildContext
from localfaas.secretstore import SecretError, SecretStore
from localfaas.stackfile import DEFAULT_NAMESPACE
from localfaas.supervisor import (
    DeployError,
    FunctionConfig,
    FunctionNotFound,
    FunctionRuntime,
    MissingSecretError,
    Replica,
    Supervisor,
)

log = logging.getLogger("localfaas.gateway")

VERSION = "0.1.0"
AUTH_REALM = 'Basic realm="Restricted"'
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Requests with a body up to this size are buffered so they can be retried on another replica;
# larger or chunked bodies are streamed through (and not retried once sent).
MAX_BUFFERED_BODY = 4 * 1024 * 1024
MAX_BUFFERED_RESPONSE = 1024 * 1024
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade", "Content-Length", "Host",
))

prometheus_client.disable_created_metrics()  # the Go gateway exposes no *_created series


# ----- credentials -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    def matches(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user.encode(), self.user.encode()) & hmac.compare_digest(
            password.encode(), self.password.encode())


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def ensure_credentials(secrets_dir: str | Path) -> Credentials:
    """The gateway's basic-auth credentials: read from `basic-auth-user`/`basic-auth-password`,
    generated (random password, mode 0600) on the first start and reused afterwards."""
    directory = Path(secrets_dir)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    user_file, password_file = directory / "basic-auth-user", directory / "basic-auth-password"
    if not user_file.exists():
        with contextlib.suppress(FileExistsError):
            _write_private(user_file, "admin")
    if not password_file.exists():
        with contextlib.suppress(FileExistsError):
            _write_private(password_file, secrets.token_urlsafe(24))
    user, password = user_file.read_text().strip(), password_file.read_text().strip()
    if not user or not password:
        raise ValueError(f"empty basic-auth credentials in {directory}: delete both files to regenerate them")
    return Credentials(user, password)


# ----- metrics -----------------------------------------------------------------------------------
class GatewayMetrics:
    """`gateway_*` series with the real gateway's names, labels and buckets, in a private registry."""

    def __init__(self, supervisor: Supervisor):
        self.registry = CollectorRegistry(auto_describe=True)
        self.invocations = Counter("gateway_function_invocation", "Function invocations by code",
                                   ["function_name", "code"], registry=self.registry)
        self.seconds = Histogram("gateway_functions_seconds", "Function call duration",
                                 ["function_name", "code"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.started: dict[str, float] = {}
        self.supervisor = supervisor
        self.registry.register(self)  # collect() below reads replica counts at scrape time

    def collect(self) -> list[Metric]:
        services = GaugeMetricFamily("gateway_service_count", "Current replicas of a function",
                                     labels=["function_name"])
        for fn in self.supervisor.functions.values():
            services.add_metric([f"{fn.config.name}.{fn.config.namespace}"], float(fn.desired))
        return [services]

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily("gateway_service_count", "")]

    def exposition(self) -> bytes:
        # prometheus_client always names a counter family "<name>_total"; the Go gateway's
        # `gateway_function_invocation_started` has no suffix, so that one family is written here.
        lines = ["# HELP gateway_function_invocation_started Function invocations started",
                 "# TYPE gateway_function_invocation_started counter"]
        lines += [f'gateway_function_invocation_started{{function_name="{name}"}} {value!r}'
                  for name, value in sorted(self.started.items())]
        return prometheus_client.generate_latest(self.registry) + ("\n".join(lines) + "\n").encode()

    def call_started(self, function_name: str) -> None:
        self.started[function_name] = self.started.get(function_name, 0.0) + 1

    def call_finished(self, function_name: str, code: int, seconds: float) -> None:
        self.invocations.labels(function_name, str(code)).inc()
        self.seconds.labels(function_name, str(code)).observe(seconds)


# ----- errors ------------------------------------------------------------------------------------
class GatewayError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@contextlib.contextmanager
def _supervisor_errors(failed_status: int) -> Iterator[None]:
    """The supervisor's errors as the gateway answers them: a missing secret 400, an unknown
    function 404, any other deploy/update/scale that could not be carried out `failed_status`."""
    try:
        yield
    except MissingSecretError as exc:
        raise GatewayError(400, str(exc)) from None
    except FunctionNotFound as exc:
        raise GatewayError(404, str(exc)) from None
    except DeployError as exc:
        raise GatewayError(failed_status, str(exc)) from None


def _text(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers=headers)


def _function_name(raw: str, namespace: str | None = None) -> tuple[str, str]:
    name, dot, ns = raw.partition(".")
    ns = ns if dot else (namespace or DEFAULT_NAMESPACE)
    return name, ns


def _rfc3339(dt: Any) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _memory_bytes(replicas: list[Replica]) -> float:
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for replica in replicas:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{replica.pid}/statm").read_text().split()[1]) * page
    return float(total)


# ----- the gateway -------------------------------------------------------------------------------
class Gateway:
    def __init__(self, supervisor: Supervisor, contexts: dict[str, BuildContext], credentials: Credentials,
                 *, upstream_timeout: float = 65.0, no_replica_wait: float = 5.0, max_async_inflight: int = 16):
        self.supervisor = supervisor
        self.contexts = contexts
        self.credentials = credentials
        self.upstream_timeout = upstream_timeout
        self.no_replica_wait = no_replica_wait
        self.metrics = GatewayMetrics(supervisor)
        self.secrets = SecretStore(supervisor.state_dir / "secrets")
        self.session: aiohttp.ClientSession | None = None
        self._async_slots = asyncio.Semaphore(max_async_inflight)
        self._background: set[asyncio.Task[Any]] = set()

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth_middleware], client_max_size=MAX_BUFFERED_BODY)
        app.router.add_route("*", "/function/{name}", self.call_function)
        app.router.add_route("*", "/function/{name}/{path:.*}", self.call_function)
        app.router.add_route("*", "/async-function/{name}", self.call_async)
        app.router.add_route("*", "/async-function/{name}/{path:.*}", self.call_async)
        app.router.add_get("/system/functions", self.list_functions)
        app.router.add_post("/system/functions", self.deploy_function)
        app.router.add_put("/system/functions", self.update_function)
        app.router.add_delete("/system/functions", self.delete_function)
        app.router.add_get("/system/function/{name}", self.get_function)
        app.router.add_post("/system/scale-function/{name}", self.scale_function)
        app.router.add_get("/system/info", self.info)
        app.router.add_get("/system/namespaces", self.namespaces)
        app.router.add_get("/system/secrets", self.list_secrets)
        app.router.add_post("/system/secrets", self.create_secret)
        app.router.add_put("/system/secrets", self.update_secret)
        app.router.add_delete("/system/secrets", self.delete_secret)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.prometheus)
        app.on_startup.append(self._open_session)
        app.on_cleanup.append(self._close_session)
        return app

    async def _open_session(self, _app: web.Application) -> None:
        # One pooled session for all upstream calls: keep-alive connections to replicas are reused.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=256, keepalive_timeout=30,
                                         enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                             timeout=aiohttp.ClientTimeout(total=None, sock_connect=2))

    async def _close_session(self, _app: web.Application) -> None:
        for task in list(self._background):
            task.cancel()
        if self.session:
            await self.session.close()

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(("/system/", "/ui/")) and not self.credentials.matches(
                request.headers.get("Authorization")):
            return _text(401, "Unauthorized", **{"WWW-Authenticate": AUTH_REALM})
        try:
            return await handler(request)
        except GatewayError as exc:
            return _text(exc.status, str(exc))

    # ----- function calls ----------------------------------------------------------------------
    def _runtime(self, raw_name: str) -> tuple[FunctionRuntime, str]:
        name, namespace = _function_name(raw_name)
        runtime = self.supervisor.functions.get(name)
        if runtime is None or namespace != runtime.config.namespace:
            raise GatewayError(404, f"error finding function {name}.{namespace}: not found")
        return runtime, f"{name}.{namespace}"

    @staticmethod
    def _rest_of_path(request: web.Request) -> str:
        # The raw (still percent-encoded) path after /function/<name>, plus the query string.
        parts = request.raw_path.split("/", 3)
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
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=2,
                                        sock_read=min(runtime.config.exec_timeout(), self.upstream_timeout))
        retry_dropped = method in IDEMPOTENT and isinstance(body, bytes)
        tried: set[int] = set()
        for _attempt in range(6):
            replica = runtime.pick(tried)
            if replica is None:
                if not await self.supervisor.wait_ready(name, self.no_replica_wait):
                    raise GatewayError(503, f"no ready replicas for function {name}")
                replica = runtime.pick(tried) or runtime.pick()
                if replica is None:
                    continue
            with self.supervisor.lease(replica):
                try:
                    response = await self.session.request(
                        method, URL(replica.url + rest, encoded=True), headers=headers, data=body,
                        timeout=timeout, allow_redirects=False)
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

    async def _request_body(self, request: web.Request) -> Any:
        length = request.content_length
        if request.body_exists and (length is None or length > MAX_BUFFERED_BODY):
            return request.content  # streamed through
        return await request.read() if request.body_exists else b""

    async def call_function(self, request: web.Request) -> web.StreamResponse:
        runtime, label = self._runtime(request.match_info["name"])
        call_id = request.headers.get("X-Call-Id") or str(uuid.uuid4())
        start_ns, started = time.time_ns(), time.perf_counter()
        self.metrics.call_started(label)
        code = 500
        reply_headers = {"X-Call-Id": call_id, "X-Start-Time": str(start_ns)}
        try:
            body = await self._request_body(request)
            headers = self._upstream_headers(request, call_id, start_ns)
            async with self._upstream(runtime, request.method, self._rest_of_path(request), headers, body) as up:
                code = up.status
                out_headers = {k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP}
                out_headers.update(reply_headers)
                length = up.content_length
                if length is not None and length <= MAX_BUFFERED_RESPONSE:
                    data = await up.read()
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
        except GatewayError as exc:
            code = exc.status
            return _text(exc.status, str(exc), **reply_headers)
        finally:
            runtime.invocation_count += 1
            self.metrics.call_finished(label, code, time.perf_counter() - started)

    async def call_async(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return _text(405, "async-function only accepts POST", Allow="POST")
        runtime, label = self._runtime(request.match_info["name"])
        call_id = request.headers.get("X-Call-Id") or str(uuid.uuid4())
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

    # ----- /system API -------------------------------------------------------------------------
    def _status(self, fn: FunctionRuntime) -> dict[str, Any]:
        c = fn.config
        alive = [r for r in fn.replicas if r.alive]
        return {
            "name": c.name, "image": c.image, "namespace": c.namespace, "envProcess": c.env_process,
            "envVars": dict(c.env_vars), "labels": dict(c.labels), "annotations": dict(c.annotations),
            "secrets": list(c.secrets), "constraints": list(c.constraints),
            "limits": dict(c.limits) or None, "requests": dict(c.requests) or None,
            "readOnlyRootFilesystem": c.read_only_root_filesystem,
            "invocationCount": float(fn.invocation_count), "replicas": fn.desired,
            "availableReplicas": len(fn.ready_replicas()), "createdAt": _rfc3339(fn.created_at),
            "usage": {"cpu": 0.0, "totalMemoryBytes": _memory_bytes(alive)},
        }

    @staticmethod
    def _check_namespace(namespace: str | None) -> str:
        namespace = namespace or DEFAULT_NAMESPACE
        if namespace != DEFAULT_NAMESPACE:
            raise GatewayError(400, f"namespace {namespace!r} is not valid: only {DEFAULT_NAMESPACE}")
        return namespace

    async def list_functions(self, request: web.Request) -> web.Response:
        namespace = self._check_namespace(request.query.get("namespace"))
        return web.json_response([self._status(fn) for fn in self.supervisor.functions.values()
                                  if fn.config.namespace == namespace])

    async def get_function(self, request: web.Request) -> web.Response:
        name, namespace = _function_name(request.match_info["name"], request.query.get("namespace"))
        self._check_namespace(namespace)
        fn = self.supervisor.functions.get(name)
        if fn is None:
            raise GatewayError(404, f"function {name} not found")
        return web.json_response(self._status(fn))

    @staticmethod
    async def _json_body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GatewayError(400, f"invalid JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise GatewayError(400, "request body must be a JSON object")
        return body

    def _deployment(self, body: dict[str, Any]) -> FunctionConfig:
        service = body.get("service")
        if not isinstance(service, str) or not service:
            raise GatewayError(400, "service is required: the function's name")

        def str_map(key: str) -> dict[str, str]:
            value = body.get(key) or {}
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise GatewayError(400, f"{key} must be an object of strings")
            return dict(value)

        def str_list(key: str) -> tuple[str, ...]:
            value = body.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise GatewayError(400, f"{key} must be an array of strings")
            return tuple(value)

        def resources(key: str) -> dict[str, str]:
            value = body.get(key) or {}
            if not isinstance(value, dict):
                raise GatewayError(400, f"{key} must be an object like {{\"memory\": \"128Mi\"}}")
            return {k: str(v) for k, v in value.items() if v not in (None, "")}

        return FunctionConfig(
            name=service, image=str(body.get("image") or ""),
            namespace=self._check_namespace(body.get("namespace")),
            env_process=str(body.get("envProcess") or ""), env_vars=str_map("envVars"),
            labels=str_map("labels"), annotations=str_map("annotations"), secrets=str_list("secrets"),
            limits=resources("limits"), requests=resources("requests"), constraints=str_list("constraints"),
            read_only_root_filesystem=bool(body.get("readOnlyRootFilesystem", False)),
        )

    async def _apply(self, config: FunctionConfig) -> web.Response:
        context = self.contexts.get(config.name)
        if context is None:
            raise GatewayError(400, f"function {config.name}: not in the stack file, so localfaas has no "
                                    f"build context for it (add it to stack.yml and restart)")
        # Shielded: a client that hangs up must not leave a half-done rollout behind.
        with _supervisor_errors(500):
            await asyncio.shield(self.supervisor.deploy(config, context))
        return web.Response(status=202)

    async def deploy_function(self, request: web.Request) -> web.Response:
        return await self._apply(self._deployment(await self._json_body(request)))

    async def update_function(self, request: web.Request) -> web.Response:
        config = self._deployment(await self._json_body(request))
        if config.name not in self.supervisor.functions:
            raise GatewayError(404, f"function {config.name} not found")
        return await self._apply(config)

    async def delete_function(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        name = body.get("functionName")
        if not isinstance(name, str) or not name:
            raise GatewayError(400, "functionName is required")
        self._check_namespace(body.get("namespace"))
        with _supervisor_errors(500):
            await asyncio.shield(self.supervisor.remove(name))
        return web.Response(status=202)

    async def scale_function(self, request: web.Request) -> web.Response:
        name, _ = _function_name(request.match_info["name"])
        body = await self._json_body(request)
        replicas = body.get("replicas")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise GatewayError(400, "replicas must be a whole number >= 0")
        self._check_namespace(body.get("namespace"))
        with _supervisor_errors(400):
            await self.supervisor.scale(body.get("serviceName") or name, replicas)
        return web.Response(status=202)

    async def info(self, _request: web.Request) -> web.Response:
        version = {"commit_message": "", "sha": "", "release": VERSION}
        return web.json_response({
            "provider": {"provider": "localfaas", "orchestration": "local-processes", "version": version},
            "version": version, "arch": platform.machine(),
        })

    async def namespaces(self, _request: web.Request) -> web.Response:
        return web.json_response([DEFAULT_NAMESPACE])

    # ----- /system/secrets: the body is faas-provider's Secret {name, namespace, value, rawValue} --
    async def list_secrets(self, request: web.Request) -> web.Response:
        namespace = self._check_namespace(request.query.get("namespace"))
        return web.json_response([{"name": n, "namespace": namespace} for n in self.secrets.names()])

    async def _secret_request(self, request: web.Request, *, with_value: bool) -> tuple[str, bytes]:
        body = await self._json_body(request)
        # faas-cli sends the namespace in the body; faasd also reads it from the query.
        self._check_namespace(body.get("namespace") or request.query.get("namespace"))
        name = body.get("name")
        if not with_value:
            return str(name or ""), b""
        raw, value = body.get("rawValue"), body.get("value")
        if raw:  # Go marshals []byte as base64: what `faas-cli secret create --from-file` sends
            if not isinstance(raw, str):
                raise GatewayError(400, "rawValue must be a base64 string")
            try:
                return str(name or ""), b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise GatewayError(400, "rawValue is not valid base64") from None
        if isinstance(value, str) and value:
            return str(name or ""), value.encode()
        raise GatewayError(400, "a non-empty value (text) or rawValue (base64) is required")

    @staticmethod
    def _secret_error(exc: SecretError) -> GatewayError:
        status = {"invalid": 400, "exists": 409, "missing": 404, "reserved": 403}[exc.kind]
        return GatewayError(status, str(exc))

    async def create_secret(self, request: web.Request) -> web.Response:
        name, value = await self._secret_request(request, with_value=True)
        try:
            self.secrets.create(name, value)
        except SecretError as exc:
            raise self._secret_error(exc) from None
        log.info("secret %s created", name)
        return web.Response(status=202)

    async def update_secret(self, request: web.Request) -> web.Response:
        name, value = await self._secret_request(request, with_value=True)
        try:
            self.secrets.update(name, value)
        except SecretError as exc:
            raise self._secret_error(exc) from None
        refreshed = self.supervisor.refresh_secret(name)
        log.info("secret %s updated (refreshed for %s)", name, ", ".join(refreshed) or "no function")
        return web.Response(status=202)

    async def delete_secret(self, request: web.Request) -> web.Response:
        name, _ = await self._secret_request(request, with_value=False)
        try:
            self.secrets.delete(name)
        except SecretError as exc:
            raise self._secret_error(exc) from None
        # Replicas already running keep their copy (a mounted secret outlives its deletion too);
        # a later deploy naming it is refused until it is created again.
        log.info("secret %s deleted", name)
        return web.Response(status=202)

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def prometheus(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(),
                            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})
