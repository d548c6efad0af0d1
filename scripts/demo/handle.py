"""The local stack as the demo driver sees it: bring one up, attach to one, call it, bring it down.

Owns: `StackHandle` (URLs, state dir, credentials, the store; the gateway's functions, the deployed
and served model versions, function calls through the one gateway client
`movierec.adapters.gateway`), `local_stack_env` (a fresh stack: the caller's URLs where given, free
ports otherwise, a temp state dir unless STACK_STATE_DIR is set, and env/demo.yml's settings where
the caller has not set them), `attach_env`, `handle_for`, `bring_up` / `bring_down` (through
`python -m scripts.stack up|down`; `down` only for a stack we started, and what it could not stop,
by verified pid).

Must not touch: processes it did not start; the stack's own process management (scripts/stack/).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from movierec.adapters.gateway import FunctionError, GatewayClient, GatewayError
from movierec.adapters.stores import open_store
from movierec.errors import MovierecError
from scripts._proc import free_port
from scripts.demo.progress import DemoError, Progress
from scripts.envfile import ENV_DIR, read_env_file
from scripts.stack.config import StackConfig

ROOT = Path(__file__).resolve().parents[2]
# What a compressed lifecycle adds on top of env/local.yml, each only where the caller has not set it.
DEMO_ENV_FILE = ENV_DIR / "demo.yml"


def demo_defaults() -> dict[str, str]:
    """env/demo.yml's variables: releases judged within a minute on a small sample, small fast
    models, and ingest/train left to the driver."""
    return read_env_file(DEMO_ENV_FILE)


@dataclass
class StackHandle:
    """A running local stack as the driver sees it: its URLs, state dir, credentials and store."""

    env: dict[str, str]  # what scripts.stack, scripts.release and the functions see
    config: StackConfig
    started_by_us: bool

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    @property
    def gateway_url(self) -> str:
        return self.config.url(self.config.gateway_port)

    @property
    def public_url(self) -> str:
        return self.config.url(self.config.public_port)

    @property
    def prometheus_url(self) -> str:
        return self.config.url(self.config.prometheus_port)

    def gateway(self) -> GatewayClient:
        """The gateway API client, one attempt per call (the driver polls); credentials are read
        each time (the runtime writes them when it first starts)."""
        return GatewayClient.from_env({"OPENFAAS_URL": self.gateway_url, "SECRETS_DIR": self.env["SECRETS_DIR"]},
                                      timeout_s=5.0, attempts=1)

    def store(self):
        return open_store(self.env)

    def runtime_pid(self) -> int | None:
        try:
            return int((self.state_dir / "run" / "localfaas.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    # -- the gateway ----------------------------------------------------------------------------
    def functions(self) -> dict[str, dict[str, Any]]:
        try:
            return {f["name"]: f for f in self.gateway().list_functions()}
        except MovierecError:
            return {}

    def deployed_version(self, function: str) -> str | None:
        return (self.functions().get(function, {}).get("envVars") or {}).get("MODEL_VERSION")

    def serving(self, function: str, user_id: int = 1) -> str | None:
        """The model version `function` answers with (through the gateway), None if it does not answer 200."""
        try:
            reply = self.gateway().invoke("GET", function, f"/{user_id}")
        except GatewayError:
            return None
        return reply.headers.get("X-Model-Version") if reply.status_code == 200 else None

    def invoke(self, function: str, path: str = "", timeout_s: float = 120, **params: Any) -> dict[str, Any]:
        """POST /function/<function><path> with the scheduler's cron-token (what the cron sends):
        the JSON reply, or DemoError with its one-line error."""
        from movierec.store import read_secret

        auth = {"Authorization": f"Bearer {read_secret('cron-token', self.env) or ''}"}
        try:
            body = self.gateway().call("POST", function, path, timeout_s=timeout_s, params=params or None,
                                       headers=auth)
        except (FunctionError, GatewayError) as e:
            raise DemoError(str(e)) from None
        return body if isinstance(body, dict) else {"text": str(body)[:300]}


def local_stack_env(base: dict[str, str] | None = None, state_dir: str | None = None) -> dict[str, str]:
    """The environment of a fresh stack: the caller's URLs where given, free ports otherwise, a
    temp state dir unless STACK_STATE_DIR is set, and the fast local settings (env/demo.yml)."""
    env = dict(os.environ if base is None else base)
    for name, make in (
        ("OPENFAAS_URL", lambda: f"http://127.0.0.1:{free_port()}"),
        ("PUBLIC_URL", lambda: f"http://127.0.0.1:{free_port()}"),
        ("PROMETHEUS_URL", lambda: f"http://127.0.0.1:{free_port()}"),
        ("PUSHGATEWAY_URL", lambda: f"http://127.0.0.1:{free_port()}"),
        ("KAFKA_BOOTSTRAP_SERVERS", lambda: f"127.0.0.1:{free_port()}"),
    ):
        if not env.get(name):
            env[name] = make()
    env["STACK_STATE_DIR"] = state_dir or env.get("STACK_STATE_DIR") or tempfile.mkdtemp(prefix="movierec-demo-")
    for name, value in demo_defaults().items():
        env.setdefault(name, value)
    return env


def attach_env(base: dict[str, str] | None = None) -> dict[str, str]:
    return dict(os.environ if base is None else base)


def handle_for(env: dict[str, str], started_by_us: bool) -> StackHandle:
    config = StackConfig.from_env(env=env)
    full = {**env,
            "STACK_STATE_DIR": str(config.state_dir),
            "OPENFAAS_URL": config.url(config.gateway_port),
            "PUBLIC_URL": config.url(config.public_port),
            "PROMETHEUS_URL": config.url(config.prometheus_port)}
    full.setdefault("SECRETS_DIR", str(config.secrets_dir))
    full.setdefault("STORE_URL", str(config.state_dir / "store"))
    return StackHandle(full, config, started_by_us)


def stack_cli(env: dict[str, str], action: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.stack", action], cwd=ROOT, env=env, check=False,
                          capture_output=True, text=True, timeout=timeout_s)


def bring_up(env: dict[str, str], progress: Progress) -> StackHandle:
    handle = handle_for(env, started_by_us=True)  # `up` makes the release token (scripts.stack)
    progress.log(f"starting the stack in {handle.state_dir} (gateway {handle.gateway_url}, "
                 f"public {handle.public_url}, prometheus {handle.prometheus_url})")
    result = stack_cli(handle.env, "up")
    if result.returncode != 0:
        stack_cli(handle.env, "down")
        raise DemoError(f"`scripts.stack up` failed: {(result.stderr or result.stdout).strip()[-600:]}")
    return handle


def bring_down(handle: StackHandle, progress: Progress | None = None) -> str:
    """Stop what we started (scripts.stack down, by PID); never a stack we only attached to."""
    if not handle.started_by_us:
        return "left running (attached)"
    from scripts.stack.processes import running_pid
    from scripts.stack.services import services

    result = stack_cli(handle.env, "down")
    if result.returncode != 0:  # never leave ours running: what `down` could not stop, by verified pid
        for service in services(handle.config):
            pid = running_pid(handle.config, service)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
    if progress:
        for line in result.stdout.strip().splitlines():
            progress.log(f"   {line}")
    if result.returncode != 0:
        raise DemoError(f"`scripts.stack down` failed: {result.stderr.strip()[-300:]}")
    return "stopped"
