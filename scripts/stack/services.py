"""The local stack's services, in start order: what each runs, how it is told healthy, how it stops.

Owns: `Service` (name, port and the variable that moves it, the marker its /proc cmdline must carry, argv or its own starter,
health check, timeouts, stop signal), `services(config)` (broker when ours, localfaas, Pushgateway,
Prometheus, nginx and, when present, the simulator), the Debian `PACKAGES` the stack needs, and the
stop grace periods.

Must not touch: processes (scripts/stack/processes.py starts and stops them); the services' own
configuration logic (rendered by gateway/ and monitoring/); anything about movies.
"""
from __future__ import annotations

import shlex
import signal
from collections.abc import Callable
from dataclasses import dataclass

import requests

from scripts._proc import port_open
from scripts.stack.config import ROOT, StackConfig

# Debian packages the stack needs, and the binary that tells each one is installed.
PACKAGES = {"nginx": "/usr/sbin/nginx", "prometheus": "/usr/bin/prometheus",
            "prometheus-pushgateway": "/usr/bin/prometheus-pushgateway"}
STOP_GRACE_S = 15.0
LOCALFAAS_STOP_GRACE_S = 40.0  # it drains replicas (LOCALFAAS_DRAIN_TIMEOUT, 30s) before exiting


@dataclass
class Service:
    name: str
    port: int | None
    cmdline_marker: str                      # must appear in /proc/<pid>/cmdline for the pid to be ours
    argv: Callable[[], list[str]] | None     # None: started by `start` instead (the broker)
    health: Callable[[], bool]
    start_timeout_s: float = 30.0
    stop_grace_s: float = STOP_GRACE_S
    start: Callable[[], int] | None = None   # returns the pid, for services with their own starter
    stop_signal: int = signal.SIGTERM
    min_uptime_s: float = 0.0                # for services without a health URL: still alive after this
    port_env: str | None = None              # the variable that moves `port` (named when it is taken)

    def port_setting(self, port: int) -> str:
        """`VAR=value` that would move this service to `port`."""
        value = f"127.0.0.1:{port}" if self.port_env == "KAFKA_BOOTSTRAP_SERVERS" else f"http://127.0.0.1:{port}"
        return f"{self.port_env}={value}"


def _http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def services(config: StackConfig) -> list[Service]:
    """The stack, in start order (stopped in reverse)."""
    state = config.state_dir
    found: list[Service] = []

    if config.own_broker:
        def start_broker() -> int:
            from scripts.broker import ensure_topic
            from scripts.broker import start_broker as start

            handle = start(config.broker_port, state / "logs" / "broker.log")
            ensure_topic(handle.bootstrap, config.kafka_topic)
            return handle.pid

        found.append(Service("broker", config.broker_port, "tansu", None, lambda: port_open(config.broker_port),
                             start=start_broker, port_env="KAFKA_BOOTSTRAP_SERVERS"))

    found.append(Service(
        "localfaas", config.gateway_port, "localfaas",
        lambda: [config.python, "-m", "localfaas", "up", "--stack", str(config.stack_file),
                 "--port", str(config.gateway_port), "--state-dir", str(state)],
        lambda: _http_ok(f"{config.url(config.gateway_port)}/healthz"),
        start_timeout_s=180.0, stop_grace_s=LOCALFAAS_STOP_GRACE_S, port_env="OPENFAAS_URL",
    ))

    def pushgateway_argv() -> list[str]:
        from monitoring.render import pushgateway_argv as argv

        (state / "pushgateway").mkdir(parents=True, exist_ok=True)
        return argv(state / "pushgateway", f"127.0.0.1:{config.pushgateway_port}")

    found.append(Service("pushgateway", config.pushgateway_port, "pushgateway", pushgateway_argv,
                         lambda: _http_ok(f"{config.url(config.pushgateway_port)}/-/ready"),
                         port_env="PUSHGATEWAY_URL"))

    def prometheus_argv() -> list[str]:
        from monitoring.render import MonitoringSettings, write_config
        from monitoring.render import prometheus_argv as argv

        conf = write_config(MonitoringSettings.local(config.service_env()), state / "monitoring" / "prometheus.yml")
        return argv(conf, state / "prometheus", f"127.0.0.1:{config.prometheus_port}")

    found.append(Service("prometheus", config.prometheus_port, "prometheus", prometheus_argv,
                         lambda: _http_ok(f"{config.url(config.prometheus_port)}/-/ready"),
                         port_env="PROMETHEUS_URL"))

    def nginx_argv() -> list[str]:
        from gateway.render import NginxSettings, write_config
        from gateway.render import nginx_argv as argv

        settings = NginxSettings.local(state, listen=f"127.0.0.1:{config.public_port}",
                                       upstream=f"127.0.0.1:{config.gateway_port}")
        return argv(write_config(settings, state / "nginx" / "nginx.conf"), settings)

    found.append(Service("nginx", config.public_port, "nginx", nginx_argv,
                         lambda: _http_ok(f"{config.url(config.public_port)}/healthz"), stop_signal=signal.SIGQUIT,
                         port_env="PUBLIC_URL"))

    if config.simulator and (ROOT / "scripts" / "simulator" / "__main__.py").exists():
        # Runs until `down` (--duration 0); SIMULATOR_ARGS adds options (env/local.yml has the default).
        found.append(Service("simulator", None, "scripts.simulator",
                             lambda: [config.python, "-m", "scripts.simulator", "--duration", "0",
                                      *shlex.split(config.service_env()["SIMULATOR_ARGS"])],
                             lambda: True, min_uptime_s=2.0))
    return found
