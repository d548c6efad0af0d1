"""What a deployment says about a function, and the errors of deploying one.

Owns: `FunctionConfig` (the FunctionDeployment of the gateway API, or a stack.yml entry), reading
its settings (`com.openfaas.scale.min`, `exec_timeout`/`write_timeout` as Go-style durations via
`parse_duration`), and the deploy errors (`DeployError`, `MissingSecretError`, `FunctionNotFound`)
that the supervisor raises and the gateway maps to HTTP.
Must not touch: processes, files, HTTP; it only parses and validates values.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from localfaas.stackfile import DEFAULT_NAMESPACE, FunctionSpec

SCALE_MIN_LABEL = "com.openfaas.scale.min"
DEFAULT_EXEC_TIMEOUT = 30.0  # of-watchdog's default when a function sets no timeout


class DeployError(RuntimeError):
    """A deploy, update or scale that could not be carried out; the message says why."""


class MissingSecretError(DeployError):
    pass


class FunctionNotFound(KeyError):
    def __str__(self) -> str:
        return f"function {self.args[0]} not found"


def parse_duration(text: str) -> float:
    """Go-style durations as of-watchdog reads them: "10s", "1m30s", "500ms"; a bare number is seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r} (use e.g. 30s, 2m, 500ms)")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


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

    def min_replicas(self) -> int:
        raw = self.labels.get(SCALE_MIN_LABEL, "1")
        try:
            return max(0, int(raw))
        except ValueError:
            raise DeployError(f"function {self.name}: label {SCALE_MIN_LABEL}={raw!r} is not a number") from None

    def exec_timeout(self) -> float:
        for key in ("exec_timeout", "write_timeout"):
            if self.env_vars.get(key):
                try:
                    return parse_duration(self.env_vars[key])
                except ValueError as exc:
                    raise DeployError(f"function {self.name}: {key}: {exc}") from None
        return DEFAULT_EXEC_TIMEOUT
