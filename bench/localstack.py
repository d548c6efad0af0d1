"""A throwaway local OpenFaaS runtime serving `recommend` and `recommend-canary` from a given
object store: the project's template, the real recommend handler and the core, in a temp folder,
run by `python -m localfaas up` on a free port, stopped by its PID.

Used by bench/train.py (register -> canary serving time) and by the release tests on the real
runtime. Owns nothing but this setup.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import requests

REPO = Path(__file__).resolve().parent.parent

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
      MODEL_VERSION: ${STABLE_MODEL_VERSION}
      STORE_URL: ${STORE_URL}
      MODEL_CACHE_DIR: ${MODEL_CACHE_DIR}
      OPENBLAS_NUM_THREADS: "1"
    labels:
      com.openfaas.scale.min: "1"
  recommend-canary:
    <<: *recommend
    environment:
      <<: *env
      MODEL_VERSION: ${CANARY_MODEL_VERSION}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RecommendStack:
    def __init__(self, root: Path, store_dir: Path, stable: str, canary: str | None = None):
        root.mkdir(parents=True, exist_ok=True)
        shutil.copytree(REPO / "template", root / "template", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "movierec", root / "movierec", ignore=shutil.ignore_patterns("__pycache__"))
        (root / "functions").mkdir()
        shutil.copytree(REPO / "functions" / "recommend", root / "functions" / "recommend",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (root / "stack.yml").write_text(STACK)
        self.root, self.port = root, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = root / "var"
        env = {**os.environ, "STABLE_MODEL_VERSION": stable, "CANARY_MODEL_VERSION": canary or stable,
               "STORE_URL": str(store_dir), "MODEL_CACHE_DIR": str(root / "model-cache"),
               "LOCALFAAS_HEALTH_INTERVAL": "0.5", "LOCALFAAS_READY_TIMEOUT": "60"}
        with open(root / "localfaas.out", "wb") as log:  # the child keeps its own copy of the fd
            self.process = subprocess.Popen(
                [sys.executable, "-m", "localfaas", "up", "--stack", str(root / "stack.yml"),
                 "--port", str(self.port), "--state-dir", str(self.state)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            for name in ("recommend", "recommend-canary"):
                self.wait_until(lambda n=name: self.serving(n) is not None, f"{name} to serve", 90)
        except BaseException:
            self.stop()
            raise

    @property
    def auth(self) -> tuple[str, str]:
        secrets = self.state / "secrets"
        return ((secrets / "basic-auth-user").read_text().strip(),
                (secrets / "basic-auth-password").read_text().strip())

    @property
    def secrets_dir(self) -> Path:
        return self.state / "secrets"

    def serving(self, name: str, user_id: int = 1) -> str | None:
        """The model version `name` answers with, or None when it does not answer 200."""
        try:
            reply = requests.get(f"{self.url}/function/{name}/{user_id}", timeout=5)
        except requests.RequestException:
            return None
        return reply.headers.get("X-Model-Version") if reply.status_code == 200 else None

    def wait_until(self, predicate, what: str, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"localfaas exited: {self.output()[-2000:]}")
            if predicate():
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out after {timeout_s}s waiting for {what}: {self.output()[-2000:]}")

    def output(self) -> str:
        return (self.root / "localfaas.out").read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
