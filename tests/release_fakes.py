"""The release tests' shared fakes: one of each, imported by every release test that needs it.

- `handler_event`: the event the function template hands `handle(event, context)` (method, path,
  headers, query, body), and `load_release_handler`: functions/release/handler.py imported afresh
  under its own module name (it reads SECRETS_DIR and STORE_URL at import).
- `GOOD`: a healthy variant's metrics; `FakePrometheus`: answers the release analysis' queries from
  `VariantMetrics` per function; `FakeDeployer`: a faithful gateway (what was deployed is what the
  replicas serve); `DriftingDeployer`: one whose deployments can change behind the controller
  (as `faas-cli deploy` would) and whose replicas may answer otherwise.
- `two_published_versions`: a local store whose registry holds two versions; `started_release`:
  the candidate (v2) released against stable (v1) on a `DriftingDeployer`.
The store, the registry and the controller are the real ones; only the gateway and Prometheus
are stood in for."""
from __future__ import annotations

import importlib.util
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

from movierec.registry import Registry
from movierec.release import ReleaseConfig, VariantMetrics, bootstrap_stable, start_release
from movierec.store import LocalDirectoryStore

REPO = Path(__file__).resolve().parent.parent
GOOD = VariantMetrics(requests=1000, errors=0, mean_latency_s=0.02, p99_latency_s=0.09, timed_calls=1000,
                      over_budget_calls=0)


def handler_event(method: str, path: str = "/", headers: dict | None = None, query: dict | None = None,
                  body: bytes = b"") -> SimpleNamespace:
    return SimpleNamespace(method=method, path=path, headers=headers or {}, query=query or {}, body=body)


def load_release_handler(module_name: str):
    """functions/release/handler.py as a fresh module (set its environment first)."""
    spec = importlib.util.spec_from_file_location(module_name, REPO / "functions" / "release" / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakePrometheus:
    def __init__(self, by_function: dict[str, VariantMetrics]):
        self.by_function = by_function
        self.queries: list[str] = []

    def query_value(self, promql, at=None):
        self.queries.append(promql)
        function = "recommend-canary" if "recommend-canary." in promql else "recommend"
        m = self.by_function[function]
        if promql.startswith("histogram_quantile"):
            return m.p99_latency_s
        if 'le="' in promql:
            return m.over_budget_calls
        if "_sum" in promql:
            return m.mean_latency_s
        if "_count" in promql:
            return m.timed_calls
        return m.errors if "5.." in promql else m.requests


class FakeDeployer:
    def __init__(self):
        self.env = {"recommend": {}, "recommend-canary": {}}
        self.calls = []
        self.fail = False

    def update_env(self, name, changes):
        if self.fail:
            from movierec.adapters.gateway import GatewayError

            raise GatewayError("gateway http://127.0.0.1:1 unreachable")
        self.calls.append((name, dict(changes)))
        self.env[name].update(changes)

    def env_of(self, name):  # a faithful deployment: read back what was deployed ...
        return dict(self.env[name])

    def served_version(self, name):  # ... and its replicas answer with it
        return self.env[name].get("MODEL_VERSION")


class DriftingDeployer:
    """Deployments as the gateway reports them: MODEL_VERSION per function, and what its replicas
    answer with (by default what the env names, an alias resolved by `resolve`). `deploy_behind`
    changes a deployment the way `faas-cli deploy -f stack.yml` does, without the controller."""

    def __init__(self, resolve):
        self.env: dict[str, dict[str, str]] = {"recommend": {}, "recommend-canary": {}}
        self.answers: dict[str, str | None] = {}  # forced probe answers (None: "no model")
        self.never_loads: set[str] = set()  # functions whose replicas never load a model
        self.resolve = resolve
        self.puts: list[tuple[str, str]] = []
        self.probes = 0

    def update_env(self, name, changes):
        self.puts.append((name, changes["MODEL_VERSION"]))
        self.env[name].update(changes)
        self.answers.pop(name, None)  # the redeploy replaced the replicas

    def deploy_behind(self, name, model_version):
        self.env[name] = {"MODEL_VERSION": model_version}
        self.answers.pop(name, None)

    def env_of(self, name):
        return dict(self.env[name])

    def served_version(self, name):
        self.probes += 1
        if name in self.never_loads:
            return None
        if name in self.answers:
            return self.answers[name]
        return self.resolve(self.env[name].get("MODEL_VERSION", ""))


def two_published_versions(tmp_path, first_at: datetime):
    """A local store whose registry holds two versions, published a second apart from `first_at`."""
    store = LocalDirectoryStore(tmp_path / "store")
    registry = Registry(store)
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    versions = []
    for i in range(2):
        (model_dir / "model.npz").write_bytes(f"artifact {i}".encode())
        versions.append(registry.publish(model_dir, now=first_at + timedelta(seconds=i)).version)
    return store, registry, versions


def started_release(tmp_path, config: ReleaseConfig, at: datetime):
    """(store, registry, deployer, v1, v2): stable v1 bootstrapped and a release of v2 started at
    `at` on a `DriftingDeployer` whose aliases resolve through the registry."""
    store, registry, (v1, v2) = two_published_versions(tmp_path, at)
    deployer = DriftingDeployer(lambda spec: registry.resolve(spec) if spec else None)
    bootstrap_stable(config, store, deployer, v1, now=at)
    start_release(config, store, deployer, v2, now=at)
    return store, registry, deployer, v1, v2
