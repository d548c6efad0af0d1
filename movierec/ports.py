"""The domain's ports: what the core needs from services, as protocols it can be handed.

Owns the protocols (typing.Protocol, checked structurally, nothing to inherit):
- `MetricsSource`: one instant PromQL value (the release analysis reads the gateway's metrics);
- `Deployer`: change a deployed function's environment (MODEL_VERSION), a rolling update;
- `DeploymentReader`: read a deployed function's environment (the release step reads each
  variant's MODEL_VERSION with it; the dashboard figures fall back to the release state without it);
- `ServingProbe`: which model version one replica of a function answers with right now (a cheap
  health probe through the gateway), None when it names none;
- `ReleaseDeployer`: the three above together, what the release controller is handed;
- `Notifier`: send one decision notification, answering the outcome per channel.

The adapters (`movierec.adapters`) implement them; handlers and CLIs pass them in; tests pass in-process fakes.

Must not touch: any service client or HTTP (this module imports nothing but typing).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class MetricsSource(Protocol):
    def query_value(self, promql: str, at: float | None = None) -> float | None: ...


class Deployer(Protocol):
    def update_env(self, name: str, changes: Mapping[str, str]) -> Any: ...


class DeploymentReader(Protocol):
    def env_of(self, name: str) -> Mapping[str, str]: ...


class ServingProbe(Protocol):
    def served_version(self, name: str) -> str | None: ...


class ReleaseDeployer(Deployer, DeploymentReader, ServingProbe, Protocol):
    """What the release controller is handed: deploy, read back, and probe."""


class Notifier(Protocol):
    def send(self, subject: str, payload: Mapping[str, Any]) -> dict[str, str]: ...
