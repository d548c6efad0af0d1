"""The gateway's `/system/*` REST API, with faas-provider's routes and JSON shapes.

Owns: `/system/functions` (list, deploy, update, delete), `/system/function/<name>`,
`/system/scale-function/<name>`, `/system/info`, `/system/namespaces`, `/system/secrets`
(faas-provider's Secret `{name, namespace, value, rawValue}`), validating request bodies and the
namespace, and mapping supervisor and secret-store errors to HTTP statuses.
Must not touch: processes (the supervisor deploys, scales and removes), secret files
(`localfaas.secretstore` writes them), the invoke path, auth (the gateway's middleware).
"""
from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import logging
import os
import platform
from base64 import b64decode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from localfaas.build import BuildContext
from localfaas.functionconfig import DeployError, FunctionConfig, FunctionNotFound, MissingSecretError
from localfaas.replica import Replica
from localfaas.replies import GatewayError, function_name
from localfaas.secretstore import SecretError, SecretStore
from localfaas.stackfile import DEFAULT_NAMESPACE
from localfaas.supervisor import FunctionRuntime, Supervisor

log = logging.getLogger("localfaas.system_api")

VERSION = "0.1.0"


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


def _rfc3339(dt: Any) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _memory_bytes(replicas: list[Replica]) -> float:
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for replica in replicas:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{replica.pid}/statm").read_text().split()[1]) * page
    return float(total)


class SystemApi:
    def __init__(self, supervisor: Supervisor, contexts: dict[str, BuildContext], secrets: SecretStore):
        self.supervisor = supervisor
        self.contexts = contexts
        self.secrets = secrets

    def add_routes(self, app: web.Application) -> None:
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
        name, namespace = function_name(request.match_info["name"], request.query.get("namespace"))
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
        name, _ = function_name(request.match_info["name"])
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
