"""The local stack on one machine: `make up`, `make status`, `make down` (`python -m scripts.stack`).

Owns: starting, in the background and all on 127.0.0.1, the Kafka broker (scripts/broker.py), the
local OpenFaaS runtime (`python -m localfaas up`), the Pushgateway, Prometheus, nginx (the public
entry rendered by gateway/render.py) and, when present, the stream simulator; waiting for each to be
healthy; the pid files `<state>/run/<name>.pid` and logs `<state>/logs/<name>.log`; and stopping
exactly what it started, by PID (SIGTERM, then SIGKILL after a grace period).

Modules:
- `config`: `StackConfig` (ports, state dir, the services' environment), the local defaults read
  from env/local.yml, `absolute_store_url`, `StackError`.
- `services`: `Service` and `services(config)`, the stack's definitions in start order.
- `processes`: pid files, logs, `running_pid`, `start_service`, `stop_pid` (process groups).
- `cli`: `ensure_packages`, `ensure_release_token`, `up`, `down`, `status`, `main`.
- `first_answer`: `up`'s last step with the simulator on: one ingest run asked for at once, then a
  bounded wait until the public entry answers with movie ids.

Must not touch: processes it did not start; the services' own configuration logic (rendered by
gateway/ and monitoring/); anything about movies.

The names below are the package's public surface (`from scripts.stack import StackConfig`).
"""
from scripts.stack.cli import down, ensure_packages, ensure_release_token, main, status, up
from scripts.stack.config import (
    LOCAL_ENV_FILE,
    ROOT,
    StackConfig,
    StackError,
    absolute_store_url,
    local_defaults,
)
from scripts.stack.processes import log_file, pid_file, running_pid, start_service, stop_pid
from scripts.stack.services import (
    LOCALFAAS_STOP_GRACE_S,
    PACKAGES,
    STOP_GRACE_S,
    Service,
    services,
)

__all__ = ["LOCALFAAS_STOP_GRACE_S", "LOCAL_ENV_FILE", "PACKAGES", "ROOT", "STOP_GRACE_S", "Service",
           "StackConfig", "StackError", "absolute_store_url", "down", "ensure_packages", "ensure_release_token",
           "local_defaults", "log_file", "main", "pid_file", "running_pid", "services", "start_service",
           "status", "stop_pid", "up"]
