"""The OpenFaaS gateway API client: the one used by the release controller, the train function,
the operator CLI (`scripts/release.py`), the demo and `make status`.

Owns the calls `faas-cli` and an operator make, as the real gateway (and localfaas) answer them:
- `list_functions()` (`GET /system/functions`), `get_function(name)` (`GET /system/function/<name>`),
  `replicas(name)`, `env_of(name)` and `info()` (`GET /system/info`);
- `update_env(name, changes)`: read the deployment, merge env vars, `PUT /system/functions` (a
  rolling update on the gateway), the same body `faas-cli deploy` sends;
- `invoke(...)` / `call(...)`: a request to `/function/<name><path>` (no gateway credentials are
  sent there: functions see the caller's headers);
- `served_version(name)`: which model version the replica that answers serves, from one
  `GET /function/<name>/health` answered 200 (its `X-Model-Version` header when it sends one, else
  the recommend handler's "loaded model <version>, sha256 ok"); None for any other answer ("no
  model" 503, not deployed, another kind of function). A version named is always a 200, which the
  gateway counts as a call of the function (the release analysis subtracts its own probes). The gateway's own metrics carry no model
  label, so this probe is how the release controller sees what a variant answers with.
`/system/*` calls carry basic auth from the secret files `basic-auth-user` / `basic-auth-password`.
Connection errors, 5xx and 429 are retried through the one retry helper; what is left is one line
naming the gateway: `GatewayError` (Unavailable, 503), `FunctionNotFoundError` (NotFound, 404) for
a function that is not deployed, `FunctionError` for a function that answered with an error status.
Configuration: OPENFAAS_URL, FUNCTION_NAMESPACE (movierec.settings).

Must not touch: movies, models or release policy. It knows functions and env vars only; the
release controller decides *what* to deploy.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from movierec.adapters.retry import retry
from movierec.errors import MovierecError, NotFound, Unavailable
from movierec.settings import Settings
from movierec.store import read_secret

log = logging.getLogger("movierec.gateway")

_LOADED = re.compile(r"loaded model ([^\s,]+), sha256 ok")
PROBE_TIMEOUT_S = 5.0

_DEFAULTS = Settings({})
DEFAULT_GATEWAY = _DEFAULTS.get("OPENFAAS_URL")
DEFAULT_NAMESPACE = _DEFAULTS.get("FUNCTION_NAMESPACE")

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


class GatewayError(Unavailable):
    """The gateway could not be reached, or refused or failed a call; one line naming it."""


class FunctionNotFoundError(NotFound):
    """The gateway answered 404 for a function: it is not deployed (in that namespace)."""


class FunctionError(MovierecError):
    """A function answered a call with an error status; `status` is that status, the message
    `<function><path>: HTTP <status>: <its one-line error>`."""

    def __init__(self, function: str, path: str, status: int, detail: str):
        super().__init__(f"{function}{path}: HTTP {status}: {detail[:300]}")
        self.function, self.path, self.status, self.detail = function, path, status, detail


@dataclass
class GatewayClient:
    gateway_url: str = DEFAULT_GATEWAY
    user: str | None = None
    password: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    timeout_s: float = 10.0
    attempts: int = 4
    backoff_s: float = 0.5

    def __post_init__(self) -> None:
        self.gateway_url = self.gateway_url.rstrip("/")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **options: Any) -> GatewayClient:
        """OPENFAAS_URL and FUNCTION_NAMESPACE from the settings, credentials from the secret
        files; `options` set the other fields (timeout_s, attempts, backoff_s)."""
        settings = Settings(env)
        return cls(
            gateway_url=settings.get("OPENFAAS_URL"),
            user=read_secret("basic-auth-user", settings.env),
            password=read_secret("basic-auth-password", settings.env),
            namespace=settings.get("FUNCTION_NAMESPACE"),
            **options,
        )

    # -- /system API -------------------------------------------------------------------------
    def list_functions(self) -> list[dict[str, Any]]:
        """Every function's FunctionStatus in the namespace."""
        what = "GET /system/functions"
        response = self._system("GET", "/system/functions", what, params={"namespace": self.namespace})
        functions = self._json(response, what)
        if not isinstance(functions, list) or not all(isinstance(f, dict) and "name" in f for f in functions):
            raise GatewayError(f"gateway {self.gateway_url}: {what} returned no list of FunctionStatus")
        return functions

    def get_function(self, name: str) -> dict[str, Any]:
        what = f"GET /system/function/{name}"
        response = self._system("GET", f"/system/function/{name}", what, function=name,
                                params={"namespace": self.namespace})
        status = self._json(response, what)
        if not isinstance(status, dict) or "image" not in status:
            raise GatewayError(f"gateway {self.gateway_url}: /system/function/{name} returned no FunctionStatus")
        return status

    def replicas(self, name: str) -> tuple[int, int]:
        """(replicas wanted, replicas available) of a function."""
        status = self.get_function(name)
        return int(status.get("replicas") or 0), int(status.get("availableReplicas") or 0)

    def env_of(self, name: str) -> dict[str, str]:
        return dict(self.get_function(name).get("envVars") or {})

    def update_env(self, name: str, changes: Mapping[str, str]) -> dict[str, Any]:
        """Redeploy `name` with `changes` merged into its envVars; returns the body that was PUT."""
        body = deployment_from_status(name, self.get_function(name), self.namespace)
        body["envVars"] = {**body.get("envVars", {}), **{k: str(v) for k, v in changes.items()}}
        self._system("PUT", "/system/functions", f"PUT /system/functions ({name})", function=name, json=body)
        log.info("redeployed %s with %s via %s", name, dict(changes), self.gateway_url)
        return body

    def info(self) -> dict[str, Any]:
        """The gateway's /system/info: provider, orchestration, version."""
        info = self._json(self._system("GET", "/system/info", "GET /system/info"), "GET /system/info")
        if not isinstance(info, dict):
            raise GatewayError(f"gateway {self.gateway_url}: /system/info returned no object")
        return info

    # -- function calls ----------------------------------------------------------------------
    def invoke(self, method: str, function: str, path: str = "", *, timeout_s: float | None = None,
               **kwargs: Any) -> requests.Response:
        """The function's answer to `method /function/<function><path>`, whatever its status.
        Only connection failures are retried (the call may not be idempotent); no answer within
        `timeout_s` is a GatewayError at once (the function may still be working)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        url = f"{self.gateway_url}/function/{function}{path}"
        try:
            return retry(lambda: requests.request(method, url, timeout=timeout, **kwargs),
                         what=f"gateway {self.gateway_url}: {method} /function/{function}{path}",
                         attempts=self.attempts, backoff_s=self.backoff_s,
                         retry_on=(requests.ConnectionError,), error=GatewayError)
        except requests.Timeout:
            raise GatewayError(f"gateway {self.gateway_url}: {method} /function/{function}{path}: "
                               f"no answer within {timeout:g}s") from None
        except requests.RequestException as e:
            raise GatewayError(f"gateway {self.gateway_url}: {method} /function/{function}{path}: "
                               f"{type(e).__name__}") from None

    def call(self, method: str, function: str, path: str = "", *, timeout_s: float | None = None,
             **kwargs: Any) -> Any:
        """`invoke`, then the answer's body (JSON, else text) when its status is below 400;
        FunctionError with the function's one-line error otherwise."""
        response = self.invoke(method, function, path, timeout_s=timeout_s, **kwargs)
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text.strip()
        if response.status_code >= 400:
            detail = body.get("error", body) if isinstance(body, dict) else body
            raise FunctionError(function, path, response.status_code, str(detail))
        return body

    def served_version(self, name: str) -> str | None:
        """The model version one replica of `name` answers with (None: it names none); a
        GatewayError when the gateway cannot be reached or does not answer in time."""
        response = self.invoke("GET", name, "/health", timeout_s=min(self.timeout_s, PROBE_TIMEOUT_S))
        if response.status_code != 200:
            return None
        header = (response.headers.get("X-Model-Version") or "").strip()
        found = _LOADED.search(response.text[:500])
        return header or (found.group(1) if found else None)

    # -- plumbing ----------------------------------------------------------------------------
    def _auth(self) -> tuple[str, str] | None:
        if self.user is None or self.password is None:
            return None
        return (self.user, self.password)

    def _system(self, method: str, path: str, what: str, function: str | None = None,
                **kwargs: Any) -> requests.Response:
        """A /system call with basic auth, retried on connection errors, 5xx and 429 (gateway
        restarting, provider busy); any other answer but 2xx is final (a 404 about `function`:
        FunctionNotFoundError)."""
        def send() -> requests.Response:
            response = requests.request(method, self.gateway_url + path, auth=self._auth(),
                                        timeout=self.timeout_s, **kwargs)
            if response.status_code >= 500 or response.status_code == 429:
                raise GatewayError(f"HTTP {response.status_code} {' '.join(response.text.split())[:120]}")
            return response

        response = retry(send, what=f"gateway {self.gateway_url}: {what}", attempts=self.attempts,
                         backoff_s=self.backoff_s, retry_on=(requests.RequestException,), error=GatewayError)
        if response.status_code == 404 and function is not None:
            raise FunctionNotFoundError(
                f"gateway {self.gateway_url}: function {function} is not deployed (namespace {self.namespace})")
        if response.status_code == 401:
            raise GatewayError(
                f"gateway {self.gateway_url}: {what} refused (401): check the basic-auth-user/"
                "basic-auth-password secrets"
            )
        if response.status_code not in (200, 201, 202, 204):
            text = " ".join(response.text.split())[:160]
            raise GatewayError(f"gateway {self.gateway_url}: {what} failed with HTTP {response.status_code}: {text}")
        return response

    def _json(self, response: requests.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise GatewayError(f"gateway {self.gateway_url}: {what} did not return JSON") from None


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


