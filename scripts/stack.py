"""The local stack on one machine: `make up`, `make status`, `make down`.

Owns: starting, in the background and all on 127.0.0.1, the Kafka broker (scripts/broker.py), the
local OpenFaaS runtime (`python -m localfaas up`), the Pushgateway, Prometheus, nginx (the public
entry rendered by gateway/render.py) and, when present, the stream simulator; waiting for each to be
healthy; the pid files `<state>/run/<name>.pid` and logs `<state>/logs/<name>.log`; and stopping
exactly what it started, by PID (SIGTERM, then SIGKILL after a grace period).

Each service runs in its own session (process group = its pid), so `down` can also reap what a
service itself started (localfaas's function replicas, nginx's workers) without touching anything
else. A pid file is only trusted when /proc/<pid>/cmdline still names the service, so a recycled
pid is never signalled.

`status` lists the functions' replicas through the one gateway API client
(`movierec.adapters.gateway`); pids are checked with `scripts._proc.pid_alive`.

Must not touch: processes it did not start; the services' own configuration logic (rendered by
gateway/ and monitoring/); anything about movies.

CLI:
    python -m scripts.stack up|down|status [--state-dir var]
Ports/URLs from env: OPENFAAS_URL (:8080), PUBLIC_URL (nginx, :8082), PROMETHEUS_URL (:9090),
PUSHGATEWAY_URL (:9091), KAFKA_BOOTSTRAP_SERVERS (:9092; a non-local address means "use theirs"),
STACK_FILE (stack.yml), STACK_SIMULATOR=0 to leave the simulator out, SIMULATOR_ARGS (extra options).

Local defaults (LOCAL_DEFAULTS, each only when the user has not set the variable): stack.yml's
production schedules are days and hours; locally they are seconds and minutes, so that within a few
minutes of `up` the simulator has backfilled data, ingest has stored it, a first model is trained
and serving, and canary releases of retrained models are analysed and promoted or rolled back.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from movierec.adapters.gateway import GatewayClient
from movierec.errors import MovierecError
from scripts._proc import pid_alive, port_open

ROOT = Path(__file__).resolve().parent.parent

# Debian packages the stack needs, and the binary that tells each one is installed.
PACKAGES = {"nginx": "/usr/sbin/nginx", "prometheus": "/usr/bin/prometheus",
            "prometheus-pushgateway": "/usr/bin/prometheus-pushgateway"}
# What `make up` sets unless the user already has (stack.yml reads them as ${VAR:-production default}).
LOCAL_DEFAULTS = {
    "SIMULATOR_ARGS": "--backfill 20000 --rate 50",   # data to train on at once, then a live stream
    "INGEST_SCHEDULE": "@every 20s",
    "INGEST_MAX_SECONDS": "15",                        # a run ends before the next tick (one replica)
    "TRAIN_SCHEDULE": "@every 2m",                     # first model ~2 min after up, then one per tick
    "RELEASE_SCHEDULE": "@every 15s",
    "RELEASE_WINDOW": "60s",
    "RELEASE_MIN_REQUESTS": "20",                      # the canary's 20% of the simulator's calls in a minute
    "RELEASE_TIMEOUT": "10m",
    "RELEASE_ONLINE_QUALITY": "1",                     # share of recommendations watched, from the stream
    "LOCALFAAS_UPSTREAM_TIMEOUT": "1800",              # the train function's own timeouts are 30m
}
STOP_GRACE_S = 15.0
LOCALFAAS_STOP_GRACE_S = 40.0  # it drains replicas (LOCALFAAS_DRAIN_TIMEOUT, 30s) before exiting


class StackError(RuntimeError):
    """One line naming what failed and where to look."""


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
        env.setdefault("SECRETS_DIR", str(self.state_dir / "secrets"))
        env["STORE_URL"] = absolute_store_url(env.get("STORE_URL") or str(self.state_dir / "store"))
        for name, value in LOCAL_DEFAULTS.items():
            env.setdefault(name, value)
        return env


def absolute_store_url(url: str) -> str:
    """A local store path made absolute against the repo root: functions run inside build/<fn>/,
    where a relative path would name a different (empty) folder. s3:// and file:// URLs pass."""
    if "://" in url:
        return url
    path = Path(url).expanduser()
    return str(path if path.is_absolute() else ROOT / path)


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


# -- the services --------------------------------------------------------------------------------
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
                             start=start_broker))

    found.append(Service(
        "localfaas", config.gateway_port, "localfaas",
        lambda: [config.python, "-m", "localfaas", "up", "--stack", str(config.stack_file),
                 "--port", str(config.gateway_port), "--state-dir", str(state)],
        lambda: _http_ok(f"{config.url(config.gateway_port)}/healthz"),
        start_timeout_s=180.0, stop_grace_s=LOCALFAAS_STOP_GRACE_S,
    ))

    def pushgateway_argv() -> list[str]:
        from monitoring.render import pushgateway_argv as argv

        (state / "pushgateway").mkdir(parents=True, exist_ok=True)
        return argv(state / "pushgateway", f"127.0.0.1:{config.pushgateway_port}")

    found.append(Service("pushgateway", config.pushgateway_port, "pushgateway", pushgateway_argv,
                         lambda: _http_ok(f"{config.url(config.pushgateway_port)}/-/ready")))

    def prometheus_argv() -> list[str]:
        from monitoring.render import MonitoringSettings, write_config
        from monitoring.render import prometheus_argv as argv

        conf = write_config(MonitoringSettings.local(config.service_env()), state / "monitoring" / "prometheus.yml")
        return argv(conf, state / "prometheus", f"127.0.0.1:{config.prometheus_port}")

    found.append(Service("prometheus", config.prometheus_port, "prometheus", prometheus_argv,
                         lambda: _http_ok(f"{config.url(config.prometheus_port)}/-/ready")))

    def nginx_argv() -> list[str]:
        from gateway.render import NginxSettings, write_config
        from gateway.render import nginx_argv as argv

        settings = NginxSettings.local(state, listen=f"127.0.0.1:{config.public_port}",
                                       upstream=f"127.0.0.1:{config.gateway_port}")
        return argv(write_config(settings, state / "nginx" / "nginx.conf"), settings)

    found.append(Service("nginx", config.public_port, "nginx", nginx_argv,
                         lambda: _http_ok(f"{config.url(config.public_port)}/healthz"), stop_signal=signal.SIGQUIT))

    if config.simulator and (ROOT / "scripts" / "simulator.py").exists():
        # Runs until `down` (--duration 0); SIMULATOR_ARGS adds options (LOCAL_DEFAULTS has the default).
        found.append(Service("simulator", None, "scripts.simulator",
                             lambda: [config.python, "-m", "scripts.simulator", "--duration", "0",
                                      *shlex.split(config.service_env()["SIMULATOR_ARGS"])],
                             lambda: True, min_uptime_s=2.0))
    return found


# -- pid files and processes ---------------------------------------------------------------------
def pid_file(config: StackConfig, name: str) -> Path:
    return config.state_dir / "run" / f"{name}.pid"


def log_file(config: StackConfig, name: str) -> Path:
    return config.state_dir / "logs" / f"{name}.log"


def running_pid(config: StackConfig, service: Service) -> int | None:
    """The service's pid if its pid file names a live process that is still this service."""
    try:
        pid = int(pid_file(config, service.name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) and service.cmdline_marker in _cmdline(pid) else None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is still in process group `pgid`. Zombies are skipped:
    they are already dead, and whoever reaps them (possibly a slow init) is not our business."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _wait_gone(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def stop_pid(pid: int, grace_s: float, first_signal: int = signal.SIGTERM) -> str:
    """Stop a process we started in its own session: signal it, give it `grace_s`, then SIGKILL;
    then make sure nothing of its process group (its children) survives it."""
    owns_group = _safe_getpgid(pid) == pid
    try:
        os.kill(pid, first_signal)
    except ProcessLookupError:
        pass
    how = "stopped"
    if not _wait_gone(lambda: pid_alive(pid), grace_s):
        how = f"killed (no exit {grace_s:g}s after {signal.Signals(first_signal).name})"
        try:
            os.killpg(pid, signal.SIGKILL) if owns_group else os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_gone(lambda: pid_alive(pid), 5.0)
    if owns_group and _group_alive(pid):  # children the service left behind
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not _wait_gone(lambda: _group_alive(pid), 5.0):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return how


def _safe_getpgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


# -- up / down / status --------------------------------------------------------------------------
def ensure_packages(install: bool = True) -> None:
    missing = [pkg for pkg, binary in PACKAGES.items() if not (Path(binary).exists() or shutil.which(Path(binary).name))]
    if not missing:
        return
    command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StackError(f"missing Debian packages {', '.join(missing)}: run `sudo {' '.join(command)}`")
    print(f"installing Debian packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(command, check=False, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        if subprocess.run(command, check=False, env=env).returncode != 0:
            raise StackError(f"`{' '.join(command)}` failed: install them and run `make up` again")


def ensure_release_token(secrets_dir: Path) -> Path:
    """The release function's admin token (stack.yml lists it as a secret): generated once, random,
    mode 0600, in whichever state dir this stack uses; never a default."""
    import secrets as random_tokens

    secrets_dir.mkdir(parents=True, exist_ok=True)
    secrets_dir.chmod(0o700)
    path = secrets_dir / "release-admin-token"
    if not path.exists() or not path.read_text().strip():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(random_tokens.token_urlsafe(32) + "\n")
    return path


def start_service(config: StackConfig, service: Service) -> tuple[int, bool]:
    """Start `service` unless it already runs; wait until healthy. Returns (pid, started_now)."""
    pid = running_pid(config, service)
    if pid is not None:
        return pid, False
    log = log_file(config, service.name)
    if service.port is not None and port_open(service.port):
        raise StackError(f"{service.name}: 127.0.0.1:{service.port} is already in use by a process this stack "
                         f"did not start (stop it, or pick another port by env)")
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_file(config, service.name).parent.mkdir(parents=True, exist_ok=True)
    try:
        if service.start is not None:
            pid = service.start()
            process = None
        else:
            with open(log, "ab") as out:
                process = subprocess.Popen(service.argv(), stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, cwd=ROOT, env=config.service_env(),
                                           start_new_session=True)
            pid = process.pid
    except Exception as e:  # a starter's own error (broker, renderers): one line naming the service
        raise StackError(f"{service.name} failed to start: {e} (log: {log})") from e
    pid_file(config, service.name).write_text(f"{pid}\n")
    deadline = time.monotonic() + service.start_timeout_s
    while not service.health():
        if not pid_alive(pid):
            pid_file(config, service.name).unlink(missing_ok=True)
            raise StackError(f"{service.name} exited while starting{_last_line(log)}: see {log}")
        if time.monotonic() > deadline:
            stop_pid(pid, service.stop_grace_s, service.stop_signal)
            pid_file(config, service.name).unlink(missing_ok=True)
            raise StackError(f"{service.name} not healthy after {service.start_timeout_s:g}s, stopped it"
                             f"{_last_line(log)}: see {log}")
        time.sleep(0.2)
    if service.min_uptime_s:
        time.sleep(service.min_uptime_s)
        if not pid_alive(pid):
            pid_file(config, service.name).unlink(missing_ok=True)
            raise StackError(f"{service.name} exited right after starting{_last_line(log)}: see {log}")
    return pid, True


def _last_line(log: Path) -> str:
    """` ("<last line of the log>")`, so the error says why without opening the file."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f' ("{lines[-1][:200]}")' if lines else ""


def up(config: StackConfig) -> int:
    """Start every service that is not already running (so a second `up` starts nothing)."""
    ensure_packages()
    config.state_dir.mkdir(parents=True, exist_ok=True)
    ensure_release_token(config.state_dir / "secrets")
    started_now: list[tuple[Service, int]] = []
    for service in services(config):
        try:
            pid, started = start_service(config, service)
        except StackError as e:
            print(f"error: {e}", file=sys.stderr)
            for earlier, earlier_pid in reversed(started_now):  # leave things as they were before `up`
                stop_pid(earlier_pid, earlier.stop_grace_s, earlier.stop_signal)
                pid_file(config, earlier.name).unlink(missing_ok=True)
            if started_now:
                print(f"stopped what this run had started: {', '.join(s.name for s, _ in started_now)}",
                      file=sys.stderr)
            return 1
        if started:
            started_now.append((service, pid))
        where = f"127.0.0.1:{service.port}" if service.port else "-"
        print(f"{service.name:<12} {'started' if started else 'already running'}, pid {pid}, {where}")
    if not config.own_broker:
        print(f"broker       not started: using KAFKA_BOOTSTRAP_SERVERS={config.kafka_bootstrap}")
    secrets = config.state_dir / "secrets"
    print(f"""
public entry     {config.url(config.public_port)}/recommend/<userid>
OpenFaaS gateway {config.url(config.gateway_port)}  (faas-cli login -g {config.url(config.gateway_port)} -u "$(cat {secrets}/basic-auth-user)" --password-stdin < {secrets}/basic-auth-password)
Prometheus       {config.url(config.prometheus_port)}
Pushgateway      {config.url(config.pushgateway_port)}
Kafka            {config.kafka_bootstrap}  topic {config.kafka_topic}
credentials      {secrets}/basic-auth-user, {secrets}/basic-auth-password
logs             {config.state_dir / 'logs'}/<service>.log      stop with: make down""")
    return 0


def down(config: StackConfig) -> int:
    for service in reversed(services(config)):
        path = pid_file(config, service.name)
        pid = running_pid(config, service)
        if pid is None:
            if path.exists():
                print(f"{service.name:<12} not running (removed stale {path.name})")
                path.unlink(missing_ok=True)
            continue
        t0 = time.monotonic()
        how = stop_pid(pid, service.stop_grace_s, service.stop_signal)
        path.unlink(missing_ok=True)
        print(f"{service.name:<12} {how}, pid {pid} ({time.monotonic() - t0:.1f}s)")
    return 0


def status(config: StackConfig) -> int:
    """One line per service; exit 0 only when every service runs and is healthy."""
    all_ok = True
    print(f"{'service':<12} {'pid':>8}  {'port':<6} {'state':<10} health")
    for service in services(config):
        pid = running_pid(config, service)
        healthy = pid is not None and service.health()
        all_ok &= healthy
        state = "running" if pid is not None else "stopped"
        health = "ok" if healthy else ("-" if pid is None else f"UNHEALTHY (see {log_file(config, service.name)})")
        print(f"{service.name:<12} {pid or '-':>8}  {service.port or '-':<6} {state:<10} {health}")
    if not config.own_broker:
        print(f"{'broker':<12} {'-':>8}  {'-':<6} {'external':<10} {config.kafka_bootstrap}")
    functions = _function_replicas(config)
    if functions:
        print("\nfunction             replicas  available")
        for name, wanted, available in functions:
            print(f"{name:<20} {wanted:>8}  {available:>9}")
    return 0 if all_ok else 3


def _function_replicas(config: StackConfig) -> list[tuple[str, int, int]]:
    """(name, replicas, availableReplicas) from the runtime's /system/functions, [] if unreachable.
    A function with 0 available is up but not ready (e.g. recommend before any model is trained)."""
    gateway = GatewayClient.from_env({"OPENFAAS_URL": config.url(config.gateway_port),
                                      "SECRETS_DIR": str(config.state_dir / "secrets")}, timeout_s=3, attempts=1)
    try:
        return sorted((f["name"], int(f.get("replicas", 0)), int(f.get("availableReplicas", 0)))
                      for f in gateway.list_functions())
    except (MovierecError, ValueError, TypeError):
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.stack", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", default=None, help="default: STACK_STATE_DIR or var/")
    args = parser.parse_args(argv)
    config = StackConfig.from_env(args.state_dir)
    try:
        return {"up": up, "down": down, "status": status}[args.action](config)
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
