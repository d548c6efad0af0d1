"""What was deployed: one record per function in the state folder, restored when localfaas restarts.

`<state>/deployments/<name>.json`, rewritten atomically (a reader sees the old record or the new
one) on every deploy, update, scale and delete:

    {"name": "fn", "namespace": "openfaas-fn",
     "deployment": {<the FunctionDeployment as last deployed: service, image, envVars, labels,
                     annotations, secrets, limits, requests, ...>},
     "replicas": 2, "digest": "sha256:<hex>", "deleted": false,
     "source": "api" | "stack", "updatedAt": "2024-01-01T00:00:00Z"}

`deleted: true` is kept after a delete, so a restart does not bring back from the stack file a
function that was deleted through the API (`localfaas up --redeploy-stack` does). `replicas` is
the desired count (after any scale, 0 included); `digest` the image it runs.

Owns: the folder `<state>/deployments/`, the record format above, reading every record back
(`load`: unreadable records are skipped with a warning, never fatal).
Must not touch: processes, images, HTTP; what to do with a record is the runtime's choice.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localfaas.functionconfig import DeployError, FunctionConfig
from localfaas.replica import write_atomic

log = logging.getLogger("localfaas.records")


@dataclass(frozen=True)
class DeploymentRecord:
    config: FunctionConfig
    replicas: int
    digest: str
    deleted: bool = False
    source: str = "api"
    updated_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.config.name, "namespace": self.config.namespace,
                "deployment": self.config.to_deployment(), "replicas": self.replicas, "digest": self.digest,
                "deleted": self.deleted, "source": self.source, "updatedAt": self.updated_at}

    @classmethod
    def from_json(cls, data: Any) -> DeploymentRecord:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")  # noqa: TRY004 - one error type for a bad record
        replicas = data.get("replicas")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise ValueError(f"replicas {replicas!r} is not a whole number >= 0")
        try:
            config = FunctionConfig.from_deployment(data.get("deployment"))
        except DeployError as exc:
            raise ValueError(f"deployment: {exc}") from None
        return cls(config, replicas, str(data.get("digest") or ""), bool(data.get("deleted", False)),
                   str(data.get("source") or "api"), str(data.get("updatedAt") or ""))


class DeploymentRecords:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def save(self, config: FunctionConfig, replicas: int, digest: str, *, source: str = "api",
             deleted: bool = False) -> None:
        record = DeploymentRecord(config, replicas, digest, deleted, source,
                                  time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path(config.name), (json.dumps(record.to_json(), indent=1) + "\n").encode())
        except OSError as exc:  # the runtime keeps running; only a restart would forget this deploy
            log.error("function %s: cannot record its deployment in %s: %s", config.name, self.folder, exc)

    def load(self) -> dict[str, DeploymentRecord]:
        records: dict[str, DeploymentRecord] = {}
        if not self.folder.is_dir():
            return records
        for path in sorted(self.folder.glob("*.json")):
            try:
                record = DeploymentRecord.from_json(json.loads(path.read_text()))
            except (OSError, ValueError) as exc:
                log.warning("deployment record %s cannot be read (%s): ignored", path, exc)
                continue
            if record.config.name != path.stem:
                log.warning("deployment record %s names function %s: ignored", path, record.config.name)
                continue
            records[record.config.name] = record
        return records
