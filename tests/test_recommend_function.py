"""The recommend function, served from its build context over real HTTP.

The build context is made from the project's stack.yml the way `faas-cli build --shrinkwrap`
makes it (template + handler + the core copied by `configuration.copy`), and its server runs in
a subprocess with nothing from the repository on its import path: what is tested here is what
would run in the container.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from localfaas.build import build_function, process_command
from localfaas.stackfile import load_stack
from movierec.artifact import load_model, save_model
from movierec.synthetic import SyntheticWorld
from movierec.training import SVDParams
from scripts._proc import free_port
from tests.fitting import train_model

REPO = Path(__file__).resolve().parent.parent
VERSION = "v-test-1"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    world = SyntheticWorld(n_users=300, n_movies=200, seed=7)
    table = world.sample_ratings(12_000)
    model = train_model(table, SVDParams(n_factors=10, n_epochs=10, random_state=1))
    directory = tmp_path_factory.mktemp("model")
    save_model(model, directory, extra_manifest={"version": VERSION})
    return directory


@pytest.fixture(scope="module")
def build_context(tmp_path_factory) -> Path:
    stack = load_stack(REPO / "stack.yml", env={})
    ctx = build_function(stack, stack.functions["recommend"], tmp_path_factory.mktemp("build"))
    return ctx


class FunctionProcess:
    def __init__(self, ctx, env: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        child_env = {"PATH": os.environ.get("PATH", ""), "PORT": str(self.port), "HOME": str(log.parent),
                     "MODEL_RETRY_SECONDS": "3600", **env}
        with open(log, "wb") as out:
            self.process = subprocess.Popen(process_command(ctx.fprocess), cwd=ctx.path, env=child_env,
                                            stdout=out, stderr=subprocess.STDOUT)
        self.log = log
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"function exited: {log.read_text()[-2000:]}")
            try:
                requests.get(f"{self.url}/_/health", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise AssertionError(f"function did not start: {log.read_text()[-2000:]}")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def served(build_context, model_dir, tmp_path_factory):
    fn = FunctionProcess(build_context, {"MODEL_PATH": str(model_dir)},
                         tmp_path_factory.mktemp("logs") / "recommend.log")
    yield fn
    fn.stop()


def test_build_context_has_template_handler_and_copied_core(build_context):
    root = build_context.path
    for name in ("Dockerfile", "index.py", "template.yml", "requirements.txt",
                 "function/handler.py", "function/requirements.txt",
                 "function/movierec/model.py", "function/movierec/events.py"):
        assert (root / name).is_file(), name
    assert build_context.fprocess == "python index.py"


def test_known_user_gets_up_to_20_unseen_ids_on_one_plain_line(served, model_dir):
    model = load_model(model_dir)
    user_id = int(model.user_ids[3])
    reply = requests.get(f"{served.url}/{user_id}", timeout=5)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert reply.headers["X-Model-Version"] == VERSION
    body = reply.text
    assert "\n" not in body and " " not in body
    ids = body.split(",")
    assert 0 < len(ids) <= 20 and len(set(ids)) == len(ids)
    assert ids == model.recommend(user_id, 20)
    seen = set(model.movie_ids[model.seen_of_row(3)])
    assert seen and not seen & set(ids)


def test_unknown_user_gets_the_cold_start_list(served, model_dir):
    model = load_model(model_dir)
    unknown = int(np.max(model.user_ids)) + 12345
    reply = requests.get(f"{served.url}/{unknown}", timeout=5)
    assert reply.status_code == 200
    assert reply.text.split(",") == model.cold_start_ids(20)


@pytest.mark.parametrize("bad", ["abc", "-4", "12a", "1.5", "99999999999999999999"])
def test_malformed_user_id_is_a_400_with_a_one_line_reason(served, bad):
    reply = requests.get(f"{served.url}/{bad}", timeout=5)
    assert reply.status_code == 400
    assert "invalid user id" in reply.text and "\n" not in reply.text.strip()


def test_other_paths_are_404_and_other_methods_405(served):
    assert requests.get(f"{served.url}/1/2", timeout=5).status_code == 404
    assert requests.get(f"{served.url}/", timeout=5).status_code == 404
    reply = requests.post(f"{served.url}/1", data=b"x", timeout=5)
    assert reply.status_code == 405 and "GET" in reply.headers["Allow"]


def test_the_user_id_may_come_as_a_query_or_a_post_body_as_faas_cli_invoke_sends_it(served, model_dir):
    model = load_model(model_dir)
    user_id = int(model.user_ids[5])
    by_path = requests.get(f"{served.url}/{user_id}", timeout=5).text
    assert requests.get(f"{served.url}/", params={"user": user_id}, timeout=5).text == by_path
    posted = requests.post(f"{served.url}/", data=f"{user_id}\n", timeout=5)  # `echo 42 | faas-cli invoke`
    assert posted.status_code == 200 and posted.text == by_path
    assert requests.post(f"{served.url}/", data=b"nope", timeout=5).status_code == 400


def test_before_any_model_exists_it_answers_at_once_from_popularity(build_context, tmp_path):
    fn = FunctionProcess(build_context, {"STORE_URL": str(tmp_path / "empty-store"), "MODEL_VERSION": "stable",
                                         "MODEL_CACHE_DIR": str(tmp_path / "cache")}, tmp_path / "log")
    try:
        ready = requests.get(f"{fn.url}/_/ready", timeout=5)
        assert ready.status_code == 200 and ready.text.startswith("waiting for a model (")
        reply = requests.get(f"{fn.url}/42", timeout=5)
        assert reply.status_code == 200 and reply.headers["X-Model-Version"] == "popularity"
        assert reply.text == ""  # nothing ingested yet: an empty list, not a wait
        assert "ERROR" not in fn.log.read_text()
    finally:
        fn.stop()


def test_health_and_readiness_name_the_loaded_model(served):
    for path in ("/health", "/_/ready"):
        reply = requests.get(served.url + path, timeout=5)
        assert reply.status_code == 200
        assert f"loaded model {VERSION}, sha256 ok" in reply.text


def test_without_a_model_the_function_stays_up_and_says_no_model(build_context, tmp_path):
    fn = FunctionProcess(build_context, {"MODEL_PATH": str(tmp_path / "missing")}, tmp_path / "log")
    try:
        ready = requests.get(f"{fn.url}/_/ready", timeout=5)
        assert ready.status_code == 503 and ready.text.startswith("no model")
        reply = requests.get(f"{fn.url}/42", timeout=5)
        assert reply.status_code == 503 and reply.text.startswith("no model")
    finally:
        fn.stop()


def test_a_tampered_model_is_refused(build_context, model_dir, tmp_path):
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    manifest = json.loads((model_dir / "manifest.json").read_text())
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    data = bytearray((model_dir / "model.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / "model.npz").write_bytes(bytes(data))
    fn = FunctionProcess(build_context, {"MODEL_PATH": str(tampered)}, tmp_path / "log")
    try:
        ready = requests.get(f"{fn.url}/_/ready", timeout=5)
        assert ready.status_code == 503 and "sha256" in ready.text
    finally:
        fn.stop()


def test_the_core_is_imported_from_the_build_context_not_the_repository(build_context):
    probe = subprocess.run(
        [sys.executable, "-c",
         ("import sys, os; sys.path.insert(0, os.path.join(os.getcwd(), 'function')); "
          "import movierec; print(movierec.__file__)")],
        cwd=build_context.path, env={"PATH": os.environ.get("PATH", "")}, capture_output=True, text=True,
        check=True)
    assert Path(probe.stdout.strip()).is_relative_to(build_context.path)


@pytest.mark.parametrize("spec, says", [("v9", "only stable and candidate"), ("../stable", "neither a model version"),
                                        ("v20261128-010203-abcdef12", "no model version"),
                                        ("stable\nx", "neither a model version")])
def test_a_model_version_that_can_never_load_fails_at_once_in_one_line(build_context, tmp_path, spec, says):
    """Not a readiness wait until the deploy times out: the process exits within seconds and its
    log's last line says why (the deploy then fails with a pointer to that log)."""
    log = tmp_path / "log"
    env = {"PATH": os.environ.get("PATH", ""), "PORT": str(free_port()), "HOME": str(tmp_path),
           "MODEL_VERSION": spec, "STORE_URL": str(tmp_path / "store"), "MODEL_RETRY_SECONDS": "3600"}
    started = time.monotonic()
    with open(log, "wb") as out:
        done = subprocess.run(process_command(build_context.fprocess), cwd=build_context.path, env=env,
                              stdout=out, stderr=subprocess.STDOUT, timeout=60, check=False)
    assert done.returncode == 78 and time.monotonic() - started < 30
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith("recommend: cannot serve: MODEL_VERSION") and says in last


def test_an_alias_that_is_not_set_yet_keeps_the_function_up_waiting_for_a_model(build_context, tmp_path):
    """Unlike a spec that can never resolve, `stable`/`candidate` not set yet is warm-up: the
    function stays up, answers from popularity, and its health says what it waits for."""
    fn = FunctionProcess(build_context, {"MODEL_VERSION": "candidate", "STORE_URL": str(tmp_path / "store")},
                         tmp_path / "log")
    try:
        reply = requests.get(f"{fn.url}/42", timeout=5)
        assert reply.status_code == 200 and reply.headers["X-Model-Version"] == "popularity"
        health = requests.get(f"{fn.url}/health", timeout=5)
        assert "waiting for a model" in health.text and "candidate" in health.text
        assert "\n" not in health.text.strip()
    finally:
        fn.stop()
