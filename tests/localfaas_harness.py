"""Test harness for localfaas: a tiny stack (in a temp folder) on the project's function template,
and a running `python -m localfaas up` process on a free port, stopped by PID afterwards.

Knows nothing of movies on purpose: the functions here only echo and record what they receive.
`free_port` and `pid_alive` are the scripts' own (scripts/_proc.py), re-exported for the tests.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from scripts._proc import free_port, pid_alive  # noqa: F401 (pid_alive: re-exported for the tests)

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "template" / "python3-http-debian"

ECHO_HANDLER = '''
import json, os, time
from shared_lib import tag  # copied in by configuration.copy

def ready():
    if os.getenv("NEVER_READY") == "1":
        return False, "told never to be ready"
    return True, "ok"

def handle(event, context):
    if event.path == "/slow":
        time.sleep(float(event.query.get("s", "0.2")))
    if event.path == "/say":  # one line of output, for the function log
        print("said", event.query.get("w"), flush=True)
    secrets_dir = os.environ.get("SECRETS_DIR", "")
    token_file = os.path.join(secrets_dir, "api-token")
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": {
        # the replica's pid: the process the runtime started (the template's `python index.py`,
        # granian's main process), whose forked worker runs this handler
        "pid": os.getppid(), "greeting": os.getenv("GREETING"), "tag": tag(),
        "method": event.method, "path": event.path, "query": event.query.to_dict(flat=False),
        "body": event.body.decode(), "hostname": context.hostname,
        "call_id": event.headers.get("X-Call-Id"),
        "secret": open(token_file).read() if os.path.exists(token_file) else None,
        "secret_files": sorted(os.listdir(secrets_dir)) if os.path.isdir(secrets_dir) else [],
        "leaked_env": os.getenv("LOCALFAAS_TEST_HOST_ONLY"),
    }}
'''

RECORDER_HANDLER = '''
import json, os

def handle(event, context):
    with open(os.environ["RECORD_FILE"], "a") as out:
        out.write(json.dumps({"method": event.method, "body": event.body.decode(),
                              "topic": event.headers.get("X-Topic"),
                              "connector": event.headers.get("X-Connector")}) + "\\n")
    return {"statusCode": 200, "body": "recorded"}
'''

STACK = '''
version: 1.0
provider:
  name: openfaas
  gateway: ${OPENFAAS_URL:-http://127.0.0.1:8080}
configuration:
  copy:
    - ./shared_lib
functions:
  echo: &echo
    lang: python3-http-debian
    handler: ./functions/echo
    image: ${IMAGE_REGISTRY:-test}/echo:latest
    environment: &echo_env
      GREETING: ${GREETING:-hello}
      write_timeout: 5s
      exec_timeout: 5s
    secrets:
      - api-token
    labels:
      com.openfaas.scale.min: "2"
    annotations:
      owner: tests
  spare:
    <<: *echo
    image: test/spare:latest
    labels:
      com.openfaas.scale.min: "1"
  recorder:
    lang: python3-http-debian
    handler: ./functions/recorder
    image: test/recorder:latest
    environment:
      RECORD_FILE: ${RECORD_FILE}
    annotations:
      topic: cron-function
      schedule: "@every 2s"
'''


def write_project(root: Path) -> Path:
    """A minimal project: template/, two handler folders, a shared package, stack.yml, a secret."""
    shutil.copytree(TEMPLATE, root / "template" / TEMPLATE.name, ignore=shutil.ignore_patterns("__pycache__"))
    for name, code in (("echo", ECHO_HANDLER), ("recorder", RECORDER_HANDLER)):
        folder = root / "functions" / name
        folder.mkdir(parents=True)
        (folder / "handler.py").write_text(code)
        (folder / "requirements.txt").write_text("")
    (root / "shared_lib").mkdir()
    (root / "shared_lib" / "__init__.py").write_text("def tag():\n    return 'shared-v1'\n")
    (root / "stack.yml").write_text(STACK)
    secrets = root / "var" / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "api-token").write_text("s3cret-token")
    (secrets / "api-token").chmod(0o600)
    return root / "stack.yml"


class LocalFaas:
    """`python -m localfaas up` on a free port, as a real process; `stop()` ends it by its PID."""

    def __init__(self, root: Path, env: dict[str, str] | None = None, port: int | None = None):
        self.root = root
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = root / "var"
        self.record_file = root / "calls.jsonl"
        environment = dict(os.environ)
        environment.update({"RECORD_FILE": str(self.record_file), "LOCALFAAS_CRON_INTERVAL": "1",
                            "LOCALFAAS_HEALTH_INTERVAL": "0.5", "LOCALFAAS_READY_TIMEOUT": "20",
                            "LOCALFAAS_TEST_HOST_ONLY": "must-not-leak"})
        environment.update(env or {})
        with open(root / "localfaas.out", "ab") as log:  # the child keeps its own copy of the fd
            self.process = self._spawn(root, environment, log)

    def _spawn(self, root: Path, environment: dict[str, str], log) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "localfaas", "up", "--stack", str(root / "stack.yml"),
             "--port", str(self.port), "--state-dir", str(self.state)],
            cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT,
        )

    @property
    def auth(self) -> tuple[str, str]:
        secrets = self.state / "secrets"
        return (secrets / "basic-auth-user").read_text().strip(), (secrets / "basic-auth-password").read_text().strip()

    def output(self) -> str:
        return (self.root / "localfaas.out").read_text(errors="replace")

    def functions(self) -> dict[str, dict]:
        reply = requests.get(self.url + "/system/functions", auth=self.auth, timeout=5)
        reply.raise_for_status()
        return {fn["name"]: fn for fn in reply.json()}

    def wait_until(self, predicate, what: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"localfaas exited ({self.process.returncode}):\n{self.output()}")
            try:
                value = predicate()
                if value:
                    return value
            except (requests.RequestException, OSError, KeyError, ValueError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n{self.output()[-3000:]}")

    def wait_available(self, name: str, replicas: int) -> None:
        self.wait_until(lambda: self.functions()[name]["availableReplicas"] == replicas,
                        f"{name} to have {replicas} ready replica(s)")

    def call(self, name: str, path: str = "", **kwargs) -> requests.Response:
        return requests.get(f"{self.url}/function/{name}{path}", timeout=10, **kwargs)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_stack(root: Path, env: dict[str, str] | None = None) -> LocalFaas:
    write_project(root)
    faas = LocalFaas(root, env)
    faas.wait_until(lambda: requests.get(faas.url + "/healthz", timeout=1).status_code == 200, "the gateway")
    for name, replicas in (("echo", 2), ("spare", 1), ("recorder", 1)):
        faas.wait_available(name, replicas)
    return faas


def json_of(response: requests.Response) -> dict:
    return json.loads(response.text)
