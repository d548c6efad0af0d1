"""What the real probes see, per state of the recommend function, from its build context.

In a container the watchdog answers `/_/health` from `$TMPDIR/.lock` and, with `suppress_lock`
(the Dockerfile sets it), never writes that file: index.py keeps it in step with the handler's
`ready()`. Kubernetes CE probes only that (readiness and liveness), docker's HEALTHCHECK reads the
file, and the watchdog's `/_/ready` forwards to index.py's (`ready_path`). These tests run the
build context's index.py as the container would (suppress_lock=true, its own TMPDIR) and read the
lock file and `/_/ready` in each state; and they check the Dockerfile says what the README says.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from localfaas.build import build_function, process_command
from localfaas.stackfile import load_stack
from movierec.batches.builder import parse_batch, store_batch
from movierec.store import LocalDirectoryStore
from scripts._proc import free_port

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "template" / "python3-http-debian"


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    stack = load_stack(REPO / "stack.yml", env={})
    return build_function(stack, stack.functions["recommend"], tmp_path_factory.mktemp("build"))


class Container:
    """index.py started the way the Dockerfile's environment starts it behind the watchdog."""

    def __init__(self, context, tmp: Path, env: dict[str, str]):
        self.tmpdir = tmp / "tmp"
        self.tmpdir.mkdir()
        self.lock = self.tmpdir / ".lock"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        child = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp), "TMPDIR": str(self.tmpdir),
                 "PORT": str(self.port), "suppress_lock": "true", "mode": "http", "PUSHGATEWAY_URL": "",
                 "MODEL_CACHE_DIR": str(tmp / "cache"), **env}
        self.log = tmp / "fn.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(process_command(context.fprocess), cwd=context.path, env=child,
                                            stdout=out, stderr=subprocess.STDOUT)

    def wait_listening(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-2000:]
            try:
                return requests.get(self.url + "/_/ready", timeout=2)
            except requests.ConnectionError:
                time.sleep(0.05)
        raise AssertionError(self.log.read_text()[-2000:])

    def lock_after(self, seconds: float) -> bool:
        time.sleep(seconds)
        return self.lock.exists()

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def container(context, tmp_path):
    started = []

    def start(**env):
        c = Container(context, tmp_path, env)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def test_waiting_for_the_first_model_the_lock_is_there_and_calls_get_popularity_in_milliseconds(container, tmp_path):
    store = LocalDirectoryStore(tmp_path / "store")
    lines = [f"2020-01-01T10:00:0{i % 10},{i},GET /rate/good+movie+2001=5" for i in range(8)]
    store_batch(store, parse_batch("movielog1", 0, [(i, s.encode()) for i, s in enumerate(lines)], []))
    c = container(STORE_URL=str(tmp_path / "store"), MODEL_VERSION="stable")
    ready = c.wait_listening()
    assert ready.status_code == 200 and ready.text.startswith("waiting for a model (")
    assert c.lock_after(1.5), "Kubernetes would never route to (and finally restart) a replica that can answer"
    t0 = time.perf_counter()
    reply = requests.get(f"{c.url}/12345", timeout=2)
    assert time.perf_counter() - t0 < 0.2
    assert reply.status_code == 200 and reply.text == "good+movie+2001"
    assert reply.headers["X-Model-Version"] == "popularity"
    assert requests.get(f"{c.url}/3", timeout=2).text == ""  # user 3 rated the only movie there is


def test_a_pinned_model_that_cannot_be_served_never_gets_the_lock(container, tmp_path):
    c = container(MODEL_PATH=str(tmp_path / "missing"))
    ready = c.wait_listening()
    assert ready.status_code == 503 and ready.text.startswith("no model:")
    assert not c.lock_after(1.5)
    reply = requests.get(f"{c.url}/7", timeout=2)
    assert reply.status_code == 503 and reply.headers["Retry-After"].isdigit()


def test_a_loaded_model_gets_the_lock(container, context, tmp_path):
    from movierec.artifact import save_model
    from movierec.synthetic import SyntheticWorld
    from movierec.training import SVDParams
    from tests.fitting import train_model

    model = train_model(SyntheticWorld(n_users=120, n_movies=80, seed=2).sample_ratings(3000),
                        SVDParams(n_factors=4, n_epochs=3, random_state=0))
    save_model(model, tmp_path / "model", extra_manifest={"version": "v-probe"})
    c = container(MODEL_PATH=str(tmp_path / "model"))
    assert c.wait_listening().text.startswith("loaded model v-probe, sha256 ok")
    assert c.lock_after(1.5)
    assert requests.get(f"{c.url}/1", timeout=2).headers["X-Model-Version"] == "v-probe"


def test_without_suppress_lock_index_py_never_touches_a_lock_file(context, tmp_path):
    """Locally (no watchdog) the host's /tmp/.lock is not ours: replicas must not write it."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           "PORT": str(free_port()), "MODEL_PATH": str(tmp_path / "missing")}
    probe = subprocess.run([sys.executable, "-c", "import index; print(index.owns_lock_file())"],
                           cwd=context.path, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert probe.stdout.strip().splitlines()[-1] == "False"


def test_the_dockerfile_hands_the_lock_to_index_py_and_pins_what_it_pulls():
    dockerfile = (TEMPLATE / "Dockerfile").read_text()
    assert re.search(r'suppress_lock="true"', dockerfile) and re.search(r'ready_path="/_/ready"', dockerfile)
    assert "HEALTHCHECK" in dockerfile and "/tmp/.lock" in dockerfile
    images = dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", dockerfile, re.MULTILINE))
    assert images["WATCHDOG_IMAGE"] == "ghcr.io/openfaas/of-watchdog:0.11.6"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", images["PYTHON_IMAGE"])
    for requirements in (TEMPLATE / "requirements.txt", REPO / "functions" / "recommend" / "requirements.txt"):
        for line in requirements.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            assert not line or re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.]+", line), f"{requirements}: {line} not pinned"


def test_the_context_is_built_once_per_process_not_per_request():
    tree = ast.parse((TEMPLATE / "index.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "socket.gethostname"]
    assert len(calls) == 1
    handler_route = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "call_handler")
    assert "Context(" not in ast.unparse(handler_route)
