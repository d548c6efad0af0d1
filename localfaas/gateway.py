"""The OpenFaaS gateway's HTTP face: one aiohttp app wiring the invoke path, the /system API,
basic auth and metrics together.

Owns: the app and its routes' assembly (`/function/*` and `/async-function/*` from
`localfaas.proxy`, `/system/*` from `localfaas.system_api`, `/healthz`, `/metrics` from
`localfaas.metrics`), the basic-auth middleware (`/system/` and `/ui/` need the credentials of
`localfaas.credentials`), answering a `GatewayError` as its status, and the upstream session's
lifetime (opened on startup, closed on cleanup).
Must not touch: processes (the supervisor starts, drains and stops them), stack parsing, building,
secret files (`localfaas.secretstore` writes them; the system API only maps its errors to HTTP).
"""
from __future__ import annotations

from typing import Any

import prometheus_client
from aiohttp import web

from localfaas.build import BuildContext
from localfaas.credentials import Credentials
from localfaas.metrics import GatewayMetrics
from localfaas.proxy import MAX_BUFFERED_BODY, FunctionProxy
from localfaas.replies import GatewayError, text_response
from localfaas.secretstore import SecretStore
from localfaas.supervisor import Supervisor
from localfaas.system_api import SystemApi

AUTH_REALM = 'Basic realm="Restricted"'


class Gateway:
    def __init__(self, supervisor: Supervisor, contexts: dict[str, BuildContext], credentials: Credentials,
                 *, upstream_timeout: float = 65.0, no_replica_wait: float = 5.0, max_async_inflight: int = 16):
        self.supervisor = supervisor
        self.contexts = contexts
        self.credentials = credentials
        self.metrics = GatewayMetrics(supervisor)
        self.secrets = SecretStore(supervisor.state_dir / "secrets")
        self.proxy = FunctionProxy(supervisor, self.metrics, upstream_timeout=upstream_timeout,
                                   no_replica_wait=no_replica_wait, max_async_inflight=max_async_inflight)
        self.system = SystemApi(supervisor, contexts, self.secrets)

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth_middleware], client_max_size=MAX_BUFFERED_BODY)
        self.proxy.add_routes(app)
        self.system.add_routes(app)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.prometheus)
        app.on_startup.append(self._open_session)
        app.on_cleanup.append(self._close_session)
        return app

    async def _open_session(self, _app: web.Application) -> None:
        await self.proxy.open()

    async def _close_session(self, _app: web.Application) -> None:
        await self.proxy.close()

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(("/system/", "/ui/")) and not self.credentials.matches(
                request.headers.get("Authorization")):
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
