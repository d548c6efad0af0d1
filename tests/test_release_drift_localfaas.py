"""The restart-and-drift trial of a drill release, against the real local gateway: the real
recommend functions on `python -m localfaas up`, a real Prometheus scraping the gateway's metrics
every second, steady traffic to both variants, and the release controller's steps in between.

A drill model that answers 100% errors is released to the canary, then, mid-release:
1. a `faas-cli deploy -f stack.yml`-shaped PUT /system/functions (the whole FunctionDeployment,
   MODEL_VERSION=stable) puts stable back on the canary, and traffic runs until the analysis
   window holds only stable's healthy answers: exactly where the old controller PROMOTED the drill
   (the test shows that decision on the same figures). The step sees the drift, re-applies the
   candidate, restarts the window and does not promote;
2. a release step holds the lease: the next step is refused at once (409) naming it; the holder is
   killed (SIGKILL, by PID) and its lease is free at once (its process is gone);
3. the local runtime is stopped and started again (it comes back with stack.yml's defaults unless
   it restores what was deployed): whatever it serves is checked again;
then the drill is rolled back on its own errors, never promoted. The trial's figures are printed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

import pytest
import requests

from bench.localstack import RecommendStack
from localfaas.stackfile import load_stack
from monitoring.render import MonitoringSettings, prometheus_argv, write_config
from movierec.adapters.gateway import GatewayClient
from movierec.adapters.prometheus import PrometheusClient
from movierec.drills import Drill, register_drill_version
from movierec.registry import Registry
from movierec.release import (
    PROMOTE,
    ROLLBACK,
    WAIT,
    LeaseHeld,
    ReleaseConfig,
    ReleaseStore,
    bootstrap_stable,
    decide,
    measure,
    read_lease,
    run_release_step,
    start_release,
)
from movierec.store import LocalDirectoryStore
from movierec.synthetic import SyntheticWorld
from movierec.training import SVDParams
from scripts._proc import free_port
from scripts.stack import stop_pid
from tests.fitting import train_model

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[1]
# A local window: 20 s of evidence and 30 canary requests; a step's lease lasts 4 s.
CONFIG = ReleaseConfig(window_s=20, min_requests=30, timeout_s=900, lease_ttl_s=4, scrape_interval_s=1.0)


class RestartableStack(RecommendStack):
    """RecommendStack whose runtime can be stopped and started again on the same port and state,
    and whose `serving` names whatever version answers (a drill's 500s carry X-Model-Version)."""

    def serving(self, name: str, user_id: int = 1) -> str | None:
        try:
            reply = requests.get(f"{self.url}/function/{name}/{user_id}", timeout=5)
        except requests.RequestException:
            return None
        return reply.headers.get("X-Model-Version")

    def restart_runtime(self) -> None:
        self.stop()  # SIGTERM by PID, replicas drained: `make down` style
        self._start()


class Load:
    """Steady calls to both variants through the gateway, as the simulator makes them; counts the
    answers per (function, status, version) while it runs."""

    def __init__(self, url: str, per_second: float = 12.0):
        self.url, self.pause = url, 1.0 / per_second
        self.answers: Counter[tuple[str, int, str]] = Counter()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        user = 0
        while not self.stop_event.is_set():
            user += 1
            for function in ("recommend", "recommend-canary"):
                try:
                    reply = requests.get(f"{self.url}/function/{function}/{user % 500}", timeout=5)
                    self.answers[(function, reply.status_code, reply.headers.get("X-Model-Version", ""))] += 1
                except requests.RequestException:
                    self.answers[(function, 0, "")] += 1
            self.stop_event.wait(self.pause)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    root = tmp_path_factory.mktemp("release-drift")
    store = LocalDirectoryStore(root / "store")
    registry = Registry(store)
    model = train_model(SyntheticWorld(n_users=300, n_movies=200, seed=5).sample_ratings(6000),
                        SVDParams(n_factors=8, n_epochs=5, random_state=1))
    registered = datetime.now(UTC)
    stable = registry.register_model(model, now=registered).version
    registry.set_alias("stable", stable)
    # The copy has the same artifact: a version named a minute later (names are sha + time).
    drill = register_drill_version(store, Drill(error_rate=1.0), now=registered + timedelta(minutes=1)).version
    with RestartableStack(root / "stack", store_dir=root / "store", stable=stable) as stack:
        prometheus, process = start_prometheus(root / "prometheus", stack.url)
        try:
            yield stack, store, prometheus, stable, drill
        finally:
            stop_pid(process.pid, 10.0)
            process.wait()


def start_prometheus(folder: Path, gateway_url: str) -> tuple[PrometheusClient, subprocess.Popen]:
    port = free_port()
    settings = dataclasses.replace(MonitoringSettings.local({
        "OPENFAAS_URL": gateway_url, "PROMETHEUS_URL": f"http://127.0.0.1:{port}",
        "PUSHGATEWAY_URL": f"http://127.0.0.1:{free_port()}"}), scrape_interval="1s")
    config = write_config(settings, folder / "prometheus.yml")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "prometheus.log", "wb") as log:
        process = subprocess.Popen(prometheus_argv(config, folder / "data", f"127.0.0.1:{port}"),
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    client = PrometheusClient(f"http://127.0.0.1:{port}", attempts=2, backoff_s=0.2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # not up yet
            if client.query_value('up{job="openfaas-gateway"}') == 1:
                return client, process
        time.sleep(0.5)
    stop_pid(process.pid, 5.0)
    raise AssertionError(f"prometheus did not scrape the gateway: {(folder / 'prometheus.log').read_text()[-2000:]}")


def faas_cli_deploy_body(stack_file: Path, name: str, store_dir: Path, environ: dict | None = None) -> dict:
    """The FunctionDeployment `faas-cli deploy -f stack.yml` PUTs for `name`, in the environment of
    an operator of the local stack (DEPLOY_TARGET=localfaas, as `make up` sets; `environ`, else this
    process's) who set STORE_URL but no *_MODEL_VERSION: stack.yml's `MODEL_VERSION: stable`."""
    env = {k: v for k, v in (os.environ if environ is None else environ).items() if not k.endswith("_MODEL_VERSION")}
    spec = load_stack(stack_file, {**env, "DEPLOY_TARGET": "localfaas", "STORE_URL": str(store_dir),
                                   "MODEL_PATH": ""}).functions[name]
    return {"service": name, "image": spec.image, "namespace": spec.namespace, "envProcess": spec.fprocess,
            "envVars": dict(spec.environment), "labels": dict(spec.labels), "annotations": dict(spec.annotations),
            "secrets": list(spec.secrets), "limits": dict(spec.limits), "requests": dict(spec.requests),
            "constraints": list(spec.constraints), "readOnlyRootFilesystem": spec.readonly_root_filesystem}


def wait_for(predicate, what: str, timeout_s: float, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


KILLED_STEP = """
import sys
from movierec.adapters.gateway import GatewayClient
from movierec.adapters.prometheus import PrometheusClient
from movierec.release import ReleaseConfig, run_release_step
from movierec.store import LocalDirectoryStore
store, prometheus, gateway, user, password = sys.argv[1:6]
# It runs right after a window restart: a scrape interval this short makes it query (and hang on)
# its silent Prometheus at once, instead of waiting for two intervals of evidence without asking.
config = ReleaseConfig(window_s=20, min_requests=30, lease_ttl_s=4, scrape_interval_s=0.001)
run_release_step(config, LocalDirectoryStore(store), PrometheusClient(prometheus, timeout_s=600, attempts=1),
                 GatewayClient(gateway, user, password), None)
"""


def test_a_drill_release_survives_a_redeploy_a_killed_step_and_a_runtime_restart_and_is_rolled_back(trial):
    stack, store, prometheus, stable, drill = trial
    deployer = GatewayClient(stack.url, *stack.auth, timeout_s=90)
    figures = Counter()
    bootstrap_stable(CONFIG, store, deployer, stable)
    release = start_release(CONFIG, store, deployer, drill, actor="drill")
    assert stack.serving("recommend-canary") == drill and stack.serving("recommend") == stable
    assert ReleaseStore(store).running().serving_since is not None  # verified as it started

    def step():
        figures["steps"] += 1
        result = run_release_step(CONFIG, store, prometheus, deployer, None)
        figures[f"step {result.action}"] += 1
        discarded = (result.release.analysis or {}).get("discarded") if result.release else None
        if discarded and discarded["decision"]["action"] == PROMOTE:
            figures["promotions prevented (measured, then drift seen)"] += 1
        assert result.action != PROMOTE, f"the drill was promoted: {result.reason}"
        return result

    with Load(stack.url) as load:
        # 1. `faas-cli deploy -f stack.yml` in the middle of the release.
        body = faas_cli_deploy_body(stack.workdir / "project" / "stack.yml", "recommend-canary", store.root)
        assert body["envVars"]["MODEL_VERSION"] == "stable"
        reply = requests.put(f"{stack.url}/system/functions", json=body, auth=stack.auth, timeout=120)
        assert reply.status_code in (200, 202), reply.text
        assert stack.serving("recommend-canary") == stable
        redeployed = time.time()
        # Until the window holds only stable's answers on the canary, with the minimum sample.
        time.sleep(CONFIG.window_s + 3)
        at = datetime.now(UTC)
        range_s = min((at - datetime.fromisoformat(release.started)).total_seconds(), CONFIG.window_s)
        metrics, _ = measure(prometheus, CONFIG, range_s, at)
        old = decide(metrics["canary"], metrics["stable"], CONFIG, (at - datetime.fromisoformat(release.started))
                     .total_seconds())
        assert old.action == PROMOTE, (old, metrics)  # the old controller's decision on these figures
        figures["promotions prevented (the old controller's decision)"] += 1
        assert metrics["canary"].requests >= CONFIG.min_requests and metrics["canary"].errors == 0

        result = step()
        assert result.action == WAIT and "drift seen after the measurement" in result.reason
        assert result.release.analysis["discarded"]["decision"]["action"] == PROMOTE  # measured, not counted
        events = [e["event"] for e in result.release.events]
        assert events[-4:] == ["drift_seen", "reapplied", "window_restarted", "serving_verified"]
        drift = [e for e in result.release.events if e["event"] == "drift_seen"][-1]
        assert (drift["function"], drift["deployed"], drift["resolved"], drift["served"]) == \
            ("recommend-canary", "stable", stable, [stable])
        assert datetime.fromisoformat(result.release.serving_since).timestamp() > redeployed + CONFIG.window_s
        assert stack.serving("recommend-canary") == drill  # re-applied: the drill answers again
        assert deployer.env_of("recommend-canary")["MODEL_VERSION"] == drill

        # 2. A release step killed while it holds the lease (its Prometheus never answers): while
        # it runs, the next step is refused at once (409) naming it; once it is killed, its lease is
        # free at once (a holder that died on this machine), not after RELEASE_LEASE_TTL.
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        killed = subprocess.Popen(
            [sys.executable, "-c", KILLED_STEP, str(store.root), f"http://127.0.0.1:{silent.getsockname()[1]}",
             stack.url, *stack.auth], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            lease = wait_for(lambda: (held := read_lease(store)) and f"pid {killed.pid}" in held["holder"] and held,
                             "the step to take the lease", 60, 0.1)
            with pytest.raises(LeaseHeld) as refused:
                run_release_step(CONFIG, store, prometheus, deployer, None)
            assert f"pid {killed.pid}" in refused.value.holder and refused.value.expires == lease["expires"]
            figures["steps refused (409, lease held)"] += 1
            killed.kill()
            killed.wait(timeout=10)
        finally:
            silent.close()
        figures["release steps killed"] += 1
        assert read_lease(store)["held"] is False  # its holder is gone: free before its expiry

        # 3. The local runtime stopped and started again, mid-release: it restores what was
        # deployed (the drill: its errors since the re-apply roll it back now), or comes back with
        # stack.yml's defaults (drift: re-applied, the window starts again).
        stack.restart_runtime()
        figures["runtime restarts"] += 1
        result = step()
        assert result.action in (WAIT, ROLLBACK), result.reason
        if result.action == WAIT:
            assert stack.serving("recommend-canary") == drill  # whatever came back, the drill serves again
            # Then the drill's own errors in the new window roll it back.
            result = wait_for(lambda: (r := step()).action != WAIT and r, "the drill to be decided", 120, 2.0)
    assert result.action == ROLLBACK and "canary success" in result.reason, result.reason
    final = ReleaseStore(store).history()[0]
    assert final.state == "rolled_back" and final.candidate == drill
    assert Registry(store).alias_version("stable") == stable
    assert deployer.env_of("recommend")["MODEL_VERSION"] == stable
    wait_for(lambda: stack.serving("recommend-canary") == stable, "the canary back on stable", 60)
    kinds = Counter(e["event"] for e in final.events)
    figures.update({f"events: {k}": n for k, n in kinds.items()})
    answers = Counter()
    for (function, code, version), n in load.answers.items():
        who = "drill" if version == drill else "stable" if version == stable else version or "-"
        answers[f"{function} {code} from {who}"] += n
    print("\nrestart-and-drift trial:", json.dumps({**figures, "answers": dict(answers)}, indent=2,
                                                       sort_keys=True))
    assert kinds["drift_seen"] >= 1 and kinds["reapplied"] >= 1 and kinds["window_restarted"] >= 1
    assert answers["recommend 200 from stable"] > 0 and answers["recommend-canary 500 from drill"] > 0
