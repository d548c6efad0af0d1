"""The operator command `python -m scripts.release` against the real functions on the real local
runtime: `recommend`, `recommend-canary` and `release` (the project's handlers and core, built the
way faas-cli shrinkwraps them), `python -m localfaas up` on a free port, a local object store with a
small stable model. No Prometheus on purpose: a step that needs it must say so in one line.

The drill end to end: `drill-bad-model --error-rate 1` makes the canary serve a copy of the stable
model that answers 500 with a one-line reason; `rollback` (with the admin token) puts it back.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from movierec.registry import Registry
from movierec.store import LocalDirectoryStore
from movierec.synthetic import SyntheticWorld
from movierec.training import SVDParams
from tests.fitting import train_model
from tests.localfaas_harness import LocalFaas, free_port

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[1]

STACK = """
version: 1.0
provider:
  name: openfaas
  gateway: ${OPENFAAS_URL:-http://127.0.0.1:8080}
configuration:
  copy:
    - ./movierec
functions:
  recommend: &recommend
    lang: python3-http-debian
    handler: ./functions/recommend
    image: movierec/recommend:latest
    environment: &env
      MODEL_VERSION: stable
      STORE_URL: ${STORE_URL}
      MODEL_CACHE_DIR: ${MODEL_CACHE_DIR}
      OPENBLAS_NUM_THREADS: "1"
    labels:
      com.openfaas.scale.min: "1"
  recommend-canary:
    <<: *recommend
  release:
    lang: python3-http-debian
    handler: ./functions/release
    image: movierec/release:latest
    environment:
      STORE_URL: ${STORE_URL}
      OPENFAAS_URL: ${OPENFAAS_URL}
      PROMETHEUS_URL: ${PROMETHEUS_URL}
      PUSHGATEWAY_URL: ""
      RELEASE_SCRAPE_INTERVAL: "1ms"  # a step asks Prometheus at once, not two intervals into the window
    secrets:
      - basic-auth-user
      - basic-auth-password
      - release-admin-token
"""


class SelfAwareLocalFaas(LocalFaas):
    """The runtime with OPENFAAS_URL naming itself, so the release function redeploys through it."""

    def _spawn(self, root, environment, log):
        return super()._spawn(root, {**environment, "OPENFAAS_URL": self.url}, log)


class ReleaseProject:
    def __init__(self, root: Path):
        for folder in ("template", "movierec"):
            shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("recommend", "release"):
            shutil.copytree(REPO / "functions" / name, root / "functions" / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        (root / "stack.yml").write_text(STACK)
        self.store_dir = root / "store"
        registry = Registry(LocalDirectoryStore(self.store_dir))
        world = SyntheticWorld(n_users=200, n_movies=120, seed=4)
        model = train_model(world.sample_ratings(5000), SVDParams(n_factors=4, n_epochs=5, random_state=0))
        self.stable = registry.register_model(model, now=datetime(2026, 11, 28, 1, 0, tzinfo=UTC)).version
        registry.set_alias("stable", self.stable)
        secrets = root / "var" / "secrets"
        secrets.mkdir(parents=True)
        (secrets / "release-admin-token").write_text("drill-token-for-tests\n")
        self.env = {"STORE_URL": str(self.store_dir), "MODEL_CACHE_DIR": str(root / "model-cache"),
                    "PROMETHEUS_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
                    "LOCALFAAS_READY_TIMEOUT": "60"}
        self.faas = SelfAwareLocalFaas(root, self.env)
        self.env["OPENFAAS_URL"] = self.faas.url
        self.state = self.faas.state
        try:
            self.faas.wait_until(lambda: requests.get(self.faas.url + "/healthz", timeout=1).ok, "the gateway", 60)
            for name in ("recommend", "recommend-canary", "release"):
                self.faas.wait_until(lambda n=name: self.faas.functions()[n]["availableReplicas"] >= 1,
                                     f"{name} ready", 90)
        except BaseException:
            self.faas.stop()
            raise

    def cli(self, *argv: str, secrets_dir: Path | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.env}
        env.pop("SECRETS_DIR", None)
        args = [sys.executable, "-m", "scripts.release", "--state-dir", str(self.state), *argv]
        if secrets_dir is not None:
            env["SECRETS_DIR"] = str(secrets_dir)
            args = [sys.executable, "-m", "scripts.release", *argv]
            env["STACK_STATE_DIR"] = str(self.state)
        return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)

    def canary_answer(self, user_id: int = 5) -> requests.Response:
        return requests.get(f"{self.faas.url}/function/recommend-canary/{user_id}", timeout=10)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    running = ReleaseProject(tmp_path_factory.mktemp("release-cli"))
    try:
        yield running
    finally:
        running.faas.stop()


def output_json(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_status_reports_the_stable_alias_and_no_running_release(project):
    status = output_json(project.cli("status", "--json"))
    assert status["running"] is False and status["aliases"]["stable"] == project.stable
    screen = project.cli("status")
    assert screen.returncode == 0, screen.stderr
    assert screen.stdout.splitlines()[0] == "no release yet"
    assert f"aliases   stable {project.stable}, candidate -" in screen.stdout


def test_a_manual_action_with_nothing_running_fails_in_one_line_naming_the_conflict(project):
    done = project.cli("promote", "--reason", "nothing to promote")
    assert done.returncode == 1
    assert done.stderr.strip() == "error: release/promote: HTTP 409: InvalidTransition: no release is running: " \
                                  "nothing to promote"


def test_drill_bad_model_releases_a_failing_copy_of_stable_to_the_canary_and_rollback_restores_it(project, tmp_path):
    assert project.canary_answer().headers["X-Model-Version"] == project.stable
    drill = output_json(project.cli("drill-bad-model", "--error-rate", "1"))
    assert drill["copied_from"] == project.stable and drill["drill"] == {"delay_ms": 0.0, "error_rate": 1.0}

    # The PUT returned once the new canary replica was ready: it serves the drill model, failing on purpose.
    answer = project.canary_answer()
    assert answer.status_code == 500 and answer.headers["X-Model-Version"] == drill["drill_version"]
    assert answer.text == f"release drill: model {drill['drill_version']} fails 1 of requests on purpose"
    assert requests.get(f"{project.faas.url}/function/recommend/5", timeout=10).status_code == 200

    status = output_json(project.cli("status", "--json"))
    assert status["running"] and status["current"]["candidate"] == drill["drill_version"]
    assert status["current"]["actor"] == "drill" and status["aliases"]["candidate"] == drill["drill_version"]
    # Verified serving the drill once the redeploy returned: the analysis window starts there.
    assert status["current"]["serving_since"] >= status["current"]["started"]
    screen = project.cli("status").stdout
    assert f"versions  candidate {drill['drill_version']} on the canary, stable {project.stable}" in screen
    assert "serving   verified since " in screen and "serving_verified" in screen

    # A second drill while this canary runs: refused at once, before anything is registered.
    before = Registry(LocalDirectoryStore(project.store_dir)).versions()
    again = project.cli("drill-bad-model", "--error-rate", "1")
    assert again.returncode == 1 and again.stderr.count("\n") == 1
    assert (f"error: release {status['current']['id']} of {drill['drill_version']} is running" in again.stderr
            and "abort the running release with `python -m scripts.release abort` or wait until " in again.stderr)
    assert Registry(LocalDirectoryStore(project.store_dir)).versions() == before

    # A step needs Prometheus, which this stack does not run: one line naming it, the release untouched.
    step = project.cli("step")
    assert step.returncode == 1 and step.stderr.count("\n") == 1
    assert "HTTP 503: PrometheusError" in step.stderr and project.env["PROMETHEUS_URL"] in step.stderr

    # The changing actions need the admin token: a wrong one is refused.
    wrong = tmp_path / "wrong-secrets"
    wrong.mkdir()
    (wrong / "release-admin-token").write_text("not-the-token")
    refused = project.cli("rollback", secrets_dir=wrong)
    assert refused.returncode == 1 and "refused (401)" in refused.stderr

    rolled = output_json(project.cli("rollback", "--reason", "drill over"))
    assert rolled["release"]["state"] == "rolled_back" and rolled["release"]["reason"] == "drill over"
    back = project.canary_answer()
    assert back.status_code == 200 and back.headers["X-Model-Version"] == project.stable
    assert output_json(project.cli("status", "--json"))["history"][0]["state"] == "rolled_back"


def test_drill_with_out_of_range_values_is_refused_before_anything_is_registered(project):
    before = Registry(LocalDirectoryStore(project.store_dir)).versions()
    done = project.cli("drill-bad-model", "--delay-ms", "0", "--error-rate", "0")
    assert done.returncode == 1
    assert done.stderr.strip() == "error: DrillError: a drill needs delay_ms > 0 or error_rate > 0 or a ranking " \
                                  "(otherwise the model is not bad)"
    assert Registry(LocalDirectoryStore(project.store_dir)).versions() == before


def test_an_unreachable_gateway_is_named_in_one_line(project):
    env_backup = project.env["OPENFAAS_URL"]
    project.env["OPENFAAS_URL"] = f"http://127.0.0.1:{free_port()}"
    try:
        done = project.cli("status")
    finally:
        project.env["OPENFAAS_URL"] = env_backup
    assert done.returncode == 1
    assert done.stderr.startswith("error: gateway http://127.0.0.1:") and "(after 3 attempts)" in done.stderr
