"""The OpenFaaS gateway's HTTP face: one aiohttp app wiring the invoke path, the /system API,
basic auth and metrics together. localfaas is gateway and provider in one: the gateway's routes are
at the root; the same API as a faas-provider serves it is under `/provider/` (set a real gateway's
`functions_provider_url` to `http://127.0.0.1:8080/provider/` to put it in front).

Owns: the app and its routes' assembly (`/function/*` and `/async-function/*` from
`localfaas.proxy`, `/system/*` from `localfaas.system_api`, `localfaas.secrets_api` and
`localfaas.logs`, `/healthz`, `/metrics` from `localfaas.metrics`; the provider's `/provider/system/*`,
`/provider/function/*` and `/provider/healthz`), the basic-auth middleware (`/system/`,
`/provider/system/` and `/ui/` need the credentials of `localfaas.credentials`), answering a
`GatewayError` as its status, and the upstream sessions' lifetime (opened on startup, closed on
cleanup).
Must not touch: processes (the supervisor starts, drains and stops them), stack parsing, building,
images, secret files (`localfaas.secretstore` writes them; the APIs only map its errors to HTTP).
"""
from __future__ import annotations

from typing import Any

import prometheus_client
from aiohttp import web

from localfaas.credentials import Credentials
from localfaas.images import ImageStore
from localfaas.logs import LogsApi
from localfaas.metrics import GatewayMetrics
from localfaas.proxy import DEFAULT_MAX_BODY, MAX_BUFFERED_BODY, FunctionProxy
from localfaas.replies import GatewayError, text_response
from localfaas.secrets_api import SecretsApi
from localfaas.secretstore import SecretStore
from localfaas.supervisor import Supervisor
from localfaas.system_api import SystemApi, check_namespace, json_body

AUTH_REALM = 'Basic realm="Restricted"'
PROVIDER_PREFIX = "/provider"
_GUARDED = ("/system/", "/ui/", PROVIDER_PREFIX + "/system/")


class Gateway:
    def __init__(self, supervisor: Supervisor, images: ImageStore, credentials: Credentials, *,
                 upstream_timeout: float = 65.0, no_replica_wait: float = 0.0, max_async_inflight: int = 16,
                 deploy_wait: float = 0.0, scale_from_zero_wait: float = 60.0, max_body: int = DEFAULT_MAX_BODY):
        self.supervisor = supervisor
        self.credentials = credentials
        self.metrics = GatewayMetrics(supervisor)
        self.secrets = SecretStore(supervisor.state_dir / "secrets")
        options: dict[str, Any] = {"upstream_timeout": upstream_timeout, "no_replica_wait": no_replica_wait,
                                   "max_async_inflight": max_async_inflight,
                                   "scale_from_zero_wait": scale_from_zero_wait, "max_body": max_body}
        self.proxy = FunctionProxy(supervisor, self.metrics, **options)
        self.provider_proxy = FunctionProxy(supervisor, self.metrics, provider=True, **options)
        self.system = SystemApi(supervisor, images, deploy_wait=deploy_wait, refresh=self.metrics.refresh)
        self.secrets_api = SecretsApi(supervisor, self.secrets, check_namespace, json_body)
        self.logs = LogsApi(supervisor.processes.logbook, lambda name: name in supervisor.functions)

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth_middleware], client_max_size=MAX_BUFFERED_BODY)
        self.proxy.add_routes(app)
        self.provider_proxy.add_routes(app, PROVIDER_PREFIX)
        for prefix in ("", PROVIDER_PREFIX):
            self.system.add_routes(app, prefix)
            self.secrets_api.add_routes(app, prefix)
            self.logs.add_routes(app, prefix)
            app.router.add_get(prefix + "/healthz", self.healthz)
        app.router.add_get("/metrics", self.prometheus)
        app.on_startup.append(self._open_sessions)
        app.on_shutdown.append(self.logs.on_shutdown)
        app.on_cleanup.append(self._close_sessions)
        return app

    async def _open_sessions(self, _app: web.Application) -> None:
        await self.proxy.open()
        await self.provider_proxy.open()

    async def _close_sessions(self, _app: web.Application) -> None:
        await self.proxy.close()
        await self.provider_proxy.close()

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(_GUARDED) and not self.credentials.matches(request.headers.get("Authorization")):
            return text_response(401, "Unauthorized", **{"WWW-Authenticate": AUTH_REALM})
        try:
            return await handler(request)
        except GatewayError as exc:
            return text_response(exc.status, str(exc))

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def prometheus(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(),
                            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})
