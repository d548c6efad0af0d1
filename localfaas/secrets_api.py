"""The gateway's `/system/secrets` routes, with faas-provider's Secret `{name, namespace, value, rawValue}`.

Owns: listing (names only, never values; the gateway's own `basic-auth-*` credentials are left out,
as the real gateway's are not secrets of the functions' namespace), create (409 when it exists),
update (404 when it does not; running replicas get the new value in place), delete, validating
the request bodies as faas-cli sends them (`rawValue` is base64, what `--from-file` sends), and
mapping secret-store errors to HTTP statuses.
Must not touch: the secret files (`localfaas.secretstore` writes them), processes (the supervisor
refreshes the copies replicas read), auth (the gateway's middleware).
"""
from __future__ import annotations

import binascii
import logging
from base64 import b64decode
from collections.abc import Callable
from typing import Any

from aiohttp import web

from localfaas.replies import GatewayError
from localfaas.secretstore import GATEWAY_CREDENTIALS, SecretError, SecretStore
from localfaas.supervisor import Supervisor

log = logging.getLogger("localfaas.secrets_api")


class SecretsApi:
    def __init__(self, supervisor: Supervisor, secrets: SecretStore,
                 check_namespace: Callable[[str | None], str], json_body: Callable[..., Any]):
        self.supervisor = supervisor
        self.secrets = secrets
        self._check_namespace = check_namespace
        self._json_body = json_body

    def add_routes(self, app: web.Application, prefix: str = "") -> None:
        app.router.add_get(prefix + "/system/secrets", self.list_secrets)
        app.router.add_post(prefix + "/system/secrets", self.create_secret)
        app.router.add_put(prefix + "/system/secrets", self.update_secret)
        app.router.add_delete(prefix + "/system/secrets", self.delete_secret)

    async def list_secrets(self, request: web.Request) -> web.Response:
        namespace = self._check_namespace(request.query.get("namespace"))
        return web.json_response([{"name": n, "namespace": namespace} for n in self.secrets.names()
                                  if n not in GATEWAY_CREDENTIALS])

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
        status = {"invalid": 400, "exists": 409, "missing": 404, "reserved": 403}.get(exc.kind, 400)
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
