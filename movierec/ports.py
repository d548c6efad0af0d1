"""The domain's ports: what the core needs from services, as protocols it can be handed.

Owns the protocols (typing.Protocol, checked structurally, nothing to inherit):
- `MetricsSource`: one instant PromQL value (the release analysis reads the gateway's metrics);
- `Deployer`: change a deployed function's environment (MODEL_VERSION), a rolling update;
- `DeploymentReader`: read a deployed function's environment (optional: the release's dashboard
  figures use it when the deployer offers it, and fall back to the release state otherwise);
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


class Notifier(Protocol):
    def send(self, subject: str, payload: Mapping[str, Any]) -> dict[str, str]: ...
