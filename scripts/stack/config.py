"""What the local stack is configured with: ports, state dir, and the environment its services see.

Owns: `StackConfig` (from the environment: OPENFAAS_URL (:8080), PUBLIC_URL (nginx, :8082),
PROMETHEUS_URL (:9090), PUSHGATEWAY_URL (:9091), KAFKA_BOOTSTRAP_SERVERS (:9092; a non-local
address means "use theirs"), KAFKA_TOPIC, STACK_FILE (stack.yml), STACK_STATE_DIR (var/),
STACK_SIMULATOR=0 to leave the simulator out) and its `service_env()`; `absolute_store_url`; the
local defaults (`local_defaults()`, read from env/local.yml); `StackError`.

Local defaults (env/local.yml, each only when the user has not set the variable): stack.yml's
production schedules are days and hours; locally they are seconds and minutes, so that within a few
minutes of `up` the simulator has backfilled data, ingest has stored it, a first model is trained
and serving, and canary releases of retrained models are analysed and promoted or rolled back.

Must not touch: processes (scripts/stack/processes.py starts and stops them), what the variables
mean to the services.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from scripts.envfile import ENV_DIR, read_env_file

ROOT = Path(__file__).resolve().parents[2]
# What `make up` sets unless the user already has (stack.yml reads them as ${VAR:-production default}).
LOCAL_ENV_FILE = ENV_DIR / "local.yml"


class StackError(RuntimeError):
    """One line naming what failed and where to look."""


def local_defaults() -> dict[str, str]:
    """env/local.yml's variables: what `make up` sets unless the user already has each."""
    return read_env_file(LOCAL_ENV_FILE)


def _port_of(url: str, default: int) -> int:
    parts = urlsplit(url if "://" in url else "http://" + url)
    return parts.port or default


def _is_local(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


@dataclass
class StackConfig:
    state_dir: Path
    gateway_port: int = 8080
    public_port: int = 8082
    prometheus_port: int = 9090
    pushgateway_port: int = 9091
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_topic: str = "movielog1"
    stack_file: Path = ROOT / "stack.yml"
    simulator: bool = True
    python: str = sys.executable

    @classmethod
    def from_env(cls, state_dir: str | None = None, env: dict[str, str] | None = None) -> StackConfig:
        env = os.environ if env is None else env
        state = Path(state_dir or env.get("STACK_STATE_DIR") or ROOT / "var")
        if not state.is_absolute():
            state = ROOT / state
        return cls(
            state_dir=state,
            gateway_port=_port_of(env.get("OPENFAAS_URL") or "", 8080),
            public_port=_port_of(env.get("PUBLIC_URL") or "", 8082),
            prometheus_port=_port_of(env.get("PROMETHEUS_URL") or "", 9090),
            pushgateway_port=_port_of(env.get("PUSHGATEWAY_URL") or "", 9091),
            kafka_bootstrap=(env.get("KAFKA_BOOTSTRAP_SERVERS") or "127.0.0.1:9092").split(",")[0].strip(),
            kafka_topic=env.get("KAFKA_TOPIC") or "movielog1",
            stack_file=Path(env.get("STACK_FILE") or ROOT / "stack.yml").resolve(),
            simulator=(env.get("STACK_SIMULATOR") or "1") != "0",
        )

    @property
    def own_broker(self) -> bool:
        """Start our own broker unless KAFKA_BOOTSTRAP_SERVERS points at another machine's."""
        return _is_local(self.kafka_bootstrap.rsplit(":", 1)[0])

    @property
    def broker_port(self) -> int:
        return int(self.kafka_bootstrap.rsplit(":", 1)[1])

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"

    @property
    def secrets_dir(self) -> Path:
        """Where the runtime writes the stack's credentials (basic auth, cron and release tokens)."""
        return self.state_dir / "secrets"

    def gateway(self, **options):
        """The one gateway API client (movierec.adapters.gateway) for this stack's runtime, with the
        credentials the runtime writes into `<state>/secrets`; `options`: timeout_s, attempts, ..."""
        from movierec.adapters.gateway import GatewayClient

        return GatewayClient.from_env({"OPENFAAS_URL": self.url(self.gateway_port),
                                       "SECRETS_DIR": str(self.secrets_dir)}, **options)

    def service_env(self) -> dict[str, str]:
        """What every service (and through localfaas, every function) sees of the stack."""
        env = dict(os.environ)
        env.update({
            "STACK_STATE_DIR": str(self.state_dir),
            "OPENFAAS_URL": self.url(self.gateway_port),
            "PROMETHEUS_URL": self.url(self.prometheus_port),
            "PUSHGATEWAY_URL": self.url(self.pushgateway_port),
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "KAFKA_TOPIC": self.kafka_topic,
            "PUBLIC_URL": self.url(self.public_port),
        })
        env.setdefault("SECRETS_DIR", str(self.secrets_dir))
        env["STORE_URL"] = absolute_store_url(env.get("STORE_URL") or str(self.state_dir / "store"))
        for name, value in local_defaults().items():
            env.setdefault(name, value)
        return env


def absolute_store_url(url: str) -> str:
    """A local store path made absolute against the repo root: functions run inside build/<fn>/,
    where a relative path would name a different (empty) folder. s3:// and file:// URLs pass."""
    if "://" in url:
        return url
    path = Path(url).expanduser()
    return str(path if path.is_absolute() else ROOT / path)
