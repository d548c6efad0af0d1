"""The gateway's `/system/*` REST API, with faas-provider's routes, JSON shapes and status codes.

Owns: `/system/functions` (list; deploy with POST, which refuses an existing function with 400 as
faasd does; update with PUT, 404 when absent; delete), `/system/function/<name>` (FunctionStatus,
plus `imageDigest`: the snapshot it runs), `/system/scale-function/<name>`, `/system/info` (the
gateway's shape on the gateway's route, the provider's `ProviderInfo` under `/provider/`),
`/system/namespaces` and `/system/namespace/<ns>` (one namespace, `openfaas-fn`, as faasd CE has
one), resolving a deploy's image (`localfaas.images`), validating request bodies (names via `localfaas.validate`;
`envProcess` only the image's own) and the namespace,
and mapping supervisor and image errors to HTTP statuses. Secrets: `localfaas.secrets_api`.
Must not touch: processes (the supervisor deploys, scales and removes), image files, secret
files, the invoke path, auth (the gateway's middleware).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from localfaas import validate
from localfaas.functionconfig import (
    DeployError,
    FunctionConfig,
    FunctionNotFound,
    InvalidDeployment,
    MissingSecretError,
)
from localfaas.images import Image, ImageError, ImageStore
from localfaas.replica import Replica
from localfaas.replies import GatewayError, function_name
from localfaas.stackfile import DEFAULT_NAMESPACE
from localfaas.supervisor import FunctionRuntime, Supervisor

log = logging.getLogger("localfaas.system_api")

VERSION = "0.2.0"
PROVIDER = {"provider": "localfaas", "orchestration": "local-processes", "version": {"sha": "", "release": VERSION}}
_GO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm"}
NAMESPACE_LABELS = {"openfaas": "1"}


@contextlib.contextmanager
def _supervisor_errors(failed_status: int) -> Iterator[None]:
    """The supervisor's errors as the gateway answers them: a bad body, image or missing secret 400,
    an unknown function 404, any other deploy/update/scale that could not be carried out
    `failed_status`."""
    try:
        yield
    except (MissingSecretError, InvalidDeployment, ImageError) as exc:
        raise GatewayError(400, str(exc)) from None
    except FunctionNotFound as exc:
        raise GatewayError(404, str(exc)) from None
    except DeployError as exc:
        raise GatewayError(failed_status, str(exc)) from None


def _rfc3339(dt: Any) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _memory_bytes(replicas: list[Replica]) -> float:
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for replica in replicas:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{replica.pid}/statm").read_text().split()[1]) * page
    return float(total)


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GatewayError(400, f"invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "request body must be a JSON object")
    return body


def check_namespace(namespace: str | None) -> str:
    namespace = namespace or DEFAULT_NAMESPACE
    if namespace != DEFAULT_NAMESPACE:
        raise GatewayError(400, f"namespace {namespace!r} is not valid: only {DEFAULT_NAMESPACE}")
    return namespace


class SystemApi:
    def __init__(self, supervisor: Supervisor, images: ImageStore, *, deploy_wait: float = 0.0,
                 refresh: Callable[[], None] = lambda: None):
        self.supervisor = supervisor
        self.refresh = refresh  # brings invocation counts up to date (the data plane's call log)
        # the replicas that take calls (the nginx data plane: those its configuration routes to)
        self.available: Callable[[FunctionRuntime], int] = lambda fn: len(fn.ready_replicas())
        self.images = images
        self.deploy_wait = deploy_wait  # seconds a deploy call waits for its replicas to serve
        self.namespace_labels = dict(NAMESPACE_LABELS)

    def add_routes(self, app: web.Application, prefix: str = "") -> None:
        app.router.add_get(prefix + "/system/functions", self.list_functions)
        app.router.add_post(prefix + "/system/functions", self.deploy_function)
        app.router.add_put(prefix + "/system/functions", self.update_function)
        app.router.add_delete(prefix + "/system/functions", self.delete_function)
        app.router.add_get(prefix + "/system/function/{name}", self.get_function)
        app.router.add_post(prefix + "/system/scale-function/{name}", self.scale_function)
        app.router.add_get(prefix + "/system/info", self.provider_info if prefix else self.info)
        app.router.add_get(prefix + "/system/namespaces", self.namespaces)
        app.router.add_route("*", prefix + "/system/namespace/{ns}", self.namespace)
        app.router.add_route("*", prefix + "/system/namespace/", self.namespace)

    def _status(self, fn: FunctionRuntime) -> dict[str, Any]:
        c = fn.config
        alive = [r for r in fn.every_replica() if r.alive]
        status: dict[str, Any] = {
            "name": c.name, "image": self.images.display_ref(c.image, fn.image.digest),
            "imageDigest": fn.image.digest, "namespace": c.namespace, "envProcess": c.env_process,
            "envVars": dict(c.env_vars), "labels": dict(c.labels), "annotations": dict(c.annotations),
            "secrets": list(c.secrets), "constraints": list(c.constraints),
            "readOnlyRootFilesystem": c.read_only_root_filesystem,
            "invocationCount": float(fn.invocation_count), "replicas": fn.desired,
            "createdAt": _rfc3339(fn.created_at),
            "usage": {"cpu": 0.0, "totalMemoryBytes": _memory_bytes(alive)},
        }
        available = self.available(fn)
        if available:  # Go's omitempty: gone when 0
            status["availableReplicas"] = available
        for key, value in (("limits", c.limits), ("requests", c.requests)):
            if value:
                status[key] = dict(value)
        return status

    async def list_functions(self, request: web.Request) -> web.Response:
        namespace = check_namespace(request.query.get("namespace"))
        self.refresh()
        return web.json_response([self._status(fn) for fn in self.supervisor.functions.values()
                                  if fn.config.namespace == namespace])

    async def get_function(self, request: web.Request) -> web.Response:
        name, namespace = function_name(request.match_info["name"], request.query.get("namespace"))
        check_namespace(namespace)
        fn = self.supervisor.functions.get(name)
        if fn is None:
            raise GatewayError(404, f"function {name}.{namespace} not found")
        self.refresh()
        return web.json_response(self._status(fn))

    async def _deployment(self, request: web.Request) -> FunctionConfig:
        with _supervisor_errors(400):
            config = FunctionConfig.from_deployment(await json_body(request))
        check_namespace(config.namespace)
        return config

    async def _resolve(self, config: FunctionConfig) -> Image:
        with _supervisor_errors(400):
            image = await asyncio.to_thread(self.images.resolve, config.image)
        try:  # only the process the stack gives the image may run: anything else is a host command
            validate.env_process(config.env_process, image.fprocess)
        except validate.ValidationError as exc:
            raise GatewayError(400, f"function {config.name}: {exc}") from None
        return image

    async def _apply(self, config: FunctionConfig, image: Image) -> web.Response:
        # Shielded: a client that hangs up must not leave a half-done deploy behind.
        with _supervisor_errors(500):
            await asyncio.shield(self.supervisor.deploy(config, image, wait=self.deploy_wait))
        log.info("function %s: deployed image %s (%s)", config.name, config.image, image.digest[:19])
        return web.Response(status=202)

    async def deploy_function(self, request: web.Request) -> web.Response:
        config = await self._deployment(request)
        if config.name in self.supervisor.functions:
            # What faasd answers (faas-netes: 500); never an update: that is PUT.
            raise GatewayError(400, f"unable to create function {config.name}.{config.namespace}: it already "
                                    f"exists (update it with PUT /system/functions, faas-cli deploy's default)")
        return await self._apply(config, await self._resolve(config))

    async def update_function(self, request: web.Request) -> web.Response:
        config = await self._deployment(request)
        if config.name not in self.supervisor.functions:
            raise GatewayError(404, f"function: {config.name}.{config.namespace} not found")
        return await self._apply(config, await self._resolve(config))

    async def delete_function(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        name = body.get("functionName")
        if not isinstance(name, str) or not name:
            raise GatewayError(400, "functionName is required")
        namespace = check_namespace(body.get("namespace") or request.query.get("namespace"))
        if name not in self.supervisor.functions:
            raise GatewayError(404, f"function {name}.{namespace} not found")
        with _supervisor_errors(500):
            await asyncio.shield(self.supervisor.remove(name))
        return web.Response(status=202)

    async def scale_function(self, request: web.Request) -> web.Response:
        name, _ = function_name(request.match_info["name"])
        body = await json_body(request)
        replicas = body.get("replicas")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise GatewayError(400, "replicas must be a whole number >= 0")
        # faas-cli sends the namespace in the body, the gateway's scale-from-zero in the query.
        check_namespace(body.get("namespace") or request.query.get("namespace"))
        with _supervisor_errors(400):
            await self.supervisor.scale(body.get("serviceName") or name, replicas)
        return web.Response(status=202)

    async def info(self, _request: web.Request) -> web.Response:
        """The gateway's /system/info: the provider's ProviderInfo wrapped with the gateway's own."""
        return web.json_response({
            "provider": PROVIDER, "version": {"commit_message": "", "sha": "", "release": VERSION},
            "arch": _GO_ARCH.get(platform.machine(), platform.machine()),
        })

    async def provider_info(self, _request: web.Request) -> web.Response:
        """faas-provider's /system/info (ProviderInfo), what a real gateway in front reads."""
        return web.json_response(PROVIDER)

    async def namespaces(self, _request: web.Request) -> web.Response:
        return web.json_response([DEFAULT_NAMESPACE])

    async def namespace(self, request: web.Request) -> web.Response:
        """`/system/namespace/<ns>` as faasd CE answers it, with its one namespace."""
        ns = request.match_info.get("ns", "")
        if request.method not in ("GET", "POST", "PUT", "DELETE"):
            raise GatewayError(405, f"method {request.method} not allowed")
        if request.method == "GET":
            if not ns:
                raise GatewayError(400, "namespace not specified in URL")
            if ns != DEFAULT_NAMESPACE:
                raise GatewayError(404, f"namespace {ns} not found")
            return web.json_response({"name": ns, "labels": self.namespace_labels})
        body = await json_body(request)
        name, labels = body.get("name"), body.get("labels") or {}
        if request.method != "POST" and not ns:
            raise GatewayError(400, "namespace not specified in URL")
        if request.method != "POST" and name != ns:
            raise GatewayError(400, "namespace in request body does not match namespace in URL")
        if not isinstance(name, str) or not name:
            raise GatewayError(400, "namespace not specified in request body")
        if not isinstance(labels, dict) or labels.get("openfaas") != "1":
            raise GatewayError(400, "request does not have openfaas=1 label")
        if request.method == "POST":
            if name == DEFAULT_NAMESPACE:
                raise GatewayError(409, f"namespace {name} already exists")
            raise GatewayError(400, f"unable to create namespace {name}: localfaas has one namespace, "
                                    f"{DEFAULT_NAMESPACE} (as faasd CE)")
        if ns != DEFAULT_NAMESPACE:
            raise GatewayError(404, f"namespace {ns} not found")
        if request.method == "DELETE":
            raise GatewayError(400, f"namespace {ns} cannot be deleted: it is localfaas's only namespace")
        self.namespace_labels = {str(k): str(v) for k, v in labels.items()}
        return web.Response(status=202)
