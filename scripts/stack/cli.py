"""The local stack on one machine: `make up`, `make status`, `make down`.

Owns: the commands `up` (every port it will bind checked free first, `check_ports`, naming the
variable that moves a taken one; Debian packages present, the release token made, every service not
already running started in order and, when one fails, what this run started stopped again; at the
end, when the simulator streams, a wait until the first of the users it is sure to produce
(`example_users`) gets ids: scripts/stack/first_answer.py), `down` (in reverse, by verified
PID; once localfaas is stopped, or found not running after a crash, the function replicas a killed
localfaas left running, from its replica state file, each only while it is still the recorded
process: `localfaas.replicastate.stop_recorded`; before our own broker stops, `final_ingest`: one last ingest run, bounded by
FINAL_INGEST_SECONDS, drains what the broker holds into the store, since our broker keeps its log
in memory only; a failed run is one line and the broker still stops), `status` ("stack is down" and exit 0 when nothing runs, else one line per service, the
functions' replicas through the one gateway API client `movierec.adapters.gateway`, and exit 3 when
the stack is half up or unhealthy), `ensure_packages`, `ensure_release_token`, and `main` (the
argument parser).

Must not touch: processes it did not start (scripts/stack/processes.py signals only verified
pids); the services' definitions (scripts/stack/services.py); anything about movies.

CLI:
    python -m scripts.stack up|down|status [--state-dir var]
Ports/URLs from env: OPENFAAS_URL (:8080), PUBLIC_URL (nginx, :8082), PROMETHEUS_URL (:9090),
PUSHGATEWAY_URL (:9091), KAFKA_BOOTSTRAP_SERVERS (:9092; a non-local address means "use theirs"),
STACK_FILE (stack.yml), STACK_SIMULATOR=0 to leave the simulator out, SIMULATOR_ARGS (extra options).
Local defaults: env/local.yml, each only when the user has not set the variable.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from localfaas.replicastate import stop_recorded
from movierec.errors import ConfigError, MovierecError
from scripts._proc import free_port
from scripts.stack.config import ROOT, StackConfig, StackError, local_defaults
from scripts.stack.first_answer import FIRST_ANSWER_S, first_answer
from scripts.stack.processes import log_file, pid_file, port_taken, running_pid, start_service, stop_pid
from scripts.stack.services import PACKAGES, STOP_GRACE_S, Service, services


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


def check_ports(config: StackConfig) -> None:
    """Every port `up` will bind, checked before anything starts: one line naming each port that is
    taken by a process this stack did not start (or claimed twice) and the variable that moves it."""
    problems: list[str] = []
    claimed: dict[int, str] = {}
    for service in services(config):
        if service.port is None:
            continue
        if service.port in claimed:
            problems.append(f"port {service.port} is set for both {claimed[service.port]} and {service.port_env}: "
                            f"set {service.port_setting(free_port())}")
            continue
        claimed[service.port] = service.port_env or service.name
        if running_pid(config, service) is None and port_taken(config, service):
            problems.append(f"port {service.port} ({service.port_env}) is in use by another process: "
                            f"set {service.port_setting(free_port())} or stop it")
    if problems:
        raise StackError("; ".join(problems))


def example_users(config: StackConfig, n: int = 3) -> list[int]:
    """Users the simulator `up` starts is sure to produce (same seed and options, SIMULATOR_ARGS)."""
    if not any(s.name == "simulator" for s in services(config)):
        return []
    from scripts.simulator.cli import example_user_ids

    try:
        return example_user_ids(shlex.split(config.service_env().get("SIMULATOR_ARGS", "")), n)
    except SystemExit:  # SIMULATOR_ARGS the simulator rejects: it said why when it failed to start
        return []


def up(config: StackConfig) -> int:
    """Start every service that is not already running (so a second `up` starts nothing)."""
    local_defaults()  # a malformed env/local.yml is one line now, before anything starts
    check_ports(config)
    ensure_packages()
    config.state_dir.mkdir(parents=True, exist_ok=True)
    ensure_release_token(config.secrets_dir)
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
    users = example_users(config)
    if users:  # the simulator streams: the first curl below should get ids, not an empty line
        print(f"\nwaiting for ids for user {users[0]} (an ingest run now, at most {FIRST_ANSWER_S:g} s) ...", flush=True)
        print(first_answer(config, users[0]))
    secrets = config.secrets_dir
    print(f"""
public entry     {config.url(config.public_port)}/recommend/<userid>
OpenFaaS gateway {config.url(config.gateway_port)}  (faas-cli login -g {config.url(config.gateway_port)} -u "$(cat {secrets}/basic-auth-user)" --password-stdin < {secrets}/basic-auth-password)
Prometheus       {config.url(config.prometheus_port)}
Pushgateway      {config.url(config.pushgateway_port)}
Kafka            {config.kafka_bootstrap}  topic {config.kafka_topic}
credentials      {secrets}/basic-auth-user, {secrets}/basic-auth-password
logs             {config.state_dir / 'logs'}/<service>.log      stop with: make down""")
    if users:
        print(f"""
users in the simulated data (personalised once the first model serves, within about a minute):
{chr(10).join(f"  curl {config.url(config.public_port)}/recommend/{u}" for u in users)}""")
    return 0


FINAL_INGEST_SECONDS = 60.0  # the final run's own bound; the process gets a little more to start and stop


def final_ingest(config: StackConfig) -> None:
    """One last ingest run (python -m movierec.adapters.kafka_ingest, the stack's settings) while our
    broker still runs and nothing else consumes or produces: what it held is in the store after
    `down`. Prints one line: what it stored and what is left, or why it failed."""
    env = {**config.service_env(), "PUSHGATEWAY_URL": ""}  # the Pushgateway is already stopped
    argv = [config.python, "-m", "movierec.adapters.kafka_ingest", "--max-seconds", f"{FINAL_INGEST_SECONDS:g}",
            "--idle-seconds", "2"]
    t0 = time.monotonic()
    try:
        run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False,
                             timeout=FINAL_INGEST_SECONDS + 30)
        summary = json.loads(run.stdout.strip().splitlines()[-1]) if run.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
        run, summary = None, None
        why = f"no answer within {FINAL_INGEST_SECONDS + 30:g}s" if isinstance(e, subprocess.TimeoutExpired) else \
            "its output was not a summary"
    took = time.monotonic() - t0
    if summary is None:
        if run is not None:
            lines = (run.stderr or run.stdout or "").strip().splitlines()
            why = lines[-1] if lines else f"exit {run.returncode}"
        print(f"{'ingest':<12} final run FAILED ({why}): events the broker held and ingest had not stored "
              f"are lost with it; stopping it anyway")
        return
    left = summary.get("lag_total")
    print(f"{'ingest':<12} final run stored {summary.get('records', 0)} records in "
          f"{summary.get('batches_written', 0)} batches ({took:.1f}s), "
          + ("nothing left in the broker" if left == 0 else f"{left} left in the broker (lost when it stops)"))


def _stop_left_replicas(config: StackConfig) -> None:
    """The function replicas a killed localfaas left running (they outlive it, as containers do)."""
    t0 = time.monotonic()
    stopped = stop_recorded(config.state_dir, grace_s=STOP_GRACE_S)
    if stopped:
        print(f"{'replicas':<12} stopped {len(stopped)} left running by a killed localfaas, pids "
              f"{', '.join(map(str, stopped))} ({time.monotonic() - t0:.1f}s)")


def down(config: StackConfig) -> int:
    for service in reversed(services(config)):
        path = pid_file(config, service.name)
        pid = running_pid(config, service)
        if pid is None:
            if path.exists():
                print(f"{service.name:<12} not running (removed stale {path.name})")
                path.unlink(missing_ok=True)
            if service.name == "localfaas":
                _stop_left_replicas(config)
            continue
        if service.name == "broker":  # ours, log in memory: drain it into the store first
            final_ingest(config)
        t0 = time.monotonic()
        how = stop_pid(pid, service.stop_grace_s, service.stop_signal)
        path.unlink(missing_ok=True)
        print(f"{service.name:<12} {how}, pid {pid} ({time.monotonic() - t0:.1f}s)")
        if service.name == "localfaas":  # it stops its replicas; those it could not (a SIGKILL after its grace)
            _stop_left_replicas(config)
    return 0


def status(config: StackConfig) -> int:
    """One line per service; exit 0 when every service runs and is healthy, and when none runs ("stack
    is down", one line); 3 for a half-up stack (naming the services that are down) or an unhealthy one."""
    stack = services(config)
    running = {service.name: running_pid(config, service) for service in stack}
    if not any(running.values()):
        print("stack is down")
        return 0
    all_ok = True
    print(f"{'service':<12} {'pid':>8}  {'port':<6} {'state':<10} health")
    for service in stack:
        pid = running[service.name]
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
    down = [name for name, pid in running.items() if pid is None]
    if down:
        print(f"\nstack is half up: {', '.join(down)} not running (make up starts them, make down stops the rest)")
    elif not all_ok:
        print("\nstack is up but not healthy: see the logs named above")
    return 0 if all_ok else 3


def _function_replicas(config: StackConfig) -> list[tuple[str, int, int]]:
    """(name, replicas, availableReplicas) from the runtime's /system/functions, [] if unreachable.
    A function with 0 available is up but not ready (e.g. recommend before any model is trained)."""
    gateway = config.gateway(timeout_s=3, attempts=1)
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
    except (StackError, ConfigError) as e:  # ConfigError: env/local.yml is malformed
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
