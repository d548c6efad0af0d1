"""A throwaway local stack serving `recommend` and `recommend-canary`, in a temp folder, on free ports:
the local OpenFaaS runtime (`python -m localfaas up`) over a project whose stack.yml holds only the
recommend functions of the real stack.yml (the real template, handler and core), optionally nginx
with the rendered gateway/ config in front of it, and optionally one function process started
straight from the runtime's build context (the `direct` baseline).

The model comes either from a saved model folder (MODEL_PATH) or from an object store and registry
(STORE_URL + the stable/canary versions). Used by bench/gateway.py (latency per path), bench/train.py
(register -> canary serving time), the release test on the real runtime and tests/test_stack.py
(`recommend_only_project`; `free_port` is scripts._proc's, re-exported). Owns nothing but this
setup; starts and stops only its own processes, by PID.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import requests
import yaml

from scripts._proc import free_port
from scripts.stack import LOCALFAAS_STOP_GRACE_S, stop_pid

REPO = Path(__file__).resolve().parent.parent
RECOMMEND_FUNCTIONS = ("recommend", "recommend-canary")
READY_TIMEOUT_S = 180.0


def recommend_only_project(folder: Path) -> Path:
    """A project folder whose stack.yml holds only the recommend functions of the real stack.yml;
    template/, functions/, movierec/ and env/ link to the repo's, so the build contexts (and the
    functions' address overlay, env/localfaas.yml here) are the real ones."""
    folder.mkdir(parents=True, exist_ok=True)
    stack = yaml.safe_load((REPO / "stack.yml").read_text())  # ${VAR} stay text: localfaas substitutes
    stack["functions"] = {name: stack["functions"][name] for name in RECOMMEND_FUNCTIONS}
    (folder / "stack.yml").write_text(yaml.safe_dump(stack, sort_keys=False))
    for name in ("template", "functions", "movierec", "env"):
        link = folder / name
        if not link.exists():
            link.symlink_to(REPO / name, target_is_directory=True)
    return folder / "stack.yml"


class RecommendStack:
    """localfaas (+ nginx, + one direct function process, each optional) serving recommend and
    recommend-canary from `model_dir`, or from `store_dir` at versions `stable`/`canary`.

    Use as a context manager; everything it started is stopped by PID on exit. `url` is the
    gateway; `public_url` (nginx) and `direct_url` exist when asked for.
    """

    def __init__(self, workdir: Path, *, model_dir: Path | None = None, store_dir: Path | None = None,
                 stable: str | None = None, canary: str | None = None, public_entry: bool = False,
                 direct: bool = False, canary_percent: int = 20):
        if (model_dir is None) == (store_dir is None) or (store_dir is not None and not stable):
            raise ValueError("RecommendStack needs either model_dir, or store_dir and a stable version")
        self.workdir = workdir
        self.model_dir, self.store_dir = model_dir, store_dir
        self.stable, self.canary = stable, canary or stable
        self.public_entry, self.direct = public_entry, direct
        self.canary_percent = canary_percent
        self.state = workdir / "var"
        self.logs = self.state / "logs"
        self.port = free_port()
        self.url = self.gateway_url = f"http://127.0.0.1:{self.port}"
        self.public_url: str | None = None
        self.direct_url: str | None = None
        self.started: list[tuple[subprocess.Popen, float, int]] = []  # (process, stop grace, signal)
        self.processes: dict[str, subprocess.Popen] = {}  # by name, for benchmarks reading their CPU

    @property
    def secrets_dir(self) -> Path:
        return self.state / "secrets"

    @property
    def auth(self) -> tuple[str, str]:
        return ((self.secrets_dir / "basic-auth-user").read_text().strip(),
                (self.secrets_dir / "basic-auth-password").read_text().strip())

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _model_env(self) -> dict[str, str]:
        """What the functions read their model from, explicitly (never inherited from the caller)."""
        if self.model_dir is not None:
            return {"MODEL_PATH": str(self.model_dir), "STORE_URL": ""}
        return {"MODEL_PATH": "", "STORE_URL": str(self.store_dir),
                "STABLE_MODEL_VERSION": self.stable, "CANARY_MODEL_VERSION": self.canary}

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], cwd: Path,
               stop_grace_s: float = 30.0, stop_signal: int = signal.SIGTERM) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:  # the child keeps its own copy of the fd
            process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        self.started.append((process, stop_grace_s, stop_signal))
        self.processes[name] = process
        return process

    def spawn(self, name: str, argv: list[str], env: dict[str, str], stop_grace_s: float = 30.0) -> subprocess.Popen:
        """Start another process of a benchmark beside the stack (log in the stack's logs folder,
        stopped with it, by PID)."""
        return self._spawn(name, argv, env, REPO, stop_grace_s=stop_grace_s)

    def _start(self) -> None:
        stack_file = recommend_only_project(self.workdir / "project")
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self._model_env(),
               "TMPDIR": str(self.workdir / "tmp"),  # passed to replicas: their model cache stays ours
               "DEPLOY_TARGET": "localfaas",  # stack.yml's local overlay: the addresses are these
               "CANARY_PERCENT": str(self.canary_percent),
               "LOCALFAAS_HEALTH_INTERVAL": "0.5", "LOCALFAAS_READY_TIMEOUT": "60",
               # as `make up` runs it (env/local.yml); LOCALFAAS_DATA_PLANE=python measures the other
               "LOCALFAAS_DATA_PLANE": os.environ.get("LOCALFAAS_DATA_PLANE", "nginx")}
        self.localfaas = self._spawn(
            "localfaas", [sys.executable, "-m", "localfaas", "up", "--stack", str(stack_file),
                          "--port", str(self.port), "--state-dir", str(self.state)], env, REPO,
            stop_grace_s=LOCALFAAS_STOP_GRACE_S)
        for name in RECOMMEND_FUNCTIONS:
            self.wait_until(lambda n=name: self.serving(n) is not None, f"{name} to serve",
                            READY_TIMEOUT_S)
        if self.public_entry:
            self._start_nginx(env)
        if self.direct:
            self._start_direct(stack_file.parent / "build" / "recommend", env)

    def _start_nginx(self, env: dict[str, str]) -> None:
        from gateway.render import NginxSettings, nginx_argv, write_config

        port = free_port()
        settings = NginxSettings.local(self.state, listen=f"127.0.0.1:{port}", upstream=f"127.0.0.1:{self.port}",
                                       canary_percent=self.canary_percent)
        argv = nginx_argv(write_config(settings, self.state / "nginx" / "nginx.conf"), settings)
        self._spawn("nginx", argv, env, REPO, stop_signal=signal.SIGQUIT)
        self.public_url = f"http://127.0.0.1:{port}"
        self.wait_until(lambda: _answers_200(f"{self.public_url}/healthz"), "nginx to answer", 30)

    def _start_direct(self, context: Path, env: dict[str, str]) -> None:
        port = free_port()
        self._spawn("direct-recommend", [sys.executable, "index.py"],
                    {**env, "PORT": str(port), "PYTHONUNBUFFERED": "1"}, context, stop_grace_s=10.0)
        self.direct_url = f"http://127.0.0.1:{port}"
        self.wait_until(lambda: _answers_200(f"{self.direct_url}/_/ready"), "the direct recommend process", 60)

    def serving(self, name: str, user_id: int = 1) -> str | None:
        """The model version `name` answers with, or None when it does not answer 200."""
        try:
            reply = requests.get(f"{self.url}/function/{name}/{user_id}", timeout=5)
        except requests.RequestException:
            return None
        return reply.headers.get("X-Model-Version") if reply.status_code == 200 else None

    def wait_until(self, predicate, what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for process, _, _ in self.started:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[:3]} exited while waiting for {what}: {self.output()}")
            if predicate():
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out after {timeout_s:g}s waiting for {what}: {self.output()}")

    def output(self, tail: int = 2000) -> str:
        """The end of the runtime's log, and where all the logs are."""
        log = self.logs / "localfaas.log"
        text = log.read_text(errors="replace")[-tail:] if log.exists() else ""
        return f"{text}\n(logs: {self.logs})"

    def stop(self) -> None:
        for process, grace_s, first_signal in reversed(self.started):
            if process.poll() is None:
                stop_pid(process.pid, grace_s, first_signal)
            process.wait()
        self.started.clear()
        self.processes.clear()


def _answers_200(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False
