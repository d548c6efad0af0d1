"""Redeploying a function through an OpenFaaS gateway: the same calls `faas-cli deploy` makes.

Owns: reading one deployment (`GET /system/function/<name>`), turning it into a
FunctionDeployment body, changing environment variables, and writing it back with
`PUT /system/functions` (a rolling update on the gateway), with basic auth from the secret files
`basic-auth-user` / `basic-auth-password`, retries on transient failures and one-line errors
naming the gateway.

Must not touch: movies, models or release policy. It knows functions and env vars only; the
release controller decides *what* to deploy. Network access uses `requests` only.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from movierec.store import read_secret

log = logging.getLogger("movierec.deploy")

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
DEFAULT_NAMESPACE = "openfaas-fn"

# FunctionStatus fields that a FunctionDeployment carries over unchanged (the rest, such as
# replicas, invocationCount and createdAt, describe the running deployment, not the desired one).
_DEPLOYMENT_FIELDS = (
    "image",
    "namespace",
    "envProcess",
    "envVars",
    "constraints",
    "secrets",
    "labels",
    "annotations",
    "limits",
    "requests",
    "readOnlyRootFilesystem",
)


class DeployError(Exception):
    """A deployment could not be read or changed; the message is one line naming the gateway."""


@dataclass
class GatewayDeployer:
    gateway_url: str = DEFAULT_GATEWAY
    user: str | None = None
    password: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    timeout_s: float = 10.0
    attempts: int = 4
    backoff_s: float = 0.5

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewayDeployer:
        env = os.environ if env is None else env
        return cls(
            gateway_url=(env.get("OPENFAAS_URL") or DEFAULT_GATEWAY).rstrip("/"),
            user=read_secret("basic-auth-user", dict(env)),
            password=read_secret("basic-auth-password", dict(env)),
            namespace=env.get("FUNCTION_NAMESPACE") or DEFAULT_NAMESPACE,
        )

    # -- the two gateway calls ---------------------------------------------------------------
    def get_function(self, name: str) -> dict[str, Any]:
        response = self._request("GET", f"/system/function/{name}", params={"namespace": self.namespace})
        if response.status_code == 404:
            raise DeployError(f"gateway {self.gateway_url}: function {name} is not deployed")
        self._raise_for_status(response, f"GET /system/function/{name}")
        try:
            status = response.json()
        except ValueError:
            raise DeployError(f"gateway {self.gateway_url}: /system/function/{name} did not return JSON") from None
        if not isinstance(status, dict) or "image" not in status:
            raise DeployError(f"gateway {self.gateway_url}: /system/function/{name} returned no FunctionStatus")
        return status

    def update_env(self, name: str, changes: Mapping[str, str]) -> dict[str, Any]:
        """Redeploy `name` with `changes` merged into its envVars; returns the body that was PUT."""
        body = deployment_from_status(name, self.get_function(name), self.namespace)
        body["envVars"] = {**body.get("envVars", {}), **{k: str(v) for k, v in changes.items()}}
        response = self._request("PUT", "/system/functions", json=body)
        self._raise_for_status(response, f"PUT /system/functions ({name})")
        log.info("redeployed %s with %s via %s", name, dict(changes), self.gateway_url)
        return body

    def env_of(self, name: str) -> dict[str, str]:
        return dict(self.get_function(name).get("envVars") or {})

    # -- plumbing ----------------------------------------------------------------------------
    def _auth(self) -> tuple[str, str] | None:
        if self.user is None or self.password is None:
            return None
        return (self.user, self.password)

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = self.gateway_url + path
        last_error = ""
        for attempt in range(1, self.attempts + 1):
            try:
                response = requests.request(method, url, auth=self._auth(), timeout=self.timeout_s, **kwargs)
            except requests.RequestException as e:
                last_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            else:
                # 5xx and 429 may pass (gateway restarting, provider busy); anything else is final.
                if response.status_code < 500 and response.status_code != 429:
                    return response
                last_error = f"HTTP {response.status_code} {response.text.strip()[:120]}"
            if attempt < self.attempts:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        raise DeployError(
            f"gateway {self.gateway_url} unreachable for {method} {path} after {self.attempts} attempts: "
            f"{last_error}"
        )

    def _raise_for_status(self, response: requests.Response, what: str) -> None:
        if response.status_code == 401:
            raise DeployError(
                f"gateway {self.gateway_url}: {what} refused (401): check the basic-auth-user/"
                "basic-auth-password secrets"
            )
        if response.status_code not in (200, 201, 202, 204):
            text = " ".join(response.text.split())[:160]
            raise DeployError(f"gateway {self.gateway_url}: {what} failed with HTTP {response.status_code}: {text}")


def deployment_from_status(name: str, status: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """The FunctionDeployment that re-creates a deployment as the gateway reports it."""
    body: dict[str, Any] = {"service": name}
    for key in _DEPLOYMENT_FIELDS:
        value = status.get(key)
        if value not in (None, "", {}, []):
            body[key] = value
    body.setdefault("namespace", namespace)
    body["envVars"] = dict(status.get("envVars") or {})
    return body
