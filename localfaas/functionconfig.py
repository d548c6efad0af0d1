"""What a deployment says about a function, and the errors of deploying one.

Owns: `FunctionConfig` (the FunctionDeployment of the gateway API, or a stack.yml entry), reading
one from a FunctionDeployment JSON object (`from_deployment`, refusing a malformed one with
`InvalidDeployment`) and writing one back (`to_deployment`), its settings
(`com.openfaas.scale.min` / `.max` as the gateway reads them: a bad number means the default;
`exec_timeout`/`write_timeout` as Go-style durations via `parse_duration`), and the deploy errors
(`DeployError`, `InvalidDeployment`, `MissingSecretError`, `FunctionNotFound`) that the supervisor
raises and the gateway maps to HTTP.
Must not touch: processes, files, HTTP; it only parses and validates values.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from localfaas import validate
from localfaas.stackfile import DEFAULT_NAMESPACE, FunctionSpec

SCALE_MIN_LABEL = "com.openfaas.scale.min"
SCALE_MAX_LABEL = "com.openfaas.scale.max"
DEFAULT_MIN_REPLICAS = 1  # the gateway's defaults when a label is absent or not a number
DEFAULT_MAX_REPLICAS = 5
DEFAULT_EXEC_TIMEOUT = 30.0  # of-watchdog's default when a function sets no timeout


class DeployError(RuntimeError):
    """A deploy, update or scale that could not be carried out; the message says why."""


class InvalidDeployment(DeployError):
    """A FunctionDeployment body that cannot describe a function (answered 400)."""


class MissingSecretError(DeployError):
    pass


class FunctionNotFound(KeyError):
    def __str__(self) -> str:
        return f"function {self.args[0]} not found"


def parse_duration(text: str) -> float:
    """Go-style durations as of-watchdog reads them: "10s", "1m30s", "500ms"; a bare number is seconds.
    ASCII digits only (Go's parser takes no others; Python's float() would take '٣' as 3)."""
    text = text.strip()
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
        return float(text)
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r} (use e.g. 30s, 2m, 500ms)")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def check_function_name(name: object) -> str:
    """A deployment's `service`: required, then `localfaas.validate`'s function-name rule."""
    if not isinstance(name, str) or not name:
        raise InvalidDeployment("service is required: the function's name")
    try:
        return validate.function_name(name)
    except validate.ValidationError as exc:
        raise InvalidDeployment(str(exc)) from None


def _str_map(body: dict[str, Any], key: str) -> dict[str, str]:
    value = body.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidDeployment(f"{key} must be an object of strings")
    return dict(value)


def _str_list(body: dict[str, Any], key: str) -> tuple[str, ...]:
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidDeployment(f"{key} must be an array of strings")
    return tuple(value)


def _resources(body: dict[str, Any], key: str) -> dict[str, str]:
    value = body.get(key) or {}
    if not isinstance(value, dict):
        raise InvalidDeployment(f"{key} must be an object like {{\"memory\": \"128Mi\"}}")
    return {k: str(v) for k, v in value.items() if v not in (None, "")}


def _label_int(labels: dict[str, str], key: str, default: int, minimum: int) -> int:
    try:
        value = validate.whole_number(labels.get(key, ""))
    except ValueError:
        return default  # as the gateway reads scaling labels: not a number means the default
    return value if value >= minimum else default


@dataclass(frozen=True)
class FunctionConfig:
    """What a deployment says about a function (the FunctionDeployment of the gateway API)."""

    name: str
    image: str = ""
    namespace: str = DEFAULT_NAMESPACE
    env_process: str = ""
    env_vars: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    limits: dict[str, str] = field(default_factory=dict)
    requests: dict[str, str] = field(default_factory=dict)
    constraints: tuple[str, ...] = ()
    read_only_root_filesystem: bool = False

    @classmethod
    def from_spec(cls, spec: FunctionSpec) -> FunctionConfig:
        return cls(
            name=spec.name, image=spec.image, namespace=spec.namespace, env_process=spec.fprocess,
            env_vars=dict(spec.environment), labels=dict(spec.labels), annotations=dict(spec.annotations),
            secrets=tuple(spec.secrets), limits=dict(spec.limits), requests=dict(spec.requests),
            constraints=tuple(spec.constraints), read_only_root_filesystem=spec.readonly_root_filesystem,
        )

    @classmethod
    def from_deployment(cls, body: object) -> FunctionConfig:
        """A FunctionDeployment as faas-cli sends it, its names checked as the providers do
        (`localfaas.validate`: secret names, env names and values, the namespace); the namespace's
        existence and `envProcess` (which needs the image) are left for the caller to check."""
        if not isinstance(body, dict):
            raise InvalidDeployment("request body must be a JSON object")
        try:
            config = cls._from_body(body)  # its name checked there (check_function_name)
            validate.namespace(config.namespace)
            validate.secret_names(config.secrets)
            validate.environment(config.env_vars)
        except validate.ValidationError as exc:
            raise InvalidDeployment(str(exc)) from None
        return config

    @classmethod
    def _from_body(cls, body: dict[str, Any]) -> FunctionConfig:
        return cls(
            name=check_function_name(body.get("service")), image=str(body.get("image") or ""),
            namespace=str(body.get("namespace") or DEFAULT_NAMESPACE),
            env_process=str(body.get("envProcess") or ""), env_vars=_str_map(body, "envVars"),
            labels=_str_map(body, "labels"), annotations=_str_map(body, "annotations"),
            secrets=_str_list(body, "secrets"), limits=_resources(body, "limits"),
            requests=_resources(body, "requests"), constraints=_str_list(body, "constraints"),
            read_only_root_filesystem=bool(body.get("readOnlyRootFilesystem", False)),
        )

    def to_deployment(self) -> dict[str, Any]:
        """The FunctionDeployment that deploys this config again (what `faas-cli deploy` sends)."""
        body: dict[str, Any] = {
            "service": self.name, "image": self.image, "namespace": self.namespace,
            "envProcess": self.env_process, "envVars": dict(self.env_vars), "labels": dict(self.labels),
            "annotations": dict(self.annotations), "secrets": list(self.secrets),
            "constraints": list(self.constraints),
        }
        if self.limits:
            body["limits"] = dict(self.limits)
        if self.requests:
            body["requests"] = dict(self.requests)
        if self.read_only_root_filesystem:
            body["readOnlyRootFilesystem"] = True
        return body

    def min_replicas(self) -> int:
        """`com.openfaas.scale.min`: 0 (start none until the first call) or more; default 1."""
        return _label_int(self.labels, SCALE_MIN_LABEL, DEFAULT_MIN_REPLICAS, 0)

    def max_replicas(self) -> int:
        """`com.openfaas.scale.max`, the most replicas a scale request gets; default 5 (the gateway's)."""
        return max(self.min_replicas(), _label_int(self.labels, SCALE_MAX_LABEL, DEFAULT_MAX_REPLICAS, 1))

    def exec_timeout(self) -> float:
        for key in ("exec_timeout", "write_timeout"):
            if self.env_vars.get(key):
                try:
                    return parse_duration(self.env_vars[key])
                except ValueError as exc:
                    raise DeployError(f"function {self.name}: {key}: {exc}") from None
        return DEFAULT_EXEC_TIMEOUT
